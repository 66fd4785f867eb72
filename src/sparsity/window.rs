//! The dense momentum of missing weights, kept only while growth needs it.
//!
//! SGD's momentum of a weight follows `m ← β·m + g`. For a missing weight the
//! gradient `g = dY·Xᵀ` (its entry of the dense product) is never computed by
//! the sparse kernels, so we reconstruct the momentum of every position from
//! the gradient factors `(dY, X)` that the backward pass keeps on request.

use ndarray::{Array2, ArrayView2, s};

use super::rules::MomentumWindow;
use crate::autograd::GradientFactors;
use crate::checkpoint::{Checkpoint, Contents, Tensor};
use crate::dense::gemm;
use crate::error::{Error, Result};

/// Per sparse layer, what is needed to produce the `rows × cols` momentum of
/// every position at the next mask update.
#[derive(Debug)]
pub(crate) struct DenseMomentum {
    decay: f32,
    /// Keep the momentum from one update to the next (the exact reference)
    /// instead of starting every window from zero.
    persistent: bool,
    layers: Vec<LayerMomentum>,
    /// Each layer's factor buffers between windows, kept for reuse.
    spare_stacks: Vec<FactorStack>,
}

/// One layer's dense momentum in one window, in the smaller of two forms.
///
/// A step's gradient arrives as factors `dY` (`rows × K`) and `X` (`cols ×
/// K`), `K` the batch (times the output positions, for a convolution). When
/// the window's first step brings factors bigger than the `rows × cols`
/// product, as for every convolution (`K` = batch · positions) and for small
/// fully connected layers, the momentum is updated in place each step.
/// Otherwise the window's factors are stacked and multiplied once at the
/// update: the same FLOPs, with the product's packing cost paid once instead
/// of every step. The form is chosen afresh in every window, so a run resumed
/// from a checkpoint chooses as the uninterrupted run did.
#[derive(Debug, Default)]
enum LayerMomentum {
    /// Nothing collected in this window yet.
    #[default]
    Empty,
    /// `m ← β·m + dY·Xᵀ` every step.
    Running(Array2<f32>),
    /// The window's factors; `momentum` is their product once materialised.
    Stacked {
        stack: FactorStack,
        momentum: Option<Array2<f32>>,
    },
}

impl DenseMomentum {
    pub(crate) fn new(window: MomentumWindow, decay: f32, layers: usize) -> Self {
        DenseMomentum {
            decay,
            persistent: window == MomentumWindow::EveryStep,
            layers: (0..layers).map(|_| LayerMomentum::Empty).collect(),
            spare_stacks: (0..layers).map(|_| FactorStack::default()).collect(),
        }
    }

    /// Adds one step's gradient of layer `layer` (as factors; several pairs if
    /// the weight was used several times, none if it was not used).
    pub(crate) fn accumulate(
        &mut self,
        layer: usize,
        (rows, cols): (usize, usize),
        factors: &[GradientFactors],
    ) {
        let slot = &mut self.layers[layer];
        if let LayerMomentum::Empty = slot {
            let width: usize = factors.iter().map(|f| f.output_grad.ncols()).sum();
            if width == 0 {
                return; // No gradient yet: the momentum is still zero.
            }
            *slot = if self.persistent || rows * cols <= (rows + cols) * width {
                LayerMomentum::Running(Array2::zeros((rows, cols)))
            } else {
                LayerMomentum::Stacked {
                    stack: std::mem::take(&mut self.spare_stacks[layer]),
                    momentum: None,
                }
            };
        }
        match slot {
            LayerMomentum::Empty => unreachable!("chosen above"),
            LayerMomentum::Running(buffer) => {
                let mut beta = self.decay;
                if factors.is_empty() {
                    *buffer *= beta;
                }
                for f in factors {
                    gemm(
                        1.0,
                        f.output_grad.view(),
                        f.input.t(),
                        beta,
                        buffer.view_mut(),
                    );
                    beta = 1.0;
                }
            }
            LayerMomentum::Stacked { stack, .. } => stack.push(factors),
        }
    }

    /// Makes every layer's momentum ready for [`DenseMomentum::get`]: the
    /// stacked windows are multiplied out; a layer that saw no gradient gets zeros.
    pub(crate) fn materialize(&mut self, shapes: &[(usize, usize)]) {
        for (slot, &shape) in self.layers.iter_mut().zip(shapes) {
            match slot {
                LayerMomentum::Empty => *slot = LayerMomentum::Running(Array2::zeros(shape)),
                LayerMomentum::Running(_) => {}
                LayerMomentum::Stacked { stack, momentum } => {
                    *momentum = Some(stack.momentum(self.decay, shape));
                }
            }
        }
    }

    pub(crate) fn get(&self, layer: usize) -> Option<ArrayView2<'_, f32>> {
        match &self.layers[layer] {
            LayerMomentum::Running(m)
            | LayerMomentum::Stacked {
                momentum: Some(m), ..
            } => Some(m.view()),
            _ => None,
        }
    }

    /// Adds what is held between steps (open windows, running momenta) to a checkpoint.
    pub(crate) fn save(&self, contents: &mut Contents) {
        let f32_tensor = |a: ArrayView2<f32>| {
            Tensor::F32(vec![a.nrows(), a.ncols()], a.iter().copied().collect())
        };
        for (i, layer) in self.layers.iter().enumerate() {
            match layer {
                LayerMomentum::Empty => {}
                LayerMomentum::Running(m) => contents.tensors.push((
                    format!("sparse_learning.momentum.{i}"),
                    f32_tensor(m.view()),
                )),
                LayerMomentum::Stacked { stack, .. } if !stack.step_starts.is_empty() => {
                    let key = |part: &str| format!("sparse_learning.window.{i}.{part}");
                    contents.tensors.push((
                        key("grads"),
                        f32_tensor(stack.grads.slice(s![.., ..stack.filled])),
                    ));
                    contents.tensors.push((
                        key("inputs"),
                        f32_tensor(stack.inputs.slice(s![.., ..stack.filled])),
                    ));
                    let starts = stack.step_starts.iter().map(|&s| s as i64).collect();
                    contents.tensors.push((
                        key("step_starts"),
                        Tensor::I64(vec![stack.step_starts.len()], starts),
                    ));
                }
                LayerMomentum::Stacked { .. } => {}
            }
        }
    }

    /// Restores what [`DenseMomentum::save`] stored, for layers of `shapes`.
    pub(crate) fn restore(
        &mut self,
        checkpoint: &Checkpoint,
        shapes: &[(usize, usize)],
    ) -> Result<()> {
        let bad = |problem: String| Error::BadFile {
            path: checkpoint.path().to_path_buf(),
            problem,
        };
        // A 2-D tensor `name` with `rows` rows (and `cols` columns, if given).
        let array = |name: &str, rows: usize, cols: Option<usize>| -> Result<Option<Array2<f32>>> {
            if !checkpoint.has(name) {
                return Ok(None);
            }
            let (shape, values) = checkpoint.f32(name)?;
            match shape[..] {
                [r, c] if r == rows && cols.is_none_or(|cols| cols == c) => Ok(Some(
                    Array2::from_shape_vec((r, c), values).expect("r · c values"),
                )),
                _ => Err(bad(format!(
                    "`{name}` has shape {shape:?}, the layer needs {rows} rows{}",
                    cols.map_or(String::new(), |c| format!(" and {c} columns"))
                ))),
            }
        };
        for (i, (slot, &(rows, cols))) in self.layers.iter_mut().zip(shapes).enumerate() {
            let key = |part: &str| format!("sparse_learning.window.{i}.{part}");
            *slot = if let Some(m) =
                array(&format!("sparse_learning.momentum.{i}"), rows, Some(cols))?
            {
                LayerMomentum::Running(m)
            } else if let Some(grads) = array(&key("grads"), rows, None)? {
                let inputs = array(&key("inputs"), cols, Some(grads.ncols()))?
                    .ok_or_else(|| bad(format!("`{}` is missing", key("inputs"))))?;
                let step_starts = checkpoint.indices(&key("step_starts"))?;
                if !step_starts.is_sorted()
                    || step_starts.last().is_some_and(|&s| s > grads.ncols())
                {
                    return Err(bad(format!(
                        "`{}` does not index the stacked columns",
                        key("step_starts")
                    )));
                }
                let stack = FactorStack {
                    filled: grads.ncols(),
                    grads,
                    inputs,
                    step_starts,
                };
                LayerMomentum::Stacked {
                    stack,
                    momentum: None,
                }
            } else {
                LayerMomentum::Empty
            };
        }
        Ok(())
    }

    /// Ends a window: every layer starts the next one empty (a stack's
    /// buffers are kept for reuse), unless the momentum is persistent.
    pub(crate) fn end_window(&mut self) {
        if self.persistent {
            return;
        }
        for (slot, spare) in self.layers.iter_mut().zip(&mut self.spare_stacks) {
            if let LayerMomentum::Stacked { mut stack, .. } = std::mem::take(slot) {
                stack.clear();
                *spare = stack;
            }
        }
    }
}

/// One layer's window of gradient factors: the `dY`s side by side in
/// `grads` (`rows × samples`), the `X`s in `inputs` (`cols × samples`).
#[derive(Debug, Default)]
pub(crate) struct FactorStack {
    grads: Array2<f32>,
    inputs: Array2<f32>,
    /// Columns in use.
    filled: usize,
    /// The first column of every step so far (a step without factors has none).
    step_starts: Vec<usize>,
}

impl FactorStack {
    /// Appends one step's factors, growing the buffers if they are full.
    fn push(&mut self, factors: &[GradientFactors]) {
        self.step_starts.push(self.filled);
        for f in factors {
            let width = f.output_grad.ncols();
            let needed = self.filled + width;
            if needed > self.grads.ncols() || self.grads.nrows() != f.output_grad.nrows() {
                self.grow(f.output_grad.nrows(), f.input.nrows(), needed);
            }
            let columns = self.filled..needed;
            self.grads
                .slice_mut(s![.., columns.clone()])
                .assign(&f.output_grad);
            self.inputs.slice_mut(s![.., columns]).assign(&f.input);
            self.filled = needed;
        }
    }

    /// Reallocates with room for at least `columns`, keeping the filled part.
    fn grow(&mut self, rows: usize, cols: usize, columns: usize) {
        let capacity = columns.max(2 * self.grads.ncols());
        let mut grads = Array2::zeros((rows, capacity));
        let mut inputs = Array2::zeros((cols, capacity));
        if self.filled > 0 {
            grads
                .slice_mut(s![.., ..self.filled])
                .assign(&self.grads.slice(s![.., ..self.filled]));
            inputs
                .slice_mut(s![.., ..self.filled])
                .assign(&self.inputs.slice(s![.., ..self.filled]));
        }
        self.grads = grads;
        self.inputs = inputs;
    }

    /// `Σ_t β^(T−t) · dY_t · X_tᵀ`, the last step being `T`: scale each step's
    /// columns of `dY` in place, then one product of the stacks.
    fn momentum(&mut self, decay: f32, shape: (usize, usize)) -> Array2<f32> {
        let mut momentum = Array2::zeros(shape);
        if self.filled == 0 {
            return momentum;
        }
        let steps = self.step_starts.len();
        for (t, &start) in self.step_starts.iter().enumerate() {
            let end = self.step_starts.get(t + 1).copied().unwrap_or(self.filled);
            let weight = decay.powi((steps - 1 - t) as i32);
            self.grads
                .slice_mut(s![.., start..end])
                .mapv_inplace(|g| g * weight);
        }
        let grads = self.grads.slice(s![.., ..self.filled]);
        let inputs = self.inputs.slice(s![.., ..self.filled]);
        gemm(1.0, grads, inputs.t(), 0.0, momentum.view_mut());
        momentum
    }

    /// Empties the window, keeping the buffers for the next one.
    fn clear(&mut self) {
        self.filled = 0;
        self.step_starts.clear();
    }
}

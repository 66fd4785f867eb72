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
use crate::error::Result;

/// Per sparse layer, what is needed to produce the `rows × cols` momentum of
/// every position at the next mask update.
#[derive(Debug)]
pub(crate) enum DenseMomentum {
    /// The window's gradient factors, stacked side by side. At the update,
    /// `m = Σ_t β^(T−t) · dY_t · X_tᵀ` is one sgemm whose inner dimension is
    /// all the window's samples: the same FLOPs as one product per step, but
    /// with the packing cost paid once. The stacks are reused from window to
    /// window; the `rows × cols` momentum exists only during the update.
    Window {
        decay: f32,
        stacks: Vec<FactorStack>,
        momentum: Vec<Option<Array2<f32>>>,
    },
    /// A dense buffer per layer updated every step (`m ← β·m + dY·Xᵀ`): the
    /// exact dense-momentum reference, dense-sized for the whole run.
    EveryStep {
        decay: f32,
        buffers: Vec<Option<Array2<f32>>>,
    },
}

impl DenseMomentum {
    pub(crate) fn new(window: MomentumWindow, decay: f32, layers: usize) -> Self {
        match window {
            MomentumWindow::LastSteps(_) => DenseMomentum::Window {
                decay,
                stacks: (0..layers).map(|_| FactorStack::default()).collect(),
                momentum: vec![None; layers],
            },
            MomentumWindow::EveryStep => DenseMomentum::EveryStep {
                decay,
                buffers: vec![None; layers],
            },
        }
    }

    /// Adds one step's gradient of layer `layer` (as factors; several pairs if
    /// the weight was used several times).
    pub(crate) fn accumulate(
        &mut self,
        layer: usize,
        shape: (usize, usize),
        factors: Vec<GradientFactors>,
    ) {
        match self {
            DenseMomentum::Window { stacks, .. } => stacks[layer].push(&factors),
            DenseMomentum::EveryStep { decay, buffers } => {
                let buffer = buffers[layer].get_or_insert_with(|| Array2::zeros(shape));
                let mut beta = *decay;
                if factors.is_empty() {
                    *buffer *= beta;
                }
                for f in &factors {
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
        }
    }

    /// Turns the window's factors into dense momenta, ready for [`DenseMomentum::get`].
    pub(crate) fn materialize(&mut self, shapes: &[(usize, usize)]) {
        let DenseMomentum::Window {
            decay,
            stacks,
            momentum,
        } = self
        else {
            return;
        };
        for ((stack, slot), &shape) in stacks.iter_mut().zip(momentum.iter_mut()).zip(shapes) {
            *slot = Some(stack.momentum(*decay, shape));
        }
    }

    pub(crate) fn get(&self, layer: usize) -> Option<ArrayView2<'_, f32>> {
        let slot = match self {
            DenseMomentum::Window { momentum, .. } => &momentum[layer],
            DenseMomentum::EveryStep { buffers, .. } => &buffers[layer],
        };
        slot.as_ref().map(|m| m.view())
    }

    /// Adds what is held between steps (an open window, the exact buffers) to a checkpoint.
    pub(crate) fn save(&self, contents: &mut Contents) {
        let f32_tensor = |a: ArrayView2<f32>| {
            Tensor::F32(vec![a.nrows(), a.ncols()], a.iter().copied().collect())
        };
        match self {
            DenseMomentum::Window { stacks, .. } => {
                for (i, stack) in stacks
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.step_starts.is_empty())
                {
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
            }
            DenseMomentum::EveryStep { buffers, .. } => {
                for (i, buffer) in buffers.iter().enumerate() {
                    if let Some(buffer) = buffer {
                        contents.tensors.push((
                            format!("sparse_learning.momentum.{i}"),
                            f32_tensor(buffer.view()),
                        ));
                    }
                }
            }
        }
    }

    /// Restores what [`DenseMomentum::save`] stored.
    pub(crate) fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let array = |name: &str| -> Result<Option<Array2<f32>>> {
            if !checkpoint.has(name) {
                return Ok(None);
            }
            let (shape, values) = checkpoint.f32(name)?;
            Ok(Array2::from_shape_vec((shape[0], shape.get(1).copied().unwrap_or(1)), values).ok())
        };
        match self {
            DenseMomentum::Window { stacks, .. } => {
                for (i, stack) in stacks.iter_mut().enumerate() {
                    let key = |part: &str| format!("sparse_learning.window.{i}.{part}");
                    if let (Some(grads), Some(inputs)) =
                        (array(&key("grads"))?, array(&key("inputs"))?)
                    {
                        stack.filled = grads.ncols();
                        stack.grads = grads;
                        stack.inputs = inputs;
                        stack.step_starts = checkpoint.indices(&key("step_starts"))?;
                    }
                }
            }
            DenseMomentum::EveryStep { buffers, .. } => {
                for (i, buffer) in buffers.iter_mut().enumerate() {
                    *buffer = array(&format!("sparse_learning.momentum.{i}"))?;
                }
            }
        }
        Ok(())
    }

    /// Drops what the window held; the exact buffers stay.
    pub(crate) fn end_window(&mut self) {
        if let DenseMomentum::Window {
            stacks, momentum, ..
        } = self
        {
            stacks.iter_mut().for_each(FactorStack::clear);
            momentum.iter_mut().for_each(|m| *m = None);
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

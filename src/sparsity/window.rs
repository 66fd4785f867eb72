//! The dense momentum of missing weights, kept only while growth needs it.
//!
//! SGD's momentum of a weight follows `m ← β·m + g`. For a missing weight the
//! gradient `g = dY·Xᵀ` (its entry of the dense product) is never computed by
//! the sparse kernels, so we reconstruct the momentum of every position from
//! the gradient factors `(dY, X)` that the backward pass keeps on request.

use ndarray::{Array2, ArrayView2, Axis, s};
use rayon::prelude::*;

use super::rules::MomentumWindow;
use crate::aligned;
use crate::autograd::{GradientFactors, Gradients};
use crate::checkpoint::{Checkpoint, Contents, Tensor};
use crate::dense::gemm;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamStore};
use crate::sparse::{InstructionSet, add_weighted_rows, push_off_background};

/// A window stacks a layer's inputs sparsely ([`SparseInputStack`]) when at
/// most this fraction of its first step's inputs differ from their minimum.
/// The sparse product moves a row of `dYᵀ` per stored input where sgemm
/// reuses it from registers, so it only wins well below full density:
/// fc1's inputs (MNIST pixels, ~19 % off the background) measured ~2.5×
/// faster than the dense product.
const SPARSE_INPUTS_BELOW: f64 = 0.3;

/// Samples of `dYᵀ` the sparse product walks at a time: 256 rows of a 300-wide
/// layer are 300 kB, which stay in one core's L2 while every input feature
/// reads from them.
const SAMPLE_BLOCK: usize = 256;

/// Per sparse layer, what is needed to produce the `rows × cols` momentum of
/// every position at the next mask update.
#[derive(Debug)]
pub(crate) struct DenseMomentum {
    layers: Vec<LayerWindow>,
}

/// One layer's part of [`DenseMomentum`]: layers are independent, so a step
/// collects them in parallel.
#[derive(Debug)]
struct LayerWindow {
    decay: f32,
    /// Keep the momentum from one update to the next (the exact reference)
    /// instead of starting every window from zero.
    persistent: bool,
    momentum: LayerMomentum,
    /// The stacks' buffers between windows, kept for reuse.
    spare_stack: FactorStack,
    spare_sparse_stack: SparseInputStack,
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
/// of every step; and if the inputs sit mostly at one value, they are stacked
/// sparsely, which saves most of the FLOPs. The form is chosen afresh in
/// every window, so a run resumed from a checkpoint chooses as the
/// uninterrupted run did.
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
    /// The same, with the inputs stored sparsely.
    SparseInputs {
        stack: SparseInputStack,
        momentum: Option<Array2<f32>>,
    },
}

impl DenseMomentum {
    pub(crate) fn new(window: MomentumWindow, decay: f32, layers: usize) -> Self {
        let layer = || LayerWindow {
            decay,
            persistent: window == MomentumWindow::EveryStep,
            momentum: LayerMomentum::Empty,
            spare_stack: FactorStack::default(),
            spare_sparse_stack: SparseInputStack::default(),
        };
        DenseMomentum {
            layers: (0..layers).map(|_| layer()).collect(),
        }
    }

    /// Adds one step's gradients of every layer: `layers[i]` is layer `i`'s
    /// weight, `shards` the step's gradients (one per shard of the batch).
    /// The layers are collected in parallel, each as it would be alone.
    pub(crate) fn accumulate(
        &mut self,
        layers: &[ParamId],
        store: &ParamStore,
        shards: &[Gradients],
    ) {
        self.layers
            .par_iter_mut()
            .zip(layers)
            .for_each(|(window, &id)| {
                let factors = shards.iter().flat_map(|g| g.factors(id));
                window.accumulate(store.get(id).value.shape(), factors);
            });
    }

    /// Makes every layer's momentum ready for [`DenseMomentum::get`]: the
    /// stacked windows are multiplied out; a layer that saw no gradient gets zeros.
    pub(crate) fn materialize(&mut self, shapes: &[(usize, usize)]) {
        for (layer, &shape) in self.layers.iter_mut().zip(shapes) {
            match &mut layer.momentum {
                LayerMomentum::Empty => {
                    layer.momentum = LayerMomentum::Running(Array2::zeros(shape))
                }
                LayerMomentum::Running(_) => {}
                LayerMomentum::Stacked { stack, momentum } => {
                    *momentum = Some(stack.momentum(layer.decay, shape));
                }
                LayerMomentum::SparseInputs { stack, momentum } => {
                    *momentum = Some(stack.momentum(layer.decay, shape));
                }
            }
        }
    }

    pub(crate) fn get(&self, layer: usize) -> Option<ArrayView2<'_, f32>> {
        match &self.layers[layer].momentum {
            LayerMomentum::Running(m)
            | LayerMomentum::Stacked {
                momentum: Some(m), ..
            }
            | LayerMomentum::SparseInputs {
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
            match &layer.momentum {
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
                LayerMomentum::SparseInputs { stack, .. } if !stack.step_starts.is_empty() => {
                    stack.save(contents, &format!("sparse_learning.window.{i}"));
                }
                LayerMomentum::Stacked { .. } | LayerMomentum::SparseInputs { .. } => {}
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
        for (i, (layer, &(rows, cols))) in self.layers.iter_mut().zip(shapes).enumerate() {
            let key = |part: &str| format!("sparse_learning.window.{i}.{part}");
            layer.momentum = if let Some(m) =
                array(&format!("sparse_learning.momentum.{i}"), rows, Some(cols))?
            {
                LayerMomentum::Running(m)
            } else if checkpoint.has(&key("grad_rows")) {
                LayerMomentum::SparseInputs {
                    stack: SparseInputStack::restore(
                        checkpoint,
                        &format!("sparse_learning.window.{i}"),
                        (rows, cols),
                    )?,
                    momentum: None,
                }
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
        for layer in self.layers.iter_mut().filter(|layer| !layer.persistent) {
            match std::mem::take(&mut layer.momentum) {
                LayerMomentum::Stacked { mut stack, .. } => {
                    stack.clear();
                    layer.spare_stack = stack;
                }
                LayerMomentum::SparseInputs { mut stack, .. } => {
                    stack.clear();
                    layer.spare_sparse_stack = stack;
                }
                _ => {}
            }
        }
    }
}

impl LayerWindow {
    /// Adds one step's gradient of a `rows × cols` layer (as factors; several
    /// pairs if the weight was used several times, none if it was not used).
    fn accumulate<'g>(
        &mut self,
        (rows, cols): (usize, usize),
        factors: impl Iterator<Item = &'g GradientFactors> + Clone,
    ) {
        let slot = &mut self.momentum;
        if let LayerMomentum::Empty = slot {
            let width: usize = factors.clone().map(|f| f.output_grad.ncols()).sum();
            if width == 0 {
                return; // No gradient yet: the momentum is still zero.
            }
            *slot = if self.persistent || rows * cols <= (rows + cols) * width {
                LayerMomentum::Running(Array2::zeros((rows, cols)))
            } else if off_background_fraction(factors.clone()) <= SPARSE_INPUTS_BELOW {
                LayerMomentum::SparseInputs {
                    stack: std::mem::take(&mut self.spare_sparse_stack),
                    momentum: None,
                }
            } else {
                LayerMomentum::Stacked {
                    stack: std::mem::take(&mut self.spare_stack),
                    momentum: None,
                }
            };
        }
        match slot {
            LayerMomentum::Empty => unreachable!("chosen above"),
            LayerMomentum::SparseInputs { stack, .. } => stack.push(factors, (rows, cols)),
            LayerMomentum::Running(buffer) => {
                let mut beta = self.decay;
                if factors.clone().next().is_none() {
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
    fn push<'g>(&mut self, factors: impl Iterator<Item = &'g GradientFactors>) {
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

/// The fraction of the inputs in `factors` that differ from their minimum.
fn off_background_fraction<'g>(factors: impl Iterator<Item = &'g GradientFactors> + Clone) -> f64 {
    let background = minimum(factors.clone());
    let (off, all) = factors.fold((0, 0), |(off, all), f| {
        let off_here = f.input.iter().filter(|&&x| x != background).count();
        (off + off_here, all + f.input.len())
    });
    off as f64 / all.max(1) as f64
}

/// The smallest input value in `factors` (+∞ if there is none).
fn minimum<'g>(factors: impl Iterator<Item = &'g GradientFactors>) -> f32 {
    factors
        .flat_map(|f| f.input.iter())
        .fold(f32::INFINITY, |m, &x| m.min(x))
}

/// One layer's window of gradient factors with the inputs stored sparsely.
///
/// Many layers' inputs sit mostly at one value `b`: a ReLU's output at 0, a
/// normalised image at its background. Writing a step's inputs as `X = b + S`,
/// with `S` sparse, its gradient is `dY·Xᵀ = dY·Sᵀ + b·(dY·1)·1ᵀ`: a product
/// that costs `rows` multiply-adds per stored entry of `S`, plus one row sum.
/// The product runs with output rows = input features, each the weighted sum
/// of the `dYᵀ` rows of the samples where that feature is off the background:
/// the forward kernel's inner loop, with `dYᵀ` in place of the activations.
#[derive(Debug, Default)]
pub(crate) struct SparseInputStack {
    /// The layer's outputs.
    rows: usize,
    /// The layer's inputs.
    cols: usize,
    /// `dYᵀ`: row `k` holds the output gradients of sample `k` of the window,
    /// then zeros up to a whole number of cache lines ([`Self::stride`]), the
    /// first row `lead` floats in, at a line boundary: the product reads a
    /// row per stored input, 16 floats at a time, and a load that straddles
    /// two lines is slow ([`crate::aligned`]).
    grad_rows: Vec<f32>,
    /// Floats before the first row of `grad_rows`.
    lead: usize,
    /// The sample of every input off the background, in parts (one per
    /// factor pair pushed, so a step appends to one buffer instead of one per
    /// feature), a part's entries grouped by feature in sample order.
    entry_samples: Vec<u32>,
    /// `x − b` of the same inputs.
    entry_values: Vec<f32>,
    /// Per part, `cols + 1` offsets into the entries: feature `j` of part `p`
    /// is entries `bounds[p·(cols+1) + j]..bounds[p·(cols+1) + j + 1]`.
    bounds: Vec<usize>,
    /// The first sample of every part; a part ends where the next begins.
    part_starts: Vec<usize>,
    /// The first sample of every step.
    step_starts: Vec<usize>,
    /// `b`: the smallest input of the window's first step. Any value would
    /// give the same momentum; this one keeps `S` sparse.
    background: f32,
}

impl SparseInputStack {
    /// Samples stacked so far.
    fn samples(&self) -> usize {
        (self.grad_rows.len() - self.lead) / self.stride().max(1)
    }

    /// Floats per row of `grad_rows`: the outputs rounded up to whole lines.
    fn stride(&self) -> usize {
        self.rows.next_multiple_of(aligned::LINE_FLOATS)
    }

    /// The rows of `grad_rows`, from the first.
    fn rows_from_lead(&self) -> &[f32] {
        &self.grad_rows[self.lead..]
    }

    /// Moves the rows so that the first starts a cache line again (a
    /// reallocation may have moved the buffer), within its capacity, which
    /// must leave [`aligned::SLACK`] floats to spare.
    fn realign(&mut self) {
        let filled = self.grad_rows.len() - self.lead;
        let lead = aligned::floats_to_line(&self.grad_rows);
        if lead == self.lead {
            return; // Not moved: nothing to copy (the usual case).
        }
        if lead > self.lead {
            self.grad_rows.resize(lead + filled, 0.0);
        }
        self.grad_rows
            .copy_within(self.lead..self.lead + filled, lead);
        self.grad_rows.truncate(lead + filled);
        self.lead = lead;
    }

    /// The stored inputs of feature `j` in part `p`, in sample order: their
    /// samples and values.
    fn part_feature(&self, p: usize, j: usize) -> (&[u32], &[f32]) {
        let bounds = &self.bounds[p * (self.cols + 1) + j..][..2];
        let entries = bounds[0]..bounds[1];
        (
            &self.entry_samples[entries.clone()],
            &self.entry_values[entries],
        )
    }

    /// Where each feature's entries start when all parts' are put together
    /// feature by feature (`cols + 1` offsets, the last the total).
    fn feature_starts(&self) -> Vec<usize> {
        std::iter::once(0)
            .chain((0..self.cols).scan(0, |end, j| {
                *end += (0..self.part_starts.len())
                    .map(|p| self.part_feature(p, j).0.len())
                    .sum::<usize>();
                Some(*end)
            }))
            .collect()
    }

    /// Appends one step's factors of a `rows × cols` layer.
    fn push<'g>(
        &mut self,
        factors: impl Iterator<Item = &'g GradientFactors> + Clone,
        (rows, cols): (usize, usize),
    ) {
        // The background is the smallest input of the first step that
        // brings samples (a window may open with steps that bring none).
        if self.samples() == 0 {
            self.background = minimum(factors.clone());
        }
        let (background, isa) = (self.background, InstructionSet::best());
        (self.rows, self.cols) = (rows, cols);
        self.step_starts.push(self.samples());
        for f in factors {
            let first = self.samples();
            let batch = f.output_grad.ncols();
            if batch == 0 {
                continue;
            }
            // Sample by sample: a sample's column of `dY` touches `rows`
            // cache lines, which the next 15 samples' columns read again
            // from L1; the writes run in order.
            let grads = f.output_grad.as_slice().expect("factors are contiguous");
            assert_eq!(
                grads.len(),
                rows * batch,
                "output gradients of a {rows}-output layer"
            );
            let stride = self.stride();
            self.grad_rows.reserve(batch * stride + aligned::SLACK);
            self.realign();
            for k in 0..batch {
                // (A layer without outputs has an empty `dY`.)
                let column = grads.get(k..).unwrap_or_default().iter().step_by(batch);
                self.grad_rows.extend(column.take(rows));
                self.grad_rows
                    .resize(self.grad_rows.len() + stride - rows, 0.0);
            }
            let inputs = f.input.as_slice().expect("factors are contiguous");
            assert_eq!(inputs.len(), cols * batch, "inputs of a {cols}-input layer");
            self.part_starts.push(first);
            for inputs in inputs.chunks_exact(batch) {
                self.bounds.push(self.entry_samples.len());
                push_off_background(
                    isa,
                    inputs,
                    background,
                    first as u32,
                    &mut self.entry_samples,
                    &mut self.entry_values,
                );
            }
            self.bounds.push(self.entry_samples.len());
        }
    }

    /// `Σ_t β^(T−t) · dY_t · X_tᵀ`, the last step being `T`, as a `rows × cols` array.
    fn momentum(&mut self, decay: f32, (rows, cols): (usize, usize)) -> Array2<f32> {
        let (samples, stride, lead) = (self.samples(), self.stride(), self.lead);
        // Weight every step's gradients, summing the background term's rows.
        let mut background_term = vec![0.0f32; rows];
        let steps = self.step_starts.len();
        for (t, &first) in self.step_starts.iter().enumerate() {
            let end = self.step_starts.get(t + 1).copied().unwrap_or(samples);
            let weight = decay.powi((steps - 1 - t) as i32);
            let step_rows = &mut self.grad_rows[lead + first * stride..lead + end * stride];
            for grads in step_rows.chunks_exact_mut(stride.max(1)) {
                for (sum, g) in background_term.iter_mut().zip(grads) {
                    *g *= weight;
                    *sum += self.background * *g;
                }
            }
        }
        let grad_rows = ArrayView2::from_shape((samples, stride), self.rows_from_lead())
            .expect("samples · stride gradients");
        // Mᵀ, one row per input feature: a contiguous range of features per
        // thread, balanced by stored entries, each walking the window a
        // block of samples at a time.
        let mut transposed = aligned::zeros(cols, stride);
        debug_assert_eq!(self.cols, cols, "the stack's layer has {cols} inputs");
        let entries_prefix = self.feature_starts();
        let threads = rayon::current_num_threads();
        let mut tasks = Vec::with_capacity(threads);
        let mut rest = transposed.view_mut();
        let mut first = 0;
        for t in 1..=threads {
            let end = if t == threads {
                cols
            } else {
                entries_prefix.partition_point(|&p| p < entries_prefix[cols] * t / threads)
            }
            .clamp(first, cols);
            let (mine, others) = rest.split_at(Axis(0), end - first);
            tasks.push((first, mine));
            (rest, first) = (others, end);
        }
        let stack = &*self;
        tasks.into_par_iter().for_each(|(first, mut out)| {
            // A block's entries of this task's features, copied out of the
            // parts that hold them so that each feature's are one slice.
            let (mut block_samples, mut block_values) = (Vec::new(), Vec::new());
            let mut block_bounds = Vec::with_capacity(out.nrows() + 1);
            for start in (0..samples).step_by(SAMPLE_BLOCK) {
                let end = samples.min(start + SAMPLE_BLOCK);
                let parts = stack
                    .part_starts
                    .partition_point(|&s| s <= start)
                    .saturating_sub(1)
                    ..stack.part_starts.partition_point(|&s| s < end);
                block_samples.clear();
                block_values.clear();
                block_bounds.clear();
                block_bounds.push(0);
                for j in first..first + out.nrows() {
                    for p in parts.clone() {
                        let (samples, values) = stack.part_feature(p, j);
                        let from = samples.partition_point(|&k| (k as usize) < start);
                        let to = samples.partition_point(|&k| (k as usize) < end);
                        block_samples.extend_from_slice(&samples[from..to]);
                        block_values.extend_from_slice(&values[from..to]);
                    }
                    block_bounds.push(block_samples.len());
                }
                let entries = |j: usize| {
                    let entries = block_bounds[j]..block_bounds[j + 1];
                    (block_values[entries.clone()].iter())
                        .zip(&block_samples[entries])
                        .map(|(&s, &k)| (s, k as usize))
                };
                add_weighted_rows(&entries, grad_rows, out.view_mut());
            }
        });
        // The padding columns (sums of zeros) go.
        let mut transposed = transposed.slice_move(s![.., ..rows]);
        for mut row in transposed.rows_mut() {
            row.zip_mut_with(&ndarray::aview1(&background_term), |m, &b| *m += b);
        }
        transposed.t().as_standard_layout().into_owned()
    }

    /// Empties the window, keeping the buffers for the next one.
    fn clear(&mut self) {
        self.grad_rows.clear();
        self.lead = 0;
        self.entry_samples.clear();
        self.entry_values.clear();
        self.bounds.clear();
        self.part_starts.clear();
        self.step_starts.clear();
    }

    /// Adds the open window to a checkpoint under `prefix`.
    fn save(&self, contents: &mut Contents, prefix: &str) {
        let as_i64 = |values: &mut dyn Iterator<Item = usize>| values.map(|v| v as i64).collect();
        let starts = self.feature_starts();
        // Feature by feature, all parts' entries of a feature together.
        let features = (0..self.cols)
            .flat_map(|j| (0..self.part_starts.len()).map(move |p| self.part_feature(p, j)));
        let n = self.entry_samples.len();
        let tensors = [
            (
                "grad_rows",
                Tensor::F32(
                    vec![self.samples(), self.rows],
                    (self.rows_from_lead().chunks_exact(self.stride().max(1)))
                        .flat_map(|row| &row[..self.rows])
                        .copied()
                        .collect(),
                ),
            ),
            (
                "feature_starts",
                Tensor::I64(vec![starts.len()], as_i64(&mut starts.iter().copied())),
            ),
            (
                "entry_samples",
                Tensor::I64(
                    vec![n],
                    as_i64(&mut features.clone().flat_map(|(k, _)| k).map(|&k| k as usize)),
                ),
            ),
            (
                "entry_values",
                Tensor::F32(vec![n], features.flat_map(|(_, v)| v).copied().collect()),
            ),
            (
                "step_starts",
                Tensor::I64(
                    vec![self.step_starts.len()],
                    as_i64(&mut self.step_starts.iter().copied()),
                ),
            ),
            ("background", Tensor::F32(vec![1], vec![self.background])),
        ];
        for (part, tensor) in tensors {
            contents.tensors.push((format!("{prefix}.{part}"), tensor));
        }
    }

    /// Restores what [`SparseInputStack::save`] stored under `prefix`, for a
    /// `rows × cols` layer.
    fn restore(
        checkpoint: &Checkpoint,
        prefix: &str,
        (rows, cols): (usize, usize),
    ) -> Result<Self> {
        let key = |part: &str| format!("{prefix}.{part}");
        let bad = |problem: String| Error::BadFile {
            path: checkpoint.path().to_path_buf(),
            problem,
        };
        let (shape, grad_rows) = checkpoint.f32(&key("grad_rows"))?;
        let [samples, width] = shape[..] else {
            return Err(bad(format!("`{}` is not 2-D", key("grad_rows"))));
        };
        let starts = checkpoint.indices(&key("feature_starts"))?;
        let entry_samples = checkpoint.indices(&key("entry_samples"))?;
        let (_, entry_values) = checkpoint.f32(&key("entry_values"))?;
        let step_starts = checkpoint.indices(&key("step_starts"))?;
        let (_, background) = checkpoint.f32(&key("background"))?;
        let consistent = width == rows
            && starts.len() == cols + 1
            && starts.first() == Some(&0)
            && starts.is_sorted()
            && starts.last() == Some(&entry_samples.len())
            && entry_values.len() == entry_samples.len()
            && starts
                .windows(2)
                .all(|w| entry_samples[w[0]..w[1]].is_sorted())
            && entry_samples.iter().all(|&k| k < samples)
            && step_starts.is_sorted()
            && step_starts.last().is_none_or(|&s| s <= samples)
            && background.len() == 1;
        if !consistent {
            return Err(bad(format!(
                "the sparse momentum window `{prefix}` does not fit a {rows}×{cols} layer"
            )));
        }
        // The stored inputs come back as one part: the product sums each
        // block's entries in sample order whatever the parts, so a resumed
        // window gives the momentum the uninterrupted one would.
        let entry_samples: Vec<u32> = entry_samples.iter().map(|&k| k as u32).collect();
        let (bounds, part_starts) = if entry_samples.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (starts, vec![0])
        };
        let mut stack = SparseInputStack {
            rows,
            cols,
            grad_rows: Vec::new(),
            lead: 0,
            entry_samples,
            entry_values,
            bounds,
            part_starts,
            step_starts,
            background: background[0],
        };
        let stride = stack.stride();
        stack.grad_rows.reserve(samples * stride + aligned::SLACK);
        stack.realign();
        for row in grad_rows.chunks_exact(rows.max(1)) {
            stack.grad_rows.extend_from_slice(row);
            stack
                .grad_rows
                .resize(stack.grad_rows.len() + stride - rows, 0.0);
        }
        Ok(stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    /// Factors of a `rows × cols` layer over `batch` samples whose inputs
    /// are `background` except for a fraction `off` of them.
    fn factors(
        rng: &mut ChaCha8Rng,
        (rows, cols): (usize, usize),
        batch: usize,
        off: f64,
        background: f32,
    ) -> GradientFactors {
        let mut output_grad = Array2::zeros((rows, batch));
        // Some output rows get no gradient at all (a unit nothing reads).
        for mut row in output_grad.rows_mut() {
            if rng.random_bool(0.8) {
                row.mapv_inplace(|_| rng.random_range(-1.0..1.0));
            }
        }
        let input = Array2::from_shape_fn((cols, batch), |_| {
            if rng.random_bool(off) {
                background + rng.random_range(0.01..2.0)
            } else {
                background
            }
        });
        GradientFactors { output_grad, input }
    }

    /// The momentum (β = 0.9) of `steps` from a dense stack and from a
    /// sparse-input one.
    fn both_momenta(
        steps: &[Vec<GradientFactors>],
        shape: (usize, usize),
    ) -> (Array2<f32>, Array2<f32>) {
        let mut dense = FactorStack::default();
        let mut sparse = SparseInputStack::default();
        for step in steps {
            dense.push(step.iter());
            sparse.push(step.iter(), shape);
        }
        (dense.momentum(0.9, shape), sparse.momentum(0.9, shape))
    }

    #[test]
    fn sparse_inputs_give_the_dense_product() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Empty inputs (0 entries), ReLU-like, an image-like negative
        // background, and full density (every input off the background but one).
        for (off, background) in [(0.0, 0.0), (0.2, 0.0), (0.2, -0.42), (1.0, 0.5)] {
            let shape = (37, 300);
            // 600 samples: more than two sample blocks; the second step has
            // two pairs (two shards), the third none.
            let steps: Vec<Vec<GradientFactors>> = vec![
                vec![factors(&mut rng, shape, 100, off, background)],
                vec![
                    factors(&mut rng, shape, 48, off, background),
                    factors(&mut rng, shape, 52, off, background),
                ],
                vec![],
                vec![factors(&mut rng, shape, 400, off, background)],
            ];
            let (expected, got) = both_momenta(&steps, shape);
            assert_eq!(got.dim(), shape);
            let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-4 * scale,
                    "{g} vs {e} (off {off}, b {background})"
                );
            }
        }
    }

    proptest::proptest! {
        /// The same over random shapes (no outputs or no inputs included),
        /// parts of batches and fractions off the background.
        #[test]
        fn sparse_inputs_give_the_dense_product_for_any_shape(
            shape in (0usize..40, 0usize..70),
            parts in proptest::collection::vec(proptest::collection::vec(1usize..90, 0..3), 1..4),
            off in proptest::prop_oneof![
                proptest::strategy::Just(0.0),
                proptest::strategy::Just(1.0),
                0.0..1.0f64
            ],
            background in proptest::prop_oneof![
                proptest::strategy::Just(0.0f32),
                proptest::strategy::Just(-0.42)
            ],
            seed in 0u64..1000,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let steps: Vec<Vec<GradientFactors>> = (parts.iter())
                .map(|step| {
                    (step.iter())
                        .map(|&batch| factors(&mut rng, shape, batch, off, background))
                        .collect()
                })
                .collect();
            let (expected, got) = both_momenta(&steps, shape);
            proptest::prop_assert_eq!(got.dim(), shape);
            let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                proptest::prop_assert!((g - e).abs() <= 1e-4 * scale, "{} vs {}", g, e);
            }
        }
    }

    #[test]
    fn padded_rows_stay_aligned_and_survive_a_checkpoint() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let dir = std::env::temp_dir().join(format!("sparsetrain-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Outputs that are a whole line, less than one, and more than two.
        for rows in [16, 5, 37] {
            let shape = (rows, 50);
            let steps: Vec<GradientFactors> = (0..6)
                .map(|t| factors(&mut rng, shape, 20 + 30 * t, 0.2, -0.42))
                .collect();
            let mut stack = SparseInputStack::default();
            for step in &steps[..3] {
                stack.push(std::iter::once(step), shape);
                // Growing the buffer moves it; the first row stays on a line.
                assert_eq!(
                    stack.rows_from_lead().as_ptr() as usize % aligned::LINE_BYTES,
                    0
                );
            }
            let mut contents = Contents::default();
            stack.save(&mut contents, "w");
            let (_, saved) = (contents.tensors.iter())
                .find(|(name, _)| name == "w.grad_rows")
                .unwrap();
            let Tensor::F32(saved_shape, _) = saved else {
                panic!("grad_rows is f32")
            };
            assert_eq!(saved_shape, &vec![stack.samples(), rows], "saved unpadded");
            contents
                .metadata
                .insert("format".into(), crate::checkpoint::FORMAT.into());
            let path = dir.join(format!("{rows}.safetensors"));
            contents.write(&path).unwrap();
            let mut restored =
                SparseInputStack::restore(&Checkpoint::open(&path).unwrap(), "w", shape).unwrap();
            for step in &steps[3..] {
                stack.push(std::iter::once(step), shape);
                restored.push(std::iter::once(step), shape);
            }
            let (a, b) = (stack.momentum(0.9, shape), restored.momentum(0.9, shape));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{rows} outputs"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mostly_background_inputs_are_stacked_sparsely() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let shape = (300, 784);
        let mut window = DenseMomentum::new(MomentumWindow::LastSteps(3), 0.9, 2);
        let images = factors(&mut rng, shape, 100, 0.19, -0.42);
        let dense_inputs = factors(&mut rng, shape, 100, 0.9, 0.0);
        window.layers[0].accumulate(shape, std::iter::once(&images));
        window.layers[1].accumulate(shape, std::iter::once(&dense_inputs));
        assert!(matches!(
            window.layers[0].momentum,
            LayerMomentum::SparseInputs { .. }
        ));
        assert!(matches!(
            window.layers[1].momentum,
            LayerMomentum::Stacked { .. }
        ));
    }
}

//! The tape: a `Vec` of nodes in the order they were computed, and one reverse loop.
//!
//! Each op appends a node holding its output value and an [`Op`] that records
//! its inputs. [`Tape::backward`] walks the nodes from the last to the first;
//! each node hands its output gradient to its op's `backward`, which adds
//! (never assigns) gradients into the op's inputs and parameters. Because nodes
//! are appended after their inputs, reverse order is a valid topological order:
//! a node's gradient is complete when the loop reaches it.
//!
//! The tape borrows the [`ParamStore`] for its whole life: parameters cannot
//! change under a forward pass, and the optimizer can only run once the tape is
//! gone. Gradients live outside the tape, in [`Gradients`], keyed by parameter.
//! What a forward pass must change besides gradients (batch normalisation's
//! running statistics) is returned by [`Tape::take_state_updates`] and applied
//! by the caller afterwards.

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rayon::prelude::*;

use super::conv::Conv2d;
use super::elementwise::{Add, Dropout, Relu};
use super::linear::{AddBias, Matmul};
use super::loss::SoftmaxCrossEntropy;
use super::norm::BatchNorm;
use super::pool::{Flatten, GlobalAvgPool, MaxPool2d};
use super::weight_product::{DEFAULT_DENSE_KERNELS_ABOVE, DenseKernels, WeightProduct};
use super::workspace::Workspace;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamStore, ParamValue};

/// Elements per task when an elementwise pass over a parameter's values or
/// gradient is split across threads: 128 kB of `f32`, so only big dense
/// layers split (a task costs a few microseconds to hand over).
pub(crate) const PARALLEL_CHUNK: usize = 1 << 15;

/// A value on the tape (an index into its nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// The closed set of operations the tape can differentiate.
#[derive(Debug)]
pub(crate) enum Op {
    /// A leaf: data fed in from outside.
    Input,
    Matmul(Matmul),
    AddBias(AddBias),
    Relu(Relu),
    SoftmaxCrossEntropy(SoftmaxCrossEntropy),
    Conv2d(Conv2d),
    MaxPool2d(MaxPool2d),
    GlobalAvgPool(GlobalAvgPool),
    Flatten(Flatten),
    BatchNorm(BatchNorm),
    Add(Add),
    Dropout(Dropout),
}

#[derive(Debug)]
pub(crate) struct Node {
    value: Array2<f32>,
    op: Op,
    /// False for data and everything computed from data alone: no gradient
    /// flows into it, which saves e.g. `Wᵀ·dY` for the first layer.
    requires_grad: bool,
}

/// Records a forward pass over the parameters of one [`ParamStore`].
#[derive(Debug)]
pub struct Tape<'p> {
    params: &'p ParamStore,
    nodes: Vec<Node>,
    keep_factors: Vec<ParamId>,
    workspace: Workspace,
    training: bool,
    rng: Option<ChaCha8Rng>,
    state_updates: Vec<(ParamId, Array2<f32>)>,
    dense_kernels: Option<DenseKernels>,
}

/// The gradient of one parameter, aligned with [`ParamValue::values`].
#[derive(Debug, Clone, PartialEq)]
pub enum ParamGrad {
    /// Gradient of a dense parameter, same shape.
    Dense(Array2<f32>),
    /// Gradient of a sparse parameter at its stored entries only.
    Sparse(Vec<f32>),
}

impl ParamGrad {
    /// The gradient as one slice, aligned with the parameter's values.
    pub fn values(&self) -> &[f32] {
        match self {
            ParamGrad::Dense(a) => a.as_slice().expect("gradients are contiguous"),
            ParamGrad::Sparse(v) => v,
        }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        match self {
            ParamGrad::Dense(a) => a.as_slice_mut().expect("gradients are contiguous"),
            ParamGrad::Sparse(v) => v,
        }
    }

    /// Adds `other` (of the same parameter), split across the threads if long.
    fn add_assign(&mut self, other: &ParamGrad) {
        (self.values_mut().par_chunks_mut(PARALLEL_CHUNK))
            .zip(other.values().par_chunks(PARALLEL_CHUNK))
            .for_each(|(mine, theirs)| mine.iter_mut().zip(theirs).for_each(|(x, y)| *x += y));
    }

    /// Gives the buffer back to `workspace`.
    fn recycle(self, workspace: &mut Workspace) {
        match self {
            ParamGrad::Dense(array) => workspace.give(array),
            ParamGrad::Sparse(values) => workspace.give_vec(values),
        }
    }
}

/// The two factors of a sparse weight's *full* (dense) gradient
/// `dW = output_grad · inputᵀ`, kept instead of the `rows × cols` product
/// itself. Sparse momentum and RigL use them to score missing weights.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientFactors {
    /// `dY`, `rows × batch`.
    pub output_grad: Array2<f32>,
    /// `X`, `cols × batch`.
    pub input: Array2<f32>,
}

/// Everything [`Tape::backward`] computed.
#[derive(Debug, Default)]
pub struct Gradients {
    params: Vec<Option<ParamGrad>>,
    inputs: Vec<Option<Array2<f32>>>,
    factors: Vec<Vec<GradientFactors>>,
}

impl Gradients {
    /// The gradient of a parameter, or `None` if the loss does not depend on it.
    pub fn param(&self, id: ParamId) -> Option<&ParamGrad> {
        self.params.get(id.0).and_then(Option::as_ref)
    }

    /// The gradient of an input created with [`Tape::input_with_grad`].
    pub fn input(&self, var: Var) -> Option<&Array2<f32>> {
        self.inputs.get(var.0).and_then(Option::as_ref)
    }

    /// The dense-gradient factors of a sparse weight named in
    /// [`Tape::keep_gradient_factors`] (one pair per use of the weight).
    pub fn factors(&self, id: ParamId) -> &[GradientFactors] {
        self.factors.get(id.0).map_or(&[], Vec::as_slice)
    }

    /// Gives every gradient buffer, and the lists that held them, back to
    /// `workspace`, for the next step.
    pub fn recycle(mut self, workspace: &mut Workspace) {
        for grad in self.params.drain(..).flatten() {
            grad.recycle(workspace);
        }
        for input in self.inputs.drain(..).flatten() {
            workspace.give(input);
        }
        // The lists stay (empty) for their capacity, the factors' buffers go
        // back for the next step's copies.
        for factors in &mut self.factors {
            for f in factors.drain(..) {
                workspace.give(f.output_grad);
                workspace.give(f.input);
            }
        }
        workspace.lists.gradients = self;
    }

    /// Moves the dense-gradient factors of `id` out (no copy).
    pub fn take_factors(&mut self, id: ParamId) -> Vec<GradientFactors> {
        self.factors
            .get_mut(id.0)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

impl<'p> Tape<'p> {
    /// An empty tape over `params`, in training mode.
    pub fn new(params: &'p ParamStore) -> Self {
        Self::with_workspace(params, Workspace::new())
    }

    /// An empty tape that takes its scratch buffers from `workspace`; get it
    /// back with [`Tape::into_workspace`].
    pub fn with_workspace(params: &'p ParamStore, mut workspace: Workspace) -> Self {
        Tape {
            params,
            nodes: std::mem::take(&mut workspace.lists.nodes),
            keep_factors: Vec::new(),
            workspace,
            training: true,
            rng: None,
            state_updates: Vec::new(),
            dense_kernels: Some(DenseKernels::above(DEFAULT_DENSE_KERNELS_ABOVE)),
        }
    }

    /// When sparse weights compute with dense kernels on a scratch copy
    /// (default: [`DenseKernels::above`] [`DEFAULT_DENSE_KERNELS_ABOVE`]);
    /// `None` always runs the sparse kernels.
    pub fn set_dense_kernels(&mut self, policy: Option<DenseKernels>) {
        self.dense_kernels = policy;
    }

    /// Training mode (the default) or evaluation mode: batch normalisation
    /// uses batch or running statistics, dropout drops or passes.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Whether the tape records a training step.
    pub fn training(&self) -> bool {
        self.training
    }

    /// The random numbers for dropout; a trainer seeds one per step.
    pub fn set_rng(&mut self, rng: ChaCha8Rng) {
        self.rng = Some(rng);
    }

    /// Ends the tape, returning every value and scratch buffer to the pool.
    pub fn into_workspace(mut self) -> Workspace {
        let mut nodes = std::mem::take(&mut self.nodes);
        for node in nodes.drain(..) {
            self.workspace.give(node.value);
            match node.op {
                Op::Matmul(op) => op.release(&mut self.workspace),
                Op::SoftmaxCrossEntropy(op) => op.release(&mut self.workspace),
                Op::MaxPool2d(op) => op.release(&mut self.workspace),
                Op::Conv2d(op) => op.release(&mut self.workspace),
                Op::BatchNorm(op) => op.release(&mut self.workspace),
                Op::Dropout(op) => op.release(&mut self.workspace),
                _ => {}
            }
        }
        self.workspace.lists.nodes = nodes;
        self.workspace
    }

    /// The new values of non-trainable parameters this pass computed (batch
    /// normalisation's running statistics), to be written after the step.
    pub fn take_state_updates(&mut self) -> Vec<(ParamId, Array2<f32>)> {
        std::mem::take(&mut self.state_updates)
    }

    /// Records a new value for a non-trainable parameter.
    pub(crate) fn update_state(&mut self, id: ParamId, value: Array2<f32>) {
        self.state_updates.push((id, value));
    }

    /// A `rows × cols` array from the pool, contents unspecified: the op
    /// must write every value it (or a later op) reads.
    pub(crate) fn alloc(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        self.workspace.array(rows, cols)
    }

    /// The pool of scratch buffers, for ops that need more than arrays.
    pub(crate) fn workspace(&mut self) -> &mut Workspace {
        &mut self.workspace
    }

    /// How to multiply by `weight` (a parameter's value) on an operand of
    /// `columns` columns, per the dense-kernel policy.
    pub(crate) fn weight_product(&mut self, weight: &ParamValue, columns: usize) -> WeightProduct {
        WeightProduct::choose(weight, columns, self.dense_kernels, &mut self.workspace)
    }

    /// The dropout random numbers; an error if none were given.
    pub(crate) fn rng(&mut self) -> Result<&mut ChaCha8Rng> {
        self.rng.as_mut().ok_or_else(|| {
            Error::shape(
                "dropout",
                "the tape has no random numbers (call Tape::set_rng)",
            )
        })
    }

    /// Whether the backward pass keeps the dense-gradient factors of `id`.
    pub(crate) fn keeps_factors(&self, id: ParamId) -> bool {
        self.keep_factors.contains(&id)
    }

    /// Feeds in data that needs no gradient (a batch of inputs).
    pub fn input(&mut self, value: Array2<f32>) -> Var {
        self.push(value, Op::Input, false)
    }

    /// Feeds in a value whose gradient [`Gradients::input`] will report.
    pub fn input_with_grad(&mut self, value: Array2<f32>) -> Var {
        self.push(value, Op::Input, true)
    }

    /// Asks the backward pass to keep the [`GradientFactors`] of sparse weight
    /// `id`. Call it before recording the ops that read `id`: a convolution
    /// then builds every im2col row in its forward pass (called later, the
    /// rows it skipped are built again in the backward pass).
    pub fn keep_gradient_factors(&mut self, id: ParamId) {
        self.keep_factors.push(id);
    }

    /// The value of a node.
    pub fn value(&self, var: Var) -> &Array2<f32> {
        &self.nodes[var.0].value
    }

    /// Moves the value of `var` out, leaving an empty array (e.g. the input
    /// batch's buffer, for reuse by the next batch): call it when the tape's
    /// work is done.
    pub fn take_value(&mut self, var: Var) -> Array2<f32> {
        std::mem::take(&mut self.nodes[var.0].value)
    }

    /// The parameters this tape reads.
    pub fn params(&self) -> &'p ParamStore {
        self.params
    }

    /// Appends a node whose gradient is needed if any of `inputs` needs one or
    /// it reads a parameter (`uses_param`).
    pub(crate) fn push_op(
        &mut self,
        value: Array2<f32>,
        op: Op,
        inputs: &[Var],
        uses_param: bool,
    ) -> Var {
        let requires_grad = uses_param || inputs.iter().any(|v| self.nodes[v.0].requires_grad);
        self.push(value, op, requires_grad)
    }

    fn push(&mut self, value: Array2<f32>, op: Op, requires_grad: bool) -> Var {
        // Ops read values as row-major slices (the batch contiguous).
        let value = if value.is_standard_layout() {
            value
        } else {
            value.as_standard_layout().into_owned()
        };
        self.nodes.push(Node {
            value,
            op,
            requires_grad,
        });
        Var(self.nodes.len() - 1)
    }

    /// Gradients of the scalar `loss` (a `1 × 1` value) with respect to every
    /// parameter and gradient-requiring input it depends on.
    pub fn backward(&mut self, loss: Var) -> Result<Gradients> {
        let shape = self.value(loss).dim();
        if shape != (1, 1) {
            return Err(Error::shape(
                "backward",
                format!(
                    "the loss must be a 1×1 scalar, got {shape:?} (pass a seed with backward_with_seed)"
                ),
            ));
        }
        let mut seed = self.alloc(1, 1);
        seed.fill(1.0);
        self.backward_with_seed(loss, seed)
    }

    /// Vector–Jacobian product: gradients of `sum(seed ⊙ output)`.
    pub fn backward_with_seed(&mut self, output: Var, seed: Array2<f32>) -> Result<Gradients> {
        if seed.dim() != self.value(output).dim() {
            return Err(Error::shape(
                "backward_with_seed",
                format!(
                    "seed is {:?} but the output is {:?}",
                    seed.dim(),
                    self.value(output).dim()
                ),
            ));
        }
        let (nodes, params) = (self.nodes.len(), self.params.len());
        let mut node_grads = std::mem::take(&mut self.workspace.lists.node_grads);
        node_grads.resize_with(nodes, || None);
        let mut grads = std::mem::take(&mut self.workspace.lists.gradients);
        grads.params.resize_with(params, || None);
        grads.inputs.resize_with(nodes, || None);
        grads.factors.resize_with(params, Vec::new);
        let mut pass = BackwardPass {
            nodes: &self.nodes,
            params: self.params,
            keep_factors: &self.keep_factors,
            workspace: &mut self.workspace,
            node_grads,
            grads,
        };
        pass.node_grads[output.0] = Some(seed);
        for (i, node) in self.nodes.iter().enumerate().take(output.0 + 1).rev() {
            let Some(grad) = pass.node_grads[i].take() else {
                continue;
            };
            // Every op owns its output gradient: it passes the buffer on (as
            // ReLU does) or gives it back to the pool when done reading it.
            match &node.op {
                Op::Input => pass.grads.inputs[i] = Some(grad),
                Op::Matmul(op) => op.backward(grad, &node.value, &mut pass),
                Op::AddBias(op) => op.backward(grad, &mut pass),
                Op::Relu(op) => op.backward(grad, &node.value, &mut pass),
                Op::SoftmaxCrossEntropy(op) => op.backward(grad, &mut pass),
                Op::Conv2d(op) => op.backward(grad, &mut pass),
                Op::MaxPool2d(op) => op.backward(grad, &mut pass),
                Op::GlobalAvgPool(op) => op.backward(grad, &mut pass),
                Op::Flatten(op) => op.backward(grad, &mut pass),
                Op::BatchNorm(op) => op.backward(grad, &mut pass),
                Op::Add(op) => op.backward(grad, &mut pass),
                Op::Dropout(op) => op.backward(grad, &mut pass),
            }
        }
        // Gradients of nodes after `output` were never read.
        for grad in pass.node_grads.drain(..).flatten() {
            pass.workspace.give(grad);
        }
        pass.workspace.lists.node_grads = pass.node_grads;
        Ok(pass.grads)
    }
}

/// The state of one backward pass, handed to each op's `backward`.
pub(crate) struct BackwardPass<'t, 'p> {
    nodes: &'t [Node],
    params: &'p ParamStore,
    keep_factors: &'t [ParamId],
    workspace: &'t mut Workspace,
    node_grads: Vec<Option<Array2<f32>>>,
    grads: Gradients,
}

impl<'t, 'p> BackwardPass<'t, 'p> {
    /// The forward value of a node.
    pub(crate) fn value(&self, var: Var) -> &'t Array2<f32> {
        &self.nodes[var.0].value
    }

    /// The value of a parameter.
    pub(crate) fn param(&self, id: ParamId) -> &'p ParamValue {
        &self.params.get(id).value
    }

    /// Whether `var` wants a gradient; ops skip computing ones nobody reads.
    pub(crate) fn needs_grad(&self, var: Var) -> bool {
        self.nodes[var.0].requires_grad
    }

    /// A `rows × cols` array from the pool, contents unspecified: the op
    /// must write every value it (or a later op) reads.
    pub(crate) fn alloc(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        self.workspace.array(rows, cols)
    }

    /// A copy of `a` in a buffer from the pool (a gradient sent two ways, or
    /// gradient factors that outlive the tape), without a fresh allocation.
    pub(crate) fn pooled_copy(&mut self, a: &Array2<f32>) -> Array2<f32> {
        let mut copy = self.alloc(a.nrows(), a.ncols());
        copy.assign(a);
        copy
    }

    /// A vector of `len` values from the pool, contents unspecified.
    pub(crate) fn alloc_vec(&mut self, len: usize) -> Vec<f32> {
        self.workspace.vec(len)
    }

    /// Gives a buffer the op no longer needs back to the pool.
    pub(crate) fn recycle(&mut self, array: Array2<f32>) {
        self.workspace.give(array);
    }

    /// Adds `grad` into `var`'s gradient (if `var` wants one); a buffer no
    /// longer needed goes back to the pool.
    pub(crate) fn accumulate(&mut self, var: Var, grad: Array2<f32>) {
        if !self.needs_grad(var) {
            self.workspace.give(grad);
            return;
        }
        match &mut self.node_grads[var.0] {
            Some(existing) => {
                *existing += &grad;
                self.workspace.give(grad);
            }
            slot @ None => *slot = Some(grad),
        }
    }

    /// Adds `grad` into parameter `id`'s gradient.
    pub(crate) fn accumulate_param(&mut self, id: ParamId, grad: ParamGrad) {
        match &mut self.grads.params[id.0] {
            Some(existing) => {
                existing.add_assign(&grad);
                grad.recycle(self.workspace);
            }
            slot @ None => *slot = Some(grad),
        }
    }

    /// Whether the factors of weight `id`'s dense gradient were asked for.
    pub(crate) fn wants_factors(&self, id: ParamId) -> bool {
        self.keep_factors.contains(&id)
    }

    /// Keeps one pair of dense-gradient factors of weight `id`.
    pub(crate) fn keep_factors(&mut self, id: ParamId, factors: GradientFactors) {
        self.grads.factors[id.0].push(factors);
    }
}

//! How a weight is multiplied: a dense weight with sgemm, a sparse one with
//! the sparse kernels or, above a density threshold, with sgemm on a dense
//! scratch copy of its values. [`WeightProduct`] is the choice, made once
//! per use of the weight in the forward pass and kept for the backward pass
//! (`W·X`, `Wᵀ·dY` and `dY·Xᵀ`), so linear layers and convolutions share it.
//!
//! The sparse kernels cost `O(nnz · batch)`, but each stored weight streams a
//! batch row from cache for two FLOPs per value, while sgemm reuses its
//! operands from registers and runs several times faster per FLOP. Above the
//! *cross-over* density (`sparsetrain bench kernels` prints it per shape and
//! kernel: 20–45 % on this project's machine) the dense product of the same
//! shape wins. Sparse momentum can push a layer there: it moves weights to
//! the layers whose momentum is largest, and LeNet-5's first convolution ends
//! up fully dense.
//!
//! Such a layer stays sparse in every other respect: its CSR structure,
//! optimizer state, mask updates and checkpoint are unchanged. Only the
//! product is dense: the tape scatters the CSR values into a workspace buffer
//! (zeros elsewhere) for the forward pass, reuses it for `Wᵀ·dY`, computes the
//! weight gradient as the full `dY·Xᵀ` and keeps only the stored entries.
//! Small products keep the sparse kernels ([`DenseKernels::min_work`]). The
//! choice depends on the shapes and the density alone, so training stays
//! deterministic; both paths compute the same products, with rounding that
//! differs in the last bits.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::tape::{BackwardPass, ParamGrad};
use super::workspace::Workspace;
use crate::dense::gemm;
use crate::params::ParamValue;
use crate::sparse::{Epilogue, SparseMatrix, sddmm, spmm_then, spmm_transposed};

/// The density above which a sparse layer computes with dense kernels unless
/// told otherwise: below every cross-over measured for LeNet-300-100's shapes
/// at batch 64–100 (34 % and up), above the 20 % where a 4096-wide input
/// gradient already loses (there the sparse path is still within 1.5× of
/// dense).
pub const DEFAULT_DENSE_KERNELS_ABOVE: f64 = 0.3;

/// When a sparse weight computes with dense kernels.
///
/// ```
/// use sparsetrain::autograd::{DenseKernels, Tape};
/// use sparsetrain::params::ParamStore;
///
/// let store = ParamStore::new();
/// let mut tape = Tape::new(&store);
/// // Sparse layers denser than 50 % (with products of 2²² multiply-adds or
/// // more) use sgemm; `None` would keep the sparse kernels everywhere.
/// tape.set_dense_kernels(Some(DenseKernels::above(0.5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseKernels {
    /// The weight's density must exceed this.
    pub above_density: f64,
    /// The product must have at least this many multiply-adds at full
    /// density: below, an sgemm call's fixed cost (packing both operands)
    /// outweighs its speed.
    pub min_work: usize,
}

impl DenseKernels {
    /// Above `density`, for products of at least 2²² multiply-adds. Measured:
    /// LeNet-300-100's fully dense 10 × 100 output layer (10⁵ multiply-adds per
    /// batch of 100) takes 2–4 µs per product with the sparse kernels and
    /// 3–7 µs with sgemm; its epochs ran 5–10 % slower on the dense path.
    pub fn above(density: f64) -> Self {
        DenseKernels {
            above_density: density,
            min_work: 1 << 22,
        }
    }

    /// For every weight with at least one stored entry, whatever its density
    /// and size (tests and studies).
    pub const fn always() -> Self {
        DenseKernels {
            above_density: 0.0,
            min_work: 0,
        }
    }
}

/// How one use of a weight is multiplied.
#[derive(Debug)]
pub(crate) enum WeightProduct {
    /// The weight as stored: sgemm for a dense weight, the sparse kernels
    /// ([`spmm_then`], [`spmm_transposed`], [`sddmm`]) for a sparse one.
    AsStored,
    /// A sparse weight through sgemm on this dense copy (from the workspace).
    DenseCopy(Array2<f32>),
}

/// The left operand of a product, as the kernels take it.
enum Operand<'a> {
    Dense(ArrayView2<'a, f32>),
    Sparse(&'a SparseMatrix),
}

impl WeightProduct {
    /// A dense copy if `weight` is sparse and `policy` says so for an operand
    /// of `columns` columns, else the weight as stored.
    pub(crate) fn choose(
        weight: &ParamValue,
        columns: usize,
        policy: Option<DenseKernels>,
        workspace: &mut Workspace,
    ) -> Self {
        let (ParamValue::Sparse(w), Some(policy)) = (weight, policy) else {
            return WeightProduct::AsStored;
        };
        let dense_work = w.rows() * w.cols() * columns;
        if w.density() > policy.above_density && dense_work >= policy.min_work {
            let mut dense = workspace.array(w.rows(), w.cols());
            w.scatter_into(dense.view_mut());
            WeightProduct::DenseCopy(dense)
        } else {
            WeightProduct::AsStored
        }
    }

    /// What multiplies: the dense copy, or the weight as stored.
    fn operand<'a>(&'a self, weight: &'a ParamValue) -> Operand<'a> {
        match (self, weight) {
            (WeightProduct::DenseCopy(dense), _) => Operand::Dense(dense.view()),
            (WeightProduct::AsStored, ParamValue::Dense(w)) => Operand::Dense(w.view()),
            (WeightProduct::AsStored, ParamValue::Sparse(w)) => Operand::Sparse(w),
        }
    }

    /// `y = epilogue(w · x)` (overwrites `y`): fused into the sparse
    /// kernel, a pass after sgemm.
    pub(crate) fn forward(
        &self,
        weight: &ParamValue,
        x: ArrayView2<f32>,
        epilogue: Epilogue,
        mut y: ArrayViewMut2<f32>,
    ) {
        match self.operand(weight) {
            Operand::Dense(w) => {
                gemm(1.0, w, x, 0.0, y.view_mut());
                epilogue.apply(y);
            }
            Operand::Sparse(w) => spmm_then(w, x, epilogue, y),
        }
    }

    /// `dx = wᵀ · dy` (overwrites `dx`).
    pub(crate) fn input_grad(
        &self,
        weight: &ParamValue,
        dy: ArrayView2<f32>,
        dx: ArrayViewMut2<f32>,
    ) {
        match self.operand(weight) {
            Operand::Dense(w) => gemm(1.0, w.t(), dy, 0.0, dx),
            Operand::Sparse(w) => spmm_transposed(w, dy, dx),
        }
    }

    /// `dw = dy · xᵀ`, shaped like the weight: dense for a dense weight, at
    /// the stored entries (aligned with the values) for a sparse one.
    pub(crate) fn weight_grad(
        &self,
        weight: &ParamValue,
        dy: ArrayView2<f32>,
        x: ArrayView2<f32>,
        pass: &mut BackwardPass,
    ) -> ParamGrad {
        let (rows, cols) = weight.shape();
        let full_product = |pass: &mut BackwardPass| {
            let mut full = pass.alloc(rows, cols);
            gemm(1.0, dy, x.t(), 0.0, full.view_mut());
            full
        };
        match (weight, self) {
            (ParamValue::Dense(_), _) => ParamGrad::Dense(full_product(pass)),
            (ParamValue::Sparse(w), WeightProduct::AsStored) => {
                let mut grad = pass.alloc_vec(w.nnz());
                sddmm(w, dy, x, &mut grad);
                ParamGrad::Sparse(grad)
            }
            (ParamValue::Sparse(w), WeightProduct::DenseCopy(_)) => {
                let full = full_product(pass);
                let mut grad = pass.alloc_vec(w.nnz());
                w.gather_from(full.view(), &mut grad);
                pass.recycle(full);
                ParamGrad::Sparse(grad)
            }
        }
    }

    /// Returns the dense copy, if any, to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        if let WeightProduct::DenseCopy(dense) = self {
            workspace.give(dense);
        }
    }
}

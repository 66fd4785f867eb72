//! Linear ops: `W·x` with a sparse or dense `W`, and adding a bias.
//!
//! Activations are `features × batch`, so a layer is `Y = W·X + b` with `W`
//! of shape `out × in` and `b` an `out × 1` column broadcast over the batch.

use ndarray::Array2;

use super::elementwise::{slice, slice_mut};
use super::sparse_product::SparseProduct;
use super::tape::{BackwardPass, GradientFactors, Op, ParamGrad, Tape, Var};
use super::workspace::Workspace;
use crate::dense::{gemm, sum};
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamValue};
use crate::sparse::SparseMatrix;

/// `Y = W·X` for a sparse `W`.
#[derive(Debug)]
pub(crate) struct SparseMatmul {
    weight: ParamId,
    input: Var,
    /// Sparse kernels, or dense ones for a weight above the threshold.
    product: SparseProduct,
}

/// `Y = W·X` for a dense `W`.
#[derive(Debug)]
pub(crate) struct DenseMatmul {
    weight: ParamId,
    input: Var,
}

/// `Y = X + b`, `b` an `n × 1` column added to every column of `X`.
#[derive(Debug)]
pub(crate) struct AddBias {
    bias: ParamId,
    input: Var,
}

impl Tape<'_> {
    /// `weight · input`. A sparse weight runs the sparse kernels, a dense one sgemm.
    pub fn matmul(&mut self, weight: ParamId, input: Var) -> Result<Var> {
        let x = self.value(input);
        let param = self.params().get(weight);
        let (rows, cols) = param.value.shape();
        if x.nrows() != cols {
            return Err(Error::shape(
                "matmul",
                format!(
                    "`{}` is {rows}×{cols} but its input has {} features (rows)",
                    param.name,
                    x.nrows()
                ),
            ));
        }
        let batch = x.ncols();
        let mut y = self.alloc(rows, batch);
        let op = match &self.params().get(weight).value {
            ParamValue::Sparse(w) => {
                let product = self.sparse_product(w, batch);
                product.forward(w, self.value(input).view(), y.view_mut());
                Op::SparseMatmul(SparseMatmul {
                    weight,
                    input,
                    product,
                })
            }
            ParamValue::Dense(w) => {
                let x = self.value(input);
                gemm(1.0, w.view(), x.view(), 0.0, y.view_mut());
                Op::DenseMatmul(DenseMatmul { weight, input })
            }
        };
        Ok(self.push_op(y, op, &[input], true))
    }

    /// `input + bias`, the `n × 1` bias broadcast over the batch.
    pub fn add_bias(&mut self, bias: ParamId, input: Var) -> Result<Var> {
        let param = self.params().get(bias);
        let ParamValue::Dense(b) = &param.value else {
            return Err(Error::shape(
                "add_bias",
                format!("bias `{}` must be dense", param.name),
            ));
        };
        let x = self.value(input);
        if b.dim() != (x.nrows(), 1) {
            return Err(Error::shape(
                "add_bias",
                format!(
                    "bias `{}` is {:?}, expected ({}, 1)",
                    param.name,
                    b.dim(),
                    x.nrows()
                ),
            ));
        }
        // One pass, row by row: each row is contiguous and gets one scalar,
        // which vectorises (a broadcasting `x + b` walks a stride-0 operand).
        let (rows, cols) = x.dim();
        let mut y = self.alloc(rows, cols);
        let ParamValue::Dense(b) = &self.params().get(bias).value else {
            unreachable!("checked above")
        };
        let x_rows = slice(self.value(input)).chunks_exact(cols.max(1));
        let y_rows = slice_mut(&mut y).chunks_exact_mut(cols.max(1));
        for ((out, row), &b) in y_rows.zip(x_rows).zip(b.iter()) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v + b;
            }
        }
        Ok(self.push_op(y, Op::AddBias(AddBias { bias, input }), &[input], true))
    }
}

impl SparseMatmul {
    /// `dW = dY·Xᵀ` at the stored entries (SDDMM), `dX = Wᵀ·dY`.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let (w, x) = (self.weights(pass), pass.value(self.input));
        let dx = pass.needs_grad(self.input).then(|| {
            let mut dx = pass.alloc(x.nrows(), x.ncols());
            self.product.input_grad(w, dy.view(), dx.view_mut());
            dx
        });
        let dw = self.product.weight_grad(w, dy.view(), x.view(), pass);
        let input = pass.wants_factors(self.weight).then(|| x.clone());
        pass.accumulate_param(self.weight, ParamGrad::Sparse(dw));
        if let Some(dx) = dx {
            pass.accumulate(self.input, dx);
        }
        match input {
            Some(input) => pass.keep_factors(
                self.weight,
                GradientFactors {
                    output_grad: dy,
                    input,
                },
            ),
            None => pass.recycle(dy),
        }
    }

    fn weights<'p>(&self, pass: &BackwardPass<'_, 'p>) -> &'p SparseMatrix {
        match pass.param(self.weight) {
            ParamValue::Sparse(w) => w,
            ParamValue::Dense(_) => {
                unreachable!("SparseMatmul is only recorded for sparse weights")
            }
        }
    }

    /// Returns the dense copy of the weight, if the product made one.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        self.product.release(workspace);
    }
}

impl DenseMatmul {
    /// `dW = dY·Xᵀ`, `dX = Wᵀ·dY`.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let dx = pass.needs_grad(self.input).then(|| {
            let (rows, cols) = pass.value(self.input).dim();
            let mut dx = pass.alloc(rows, cols);
            gemm(1.0, self.weights(pass).t(), dy.view(), 0.0, dx.view_mut());
            dx
        });
        let (rows, cols) = self.weights(pass).dim();
        let mut dw = pass.alloc(rows, cols);
        gemm(
            1.0,
            dy.view(),
            pass.value(self.input).t(),
            0.0,
            dw.view_mut(),
        );
        pass.accumulate_param(self.weight, ParamGrad::Dense(dw));
        if let Some(dx) = dx {
            pass.accumulate(self.input, dx);
        }
        pass.recycle(dy);
    }

    fn weights<'a>(&self, pass: &'a BackwardPass) -> &'a Array2<f32> {
        match pass.param(self.weight) {
            ParamValue::Dense(w) => w,
            ParamValue::Sparse(_) => unreachable!("DenseMatmul is only recorded for dense weights"),
        }
    }
}

impl AddBias {
    /// `dX = dY`, `db = Σ_batch dY`.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let rows = dy
            .as_slice()
            .expect("gradients are contiguous")
            .chunks_exact(dy.ncols().max(1));
        let mut db = pass.alloc(dy.nrows(), 1);
        for (db, row) in db.iter_mut().zip(rows) {
            *db = sum(row);
        }
        pass.accumulate_param(self.bias, ParamGrad::Dense(db));
        pass.accumulate(self.input, dy);
    }
}

//! Linear ops: `W·x` with a sparse or dense `W`, and adding a bias.
//!
//! Activations are `features × batch`, so a layer is `Y = W·X + b` with `W`
//! of shape `out × in` and `b` an `out × 1` column broadcast over the batch.

use ndarray::Array2;

use super::elementwise::{slice, slice_mut};
use super::tape::{BackwardPass, GradientFactors, Op, ParamGrad, Tape, Var};
use super::weight_product::WeightProduct;
use super::workspace::Workspace;
use crate::dense::sum;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamValue};

/// `Y = W·X`, for a sparse or dense `W`.
#[derive(Debug)]
pub(crate) struct Matmul {
    weight: ParamId,
    input: Var,
    /// The weight as stored, or a dense copy of a sparse one.
    product: WeightProduct,
}

/// `Y = X + b`, `b` an `n × 1` column added to every column of `X`.
#[derive(Debug)]
pub(crate) struct AddBias {
    bias: ParamId,
    input: Var,
}

impl Tape<'_> {
    /// `weight · input`. A dense weight runs sgemm, a sparse one the sparse
    /// kernels (or sgemm on a dense copy, see [`Tape::set_dense_kernels`]).
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
        let weight_value = &self.params().get(weight).value;
        let product = self.weight_product(weight_value, batch);
        product.forward(weight_value, self.value(input).view(), y.view_mut());
        let op = Op::Matmul(Matmul {
            weight,
            input,
            product,
        });
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

impl Matmul {
    /// `dX = Wᵀ·dY`; `dW = dY·Xᵀ`, for a sparse `W` at its stored entries only
    /// (keeping the factors `dY`, `X` of the full product if growth asked).
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let (weight, x) = (pass.param(self.weight), pass.value(self.input));
        let dx = pass.needs_grad(self.input).then(|| {
            let mut dx = pass.alloc(x.nrows(), x.ncols());
            self.product.input_grad(weight, dy.view(), dx.view_mut());
            dx
        });
        let dw = self.product.weight_grad(weight, dy.view(), x.view(), pass);
        let input = pass.wants_factors(self.weight).then(|| pass.pooled_copy(x));
        pass.accumulate_param(self.weight, dw);
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

    /// Returns the dense copy of the weight, if the product made one.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        self.product.release(workspace);
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

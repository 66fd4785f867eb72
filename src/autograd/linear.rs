//! Linear ops: `W·x` with a sparse or dense `W`, and adding a bias.
//!
//! Activations are `features × batch`, so a layer is `Y = W·X + b` with `W`
//! of shape `out × in` and `b` an `out × 1` column broadcast over the batch.
//! [`Tape::linear`] computes a whole fully connected layer, `relu(W·X + b)`,
//! as one op: the bias and ReLU are applied as the product's sums leave the
//! registers, and their gradients are taken in one pass over `dY` (the same
//! arithmetic as [`Tape::matmul`], [`Tape::add_bias`] and [`Tape::relu`] one
//! after the other, so the same results, with two passes over the output fewer).

use ndarray::Array2;

use super::elementwise::{slice, slice_mut};
use super::tape::{BackwardPass, GradientFactors, Op, ParamGrad, Tape, Var};
use super::weight_product::WeightProduct;
use super::workspace::Workspace;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamValue};
use crate::sparse::{Epilogue, epilogue_backward};

/// `Y = act(W·X + b)`, for a sparse or dense `W`, the bias optional.
#[derive(Debug)]
pub(crate) struct Matmul {
    weight: ParamId,
    bias: Option<ParamId>,
    activation: Activation,
    input: Var,
    /// The weight as stored, or a dense copy of a sparse one.
    product: WeightProduct,
}

/// The function a [`Tape::linear`] layer applies to `W·x + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// None: the output is `W·x + b`.
    #[default]
    Identity,
    /// `max(v, 0)`, as [`Tape::relu`].
    Relu,
}

/// `Y = X + b`, `b` an `n × 1` column added to every column of `X`.
#[derive(Debug)]
pub(crate) struct AddBias {
    bias: ParamId,
    input: Var,
}

impl<'p> Tape<'p> {
    /// `weight · input`. A dense weight runs sgemm, a sparse one the sparse
    /// kernels (or sgemm on a dense copy, see [`Tape::set_dense_kernels`]).
    pub fn matmul(&mut self, weight: ParamId, input: Var) -> Result<Var> {
        self.linear(weight, None, input, Activation::Identity)
    }

    /// A fully connected layer, `activation(weight · input + bias)`, as one
    /// op: the bias and activation are applied as the product is stored.
    ///
    /// ```
    /// use ndarray::array;
    /// use sparsetrain::autograd::{Activation, Tape};
    /// use sparsetrain::params::{ParamStore, ParamValue};
    /// use sparsetrain::sparse::SparseMatrix;
    ///
    /// let mut store = ParamStore::new();
    /// let w = SparseMatrix::from_dense(array![[1.0f32, 0.0], [0.0, -1.0]].view());
    /// let w = store.add("w", ParamValue::Sparse(w));
    /// let b = store.add("b", ParamValue::Dense(array![[0.5f32], [1.0]]));
    /// let mut tape = Tape::new(&store);
    /// let x = tape.input(array![[2.0f32], [3.0]]);
    /// let y = tape.linear(w, Some(b), x, Activation::Relu).unwrap();
    /// assert_eq!(tape.value(y), &array![[2.5f32], [0.0]]);
    /// ```
    pub fn linear(
        &mut self,
        weight: ParamId,
        bias: Option<ParamId>,
        input: Var,
        activation: Activation,
    ) -> Result<Var> {
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
        let bias_values = bias.map(|b| self.bias_values(b, rows)).transpose()?;
        let batch = x.ncols();
        let mut y = self.alloc(rows, batch);
        let weight_value = &self.params().get(weight).value;
        let product = self.weight_product(weight_value, batch);
        let epilogue = Epilogue {
            bias: bias_values,
            relu: activation == Activation::Relu,
        };
        product.forward(
            weight_value,
            self.value(input).view(),
            epilogue,
            y.view_mut(),
        );
        let op = Op::Matmul(Matmul {
            weight,
            bias,
            activation,
            input,
            product,
        });
        Ok(self.push_op(y, op, &[input], true))
    }

    /// The values of `bias`, checked to be a dense `rows × 1` column.
    fn bias_values(&self, bias: ParamId, rows: usize) -> Result<&'p [f32]> {
        let param = self.params().get(bias);
        let ParamValue::Dense(b) = &param.value else {
            return Err(Error::shape(
                "add_bias",
                format!("bias `{}` must be dense", param.name),
            ));
        };
        if b.dim() != (rows, 1) {
            return Err(Error::shape(
                "add_bias",
                format!(
                    "bias `{}` is {:?}, expected ({rows}, 1)",
                    param.name,
                    b.dim()
                ),
            ));
        }
        Ok(b.as_slice().expect("parameters are contiguous"))
    }

    /// `input + bias`, the `n × 1` bias broadcast over the batch.
    pub fn add_bias(&mut self, bias: ParamId, input: Var) -> Result<Var> {
        let (rows, cols) = self.value(input).dim();
        let b = self.bias_values(bias, rows)?;
        // One pass, row by row: each row is contiguous and gets one scalar,
        // which vectorises (a broadcasting `x + b` walks a stride-0 operand).
        let mut y = self.alloc(rows, cols);
        let x_rows = slice(self.value(input)).chunks_exact(cols.max(1));
        let y_rows = slice_mut(&mut y).chunks_exact_mut(cols.max(1));
        for ((out, row), &b) in y_rows.zip(x_rows).zip(b) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o = v + b;
            }
        }
        Ok(self.push_op(y, Op::AddBias(AddBias { bias, input }), &[input], true))
    }
}

impl Matmul {
    /// Through the activation (`y` is the op's output) and the bias, then
    /// `dX = Wᵀ·dY`; `dW = dY·Xᵀ`, for a sparse `W` at its stored entries only
    /// (keeping the factors `dY`, `X` of the full product if growth asked).
    pub(crate) fn backward(&self, mut dy: Array2<f32>, y: &Array2<f32>, pass: &mut BackwardPass) {
        let relu_output = (self.activation == Activation::Relu).then(|| y.view());
        let mut db = self.bias.map(|_| pass.alloc(dy.nrows(), 1));
        if relu_output.is_some() || db.is_some() {
            epilogue_backward(dy.view_mut(), relu_output, db.as_mut().map(slice_mut));
        }
        if let (Some(bias), Some(db)) = (self.bias, db) {
            pass.accumulate_param(bias, ParamGrad::Dense(db));
        }
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
    pub(crate) fn backward(&self, mut dy: Array2<f32>, pass: &mut BackwardPass) {
        let mut db = pass.alloc(dy.nrows(), 1);
        epilogue_backward(dy.view_mut(), None, Some(slice_mut(&mut db)));
        pass.accumulate_param(self.bias, ParamGrad::Dense(db));
        pass.accumulate(self.input, dy);
    }
}

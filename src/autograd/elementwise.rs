//! Elementwise ops: ReLU, addition (residual connections), dropout.

use ndarray::Array2;
use rand::RngExt;

use super::tape::{BackwardPass, Op, Tape, Var};
use super::workspace::Workspace;
use crate::error::{Error, Result};
use crate::sparse::{epilogue_backward, relu};

/// `y = max(x, 0)`.
#[derive(Debug)]
pub(crate) struct Relu {
    input: Var,
}

/// `y = a + b`.
#[derive(Debug)]
pub(crate) struct Add {
    a: Var,
    b: Var,
}

/// `y = x · mask`, the mask 0 or `1/(1 − rate)` per value (identity when not training).
#[derive(Debug)]
pub(crate) struct Dropout {
    input: Var,
    mask: Option<Array2<f32>>,
}

impl Tape<'_> {
    /// Rectified linear unit, elementwise.
    pub fn relu(&mut self, input: Var) -> Var {
        let y = self.map_into_new(input, relu);
        self.push_op(y, Op::Relu(Relu { input }), &[input], false)
    }

    /// A new array from the pool holding `f` of every value of `input`.
    fn map_into_new(&mut self, input: Var, f: impl Fn(f32) -> f32) -> Array2<f32> {
        let (rows, cols) = self.value(input).dim();
        let mut y = self.alloc(rows, cols);
        for (out, &v) in slice_mut(&mut y).iter_mut().zip(slice(self.value(input))) {
            *out = f(v);
        }
        y
    }

    /// `a + b`, elementwise (a residual connection).
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let (x, y) = (self.value(a), self.value(b));
        if x.dim() != y.dim() {
            return Err(Error::shape(
                "add",
                format!("{:?} + {:?}", x.dim(), y.dim()),
            ));
        }
        let (rows, cols) = x.dim();
        let mut sum = self.alloc(rows, cols);
        let (x, y) = (slice(self.value(a)), slice(self.value(b)));
        for ((out, p), q) in slice_mut(&mut sum).iter_mut().zip(x).zip(y) {
            *out = p + q;
        }
        Ok(self.push_op(sum, Op::Add(Add { a, b }), &[a, b], false))
    }

    /// Dropout: while training, each value is zeroed with probability `rate`
    /// and the others scaled by `1/(1 − rate)`, so the expected output is the
    /// input; in evaluation mode the input passes unchanged. The mask comes from
    /// the tape's random numbers ([`Tape::set_rng`]).
    pub fn dropout(&mut self, input: Var, rate: f32) -> Result<Var> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::config(
                "dropout",
                format!("rate {rate} is not in [0, 1)"),
            ));
        }
        if !(self.training() && rate > 0.0) {
            let y = self.map_into_new(input, |v| v);
            let op = Dropout { input, mask: None };
            return Ok(self.push_op(y, Op::Dropout(op), &[input], false));
        }
        let (rows, cols) = self.value(input).dim();
        let mut mask = self.alloc(rows, cols);
        let keep = 1.0 / (1.0 - rate);
        let rng = self.rng()?;
        for m in slice_mut(&mut mask) {
            *m = if rng.random::<f32>() < rate {
                0.0
            } else {
                keep
            };
        }
        let mut y = self.alloc(rows, cols);
        let x = slice(self.value(input));
        for ((out, &v), &m) in slice_mut(&mut y).iter_mut().zip(x).zip(slice(&mask)) {
            *out = v * m;
        }
        let op = Dropout {
            input,
            mask: Some(mask),
        };
        Ok(self.push_op(y, Op::Dropout(op), &[input], false))
    }
}

impl Relu {
    /// The gradient passes where the output is positive. Reusing `dy`'s buffer
    /// for `dx` avoids an allocation; `y > 0` is the same test as `x > 0`.
    pub(crate) fn backward(&self, mut dy: Array2<f32>, y: &Array2<f32>, pass: &mut BackwardPass) {
        epilogue_backward(dy.view_mut(), Some(y.view()), None);
        pass.accumulate(self.input, dy);
    }
}

impl Dropout {
    /// Returns the mask's buffer to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        if let Some(mask) = self.mask {
            workspace.give(mask);
        }
    }
}

impl Add {
    /// Both summands get the output's gradient.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let copy = pass.pooled_copy(&dy);
        pass.accumulate(self.a, copy);
        pass.accumulate(self.b, dy);
    }
}

impl Dropout {
    /// The gradient passes through the same mask.
    pub(crate) fn backward(&self, mut dy: Array2<f32>, pass: &mut BackwardPass) {
        if let Some(mask) = &self.mask {
            for (g, m) in slice_mut(&mut dy).iter_mut().zip(slice(mask)) {
                *g *= m;
            }
        }
        pass.accumulate(self.input, dy);
    }
}

/// A tape value as a slice (the tape keeps values in standard layout).
pub(crate) fn slice(a: &Array2<f32>) -> &[f32] {
    a.as_slice().expect("tape values are contiguous")
}

/// A gradient as a mutable slice.
pub(crate) fn slice_mut(a: &mut Array2<f32>) -> &mut [f32] {
    a.as_slice_mut().expect("gradients are contiguous")
}

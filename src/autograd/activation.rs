//! Elementwise activations.

use ndarray::Array2;

use super::tape::{BackwardPass, Op, Tape, Var};

/// `y = max(x, 0)`.
#[derive(Debug)]
pub(crate) struct Relu {
    input: Var,
}

impl Tape<'_> {
    /// Rectified linear unit, elementwise.
    pub fn relu(&mut self, input: Var) -> Var {
        let x = self.value(input);
        let values = x
            .as_slice()
            .expect("tape values are contiguous")
            .iter()
            .map(|&v| v.max(0.0))
            .collect();
        let y = Array2::from_shape_vec(x.dim(), values).expect("same shape as x");
        self.push_op(y, Op::Relu(Relu { input }), &[input], false)
    }
}

impl Relu {
    /// The gradient passes where the output is positive. Reusing `dy`'s buffer
    /// for `dx` avoids an allocation; `y > 0` is the same test as `x > 0`.
    pub(crate) fn backward(&self, mut dy: Array2<f32>, y: &Array2<f32>, pass: &mut BackwardPass) {
        let outputs = y.as_slice().expect("tape values are contiguous");
        let grads = dy.as_slice_mut().expect("gradients are contiguous");
        for (g, &out) in grads.iter_mut().zip(outputs) {
            *g = if out > 0.0 { *g } else { 0.0 };
        }
        pass.accumulate(self.input, dy);
    }
}

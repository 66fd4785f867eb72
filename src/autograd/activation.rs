//! Elementwise activations.

use ndarray::{Array2, Zip};

use super::tape::{BackwardPass, Op, Tape, Var};

/// `y = max(x, 0)`.
#[derive(Debug)]
pub(crate) struct Relu {
    input: Var,
}

impl Tape<'_> {
    /// Rectified linear unit, elementwise.
    pub fn relu(&mut self, input: Var) -> Var {
        let y = self.value(input).mapv(|x| x.max(0.0));
        self.push_op(y, Op::Relu(Relu { input }), &[input], false)
    }
}

impl Relu {
    /// The gradient passes where the output is positive. Reusing `dy`'s buffer
    /// for `dx` avoids an allocation; `y > 0` is the same test as `x > 0`.
    pub(crate) fn backward(&self, mut dy: Array2<f32>, y: &Array2<f32>, pass: &mut BackwardPass) {
        Zip::from(&mut dy)
            .and(y)
            .for_each(|g, &out| *g = if out > 0.0 { *g } else { 0.0 });
        pass.accumulate(self.input, dy);
    }
}

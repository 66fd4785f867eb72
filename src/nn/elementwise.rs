//! Layers that act on every value alone: ReLU and dropout.

use super::{ActivationShape, Layer};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};

/// `max(x, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relu;

/// Zeroes each value with probability `rate` while training ([`Tape::dropout`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    rate: f32,
}

impl Dropout {
    /// Dropout with `rate` in `[0, 1)`.
    pub fn new(rate: f32) -> Result<Dropout> {
        if (0.0..1.0).contains(&rate) {
            Ok(Dropout { rate })
        } else {
            Err(Error::config(
                "dropout",
                format!("rate {rate} is not in [0, 1)"),
            ))
        }
    }
}

impl Layer for Relu {
    fn name(&self) -> String {
        "relu".into()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        Ok(input)
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        Ok(tape.relu(x))
    }
}

impl Layer for Dropout {
    fn name(&self) -> String {
        format!("dropout({})", self.rate)
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        Ok(input)
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        tape.dropout(x, self.rate)
    }
}

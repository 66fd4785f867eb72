//! The fully connected layer, with a sparse or a dense weight and an
//! optional activation computed in the same op (see [`Tape::linear`]).

use super::builder::ParamBuilder;
use super::{ActivationShape, Layer};
use crate::autograd::{Activation, Tape, Var};
use crate::error::Result;
use crate::params::ParamId;

/// `y = act(W·x + b)` with `W` (`out × in`) sparse or dense, `b` dense and
/// `act` the identity unless [`Linear::with_activation`] says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    name: String,
    inputs: usize,
    outputs: usize,
    activation: Activation,
    /// The weight matrix, `out × in`.
    pub weight: ParamId,
    /// The bias, an `out × 1` column.
    pub bias: ParamId,
}

impl Linear {
    /// Creates `{name}.weight` (stored as the builder decides) and `{name}.bias`.
    /// The bias is uniform in `±1/√inputs`, as PyTorch's `Linear` draws it.
    pub fn new(
        builder: &mut ParamBuilder,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Linear> {
        let weight = builder.weight(format!("{name}.weight"), &[outputs, inputs])?;
        let bias = builder.bias(format!("{name}.bias"), outputs, inputs);
        Ok(Linear {
            name: name.into(),
            inputs,
            outputs,
            activation: Activation::Identity,
            weight,
            bias,
        })
    }

    /// The layer followed by `activation`, in one op: a ReLU here gives the
    /// same values as a [`super::Relu`] layer after it, one pass over the
    /// output cheaper each way.
    pub fn with_activation(self, activation: Activation) -> Linear {
        Linear { activation, ..self }
    }
}

impl Layer for Linear {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        match input {
            ActivationShape::Features(n) if n == self.inputs => {
                Ok(ActivationShape::Features(self.outputs))
            }
            other => Err(format!("takes {} features, gets {other}", self.inputs)),
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        tape.linear(self.weight, Some(self.bias), x, self.activation)
    }

    fn weights(&self) -> Vec<ParamId> {
        vec![self.weight]
    }
}

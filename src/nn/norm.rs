//! Batch normalisation, over the channels of images or the features of vectors.

use super::builder::ParamBuilder;
use super::{ActivationShape, Layer};
use crate::autograd::{BatchNormParams, Tape, Var};
use crate::error::Result;

/// Normalises every channel (or feature) with the batch's statistics while
/// training and with running statistics in evaluation ([`Tape::batch_norm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchNorm {
    name: String,
    channels: usize,
    /// γ, β and the running statistics.
    pub params: BatchNormParams,
}

impl BatchNorm {
    /// Creates `{name}.weight` (γ = 1), `{name}.bias` (β = 0) and the
    /// non-trainable `{name}.running_mean` (0) and `{name}.running_var` (1),
    /// PyTorch's names and starting values.
    pub fn new(builder: &mut ParamBuilder, name: &str, channels: usize) -> BatchNorm {
        let params = BatchNormParams {
            gamma: builder.constant(format!("{name}.weight"), channels, 1.0),
            beta: builder.constant(format!("{name}.bias"), channels, 0.0),
            running_mean: builder.state(format!("{name}.running_mean"), channels, 0.0),
            running_var: builder.state(format!("{name}.running_var"), channels, 1.0),
        };
        BatchNorm {
            name: name.into(),
            channels,
            params,
        }
    }
}

impl Layer for BatchNorm {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        let channels = match input {
            ActivationShape::Features(n) => n,
            ActivationShape::Image(image) => image.channels,
        };
        if channels == self.channels {
            Ok(input)
        } else {
            Err(format!(
                "normalises {} channels, gets {input}",
                self.channels
            ))
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        tape.batch_norm(x, &self.params)
    }

    fn mixes_samples(&self) -> bool {
        true
    }
}

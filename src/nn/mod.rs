//! Layers and models.

pub mod init;
pub mod linear;
pub mod mlp;

pub use init::WeightInit;
pub use linear::{Linear, WeightKind};
pub use mlp::{LENET_300_100, Mlp};

use crate::autograd::{Tape, Var};
use crate::error::Result;

/// A network: maps a batch (`features × batch`) to logits (`classes × batch`).
pub trait Model {
    /// Records the forward pass on `tape`.
    fn forward(&self, tape: &mut Tape, input: Var) -> Result<Var>;
}

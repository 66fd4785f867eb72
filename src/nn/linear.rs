//! The fully connected layer, with a sparse or a dense weight.

use ndarray::Array2;
use rand::{Rng, RngExt};

use super::init::WeightInit;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::params::{ParamId, ParamStore, ParamValue};
use crate::sparse::SparseMatrix;

/// `y = W·x + b` with `W` (`out × in`) sparse or dense and `b` dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// The weight matrix, `out × in`.
    pub weight: ParamId,
    /// The bias, an `out × 1` column.
    pub bias: ParamId,
}

/// Whether a layer's weight is stored sparse, and how many entries it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Every entry stored (a dense ndarray).
    Dense,
    /// Exactly `nnz` entries stored, in CSR form.
    Sparse {
        /// The number of stored weights.
        nnz: usize,
    },
}

impl Linear {
    /// Creates `{name}.weight` and `{name}.bias` in `store`.
    ///
    /// Weights and bias are uniform in `[−bound, bound]`, the bound from
    /// `init`; the bias uses the dense fan-in bound, as PyTorch's `Linear`.
    /// A sparse weight is drawn position by position: no dense matrix exists.
    pub fn new<R: Rng + ?Sized>(
        store: &mut ParamStore,
        name: &str,
        (inputs, outputs): (usize, usize),
        kind: WeightKind,
        init: WeightInit,
        rng: &mut R,
    ) -> Result<Linear> {
        let weight = match kind {
            WeightKind::Dense => {
                let bound = init.bound(inputs, 1.0);
                ParamValue::Dense(Array2::from_shape_simple_fn((outputs, inputs), || {
                    rng.random_range(-bound..=bound)
                }))
            }
            WeightKind::Sparse { nnz } => {
                let density = nnz as f64 / (inputs * outputs) as f64;
                let bound = init.bound(inputs, density);
                ParamValue::Sparse(SparseMatrix::random(outputs, inputs, nnz, rng, |rng| {
                    rng.random_range(-bound..=bound)
                })?)
            }
        };
        let bias_bound = WeightInit::Reference.bound(inputs, 1.0);
        let bias = Array2::from_shape_simple_fn((outputs, 1), || {
            rng.random_range(-bias_bound..=bias_bound)
        });
        Ok(Linear {
            weight: store.add(format!("{name}.weight"), weight),
            bias: store.add(format!("{name}.bias"), ParamValue::Dense(bias)),
        })
    }

    /// `W·x + b` on the tape.
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let wx = tape.matmul(self.weight, x)?;
        tape.add_bias(self.bias, wx)
    }
}

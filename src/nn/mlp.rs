//! Multi-layer perceptrons, LeNet-300-100 among them.

use rand::Rng;

use super::Model;
use super::init::WeightInit;
use super::linear::{Linear, WeightKind};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::sparsity::LayerShape;

/// Fully connected layers with ReLU between them (none after the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    layers: Vec<Linear>,
}

/// LeNet-300-100's layer widths: 784 inputs, hidden 300 and 100, 10 classes.
pub const LENET_300_100: [usize; 4] = [784, 300, 100, 10];

impl Mlp {
    /// Layers `fc1, fc2, …` mapping `widths[i]` to `widths[i + 1]`, with one
    /// [`WeightKind`] per layer.
    pub fn new<R: Rng + ?Sized>(
        store: &mut ParamStore,
        widths: &[usize],
        kinds: &[WeightKind],
        init: WeightInit,
        rng: &mut R,
    ) -> Result<Mlp> {
        if widths.len() < 2 || widths.contains(&0) {
            return Err(Error::config(
                "widths",
                format!("an MLP needs at least two non-zero widths, got {widths:?}"),
            ));
        }
        if kinds.len() != widths.len() - 1 {
            return Err(Error::config(
                "widths",
                format!(
                    "{} layers but {} weight kinds",
                    widths.len() - 1,
                    kinds.len()
                ),
            ));
        }
        let layers = widths
            .windows(2)
            .zip(kinds)
            .enumerate()
            .map(|(i, (pair, &kind))| {
                Linear::new(
                    store,
                    &format!("fc{}", i + 1),
                    (pair[0], pair[1]),
                    kind,
                    init,
                    rng,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }

    /// The weight matrices an MLP of `widths` has, named as [`Mlp::new`] names
    /// them, for deciding their sizes before building it.
    pub fn weight_shapes(widths: &[usize]) -> Vec<LayerShape> {
        widths
            .windows(2)
            .enumerate()
            .map(|(i, pair)| LayerShape {
                name: format!("{}.weight", layer_name(i)),
                dims: vec![pair[1], pair[0]],
            })
            .collect()
    }

    /// The layers, input first.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }
}

/// `fc1`, `fc2`, … for layer 0, 1, …
fn layer_name(index: usize) -> String {
    format!("fc{}", index + 1)
}

impl Model for Mlp {
    fn forward(&self, tape: &mut Tape, input: Var) -> Result<Var> {
        let mut x = input;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(tape, x)?;
            if i + 1 < self.layers.len() {
                x = tape.relu(x);
            }
        }
        Ok(x)
    }
}

//! Redistribution rules: how the pruned weights are shared among layers.

use super::rules::{LayerView, Redistribution};

/// Scores a layer by the mean `|momentum|` of its stored weights.
///
/// Momentum is a smoothed gradient: a layer whose weights keep being pushed
/// hard is one where more weights would reduce the loss most. This is the
/// paper's "momentum redistribution".
#[derive(Debug, Clone, Copy, Default)]
pub struct MomentumRedistribution;

impl Redistribution for MomentumRedistribution {
    fn score(&self, layer: &LayerView) -> f64 {
        if layer.momentum.is_empty() {
            return 0.0;
        }
        let sum: f64 = layer.momentum.iter().map(|m| m.abs() as f64).sum();
        sum / layer.momentum.len() as f64
    }
}

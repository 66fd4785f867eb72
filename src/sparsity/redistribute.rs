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
        mean_magnitude(layer.momentum)
    }
}

/// Scores a layer by the mean `|w|` of its stored weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct MagnitudeRedistribution;

impl Redistribution for MagnitudeRedistribution {
    fn score(&self, layer: &LayerView) -> f64 {
        mean_magnitude(layer.weights.values())
    }
}

/// Scores a layer by its number of non-zero weights: regrowth in proportion
/// to each layer's current size.
#[derive(Debug, Clone, Copy, Default)]
pub struct NonzeroRedistribution;

impl Redistribution for NonzeroRedistribution {
    fn score(&self, layer: &LayerView) -> f64 {
        layer.weights.values().iter().filter(|&&w| w != 0.0).count() as f64
    }
}

/// No redistribution: every layer regrows exactly what it lost, so each
/// keeps its initial size (SET, RigL).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRedistribution;

impl Redistribution for NoRedistribution {
    fn score(&self, _: &LayerView) -> f64 {
        1.0
    }

    fn keeps_layer_counts(&self) -> bool {
        true
    }
}

fn mean_magnitude(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().map(|v| v.abs() as f64).sum::<f64>() / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::SparseMatrix;
    use ndarray::array;

    #[test]
    fn scores_follow_their_definitions() {
        let w = SparseMatrix::from_dense(array![[1.0, -3.0, 0.0], [0.0, 2.0, 0.0]].view());
        let momentum = [0.5, -0.1, 0.3];
        let layer = LayerView {
            name: "w",
            weights: &w,
            momentum: &momentum,
            dense_momentum: None,
            gradient: &[],
        };
        assert!((MomentumRedistribution.score(&layer) - 0.3).abs() < 1e-6);
        assert!((MagnitudeRedistribution.score(&layer) - 2.0).abs() < 1e-9);
        assert_eq!(NonzeroRedistribution.score(&layer), 3.0);
        assert!(NoRedistribution.keeps_layer_counts());
        assert!(!MomentumRedistribution.keeps_layer_counts());
    }
}

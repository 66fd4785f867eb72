//! Growth rules: where new weights appear.

use rand::rngs::ChaCha8Rng;

use super::prune::smallest_by;
use super::rules::{GrowthRule, LayerView, MomentumWindow, Vacancies};

/// Regrows the free positions with the largest momentum `|m|` (the paper's
/// sparse momentum): where the gradient has pointed consistently, a weight
/// would reduce the loss fastest.
///
/// The momentum of a missing weight is an exponential average of its gradient
/// `dY·Xᵀ`, which a sparse layer never computes. Since momentum forgets
/// quickly (0.9⁴⁴ < 1 %), averaging over the last `W` steps before an update
/// gives the same ranking as a dense momentum buffer up to `β^W`: see
/// `MomentumWindow` and the `windowed_growth_matches_exact_dense_momentum` test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MomentumGrowth {
    /// How much gradient history to keep for missing weights.
    pub window: MomentumWindow,
}

impl MomentumGrowth {
    /// The shortest window over which momentum `beta` forgets all but 1 %.
    pub fn default_window_steps(beta: f32) -> usize {
        if beta <= 0.0 {
            return 1;
        }
        (0.01f64.ln() / (beta as f64).ln()).ceil().max(1.0) as usize
    }
}

impl GrowthRule for MomentumGrowth {
    fn momentum_window(&self) -> Option<MomentumWindow> {
        Some(self.window)
    }

    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        _rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let momentum = layer
            .dense_momentum
            .expect("the controller provides the dense momentum this rule asked for");
        let mut candidates = Vec::with_capacity(vacancies.count());
        vacancies.for_each(|r, c| candidates.push((r, c, momentum[(r, c)].abs())));
        // Largest |m| first: select the smallest under the reversed order.
        smallest_by(candidates.len(), count, |a, b| {
            candidates[b].2.total_cmp(&candidates[a].2)
        })
        .into_iter()
        .map(|i| (candidates[i].0, candidates[i].1))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::SparseMatrix;
    use ndarray::array;
    use rand::SeedableRng;

    #[test]
    fn grows_where_missing_momentum_is_largest() {
        let w = SparseMatrix::from_dense(array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]].view());
        let dense = array![[9.0, -5.0, 0.1], [4.0, 9.0, -6.0]];
        let layer = LayerView {
            name: "w",
            weights: &w,
            momentum: &[0.0, 0.0],
            dense_momentum: Some(dense.view()),
        };
        let rule = MomentumGrowth {
            window: MomentumWindow::EveryStep,
        };
        let removed = [false, false];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grown = rule.select(&layer, &Vacancies::new(&w, &removed), 2, &mut rng);
        // Stored (0,0) and (1,1) are not candidates despite |m| = 9.
        assert_eq!(grown, vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn default_window_forgets_all_but_one_percent() {
        let w = MomentumGrowth::default_window_steps(0.9);
        assert_eq!(w, 44);
        assert!(0.9f64.powi(w as i32) < 0.01 && 0.9f64.powi(w as i32 - 1) >= 0.01);
    }
}

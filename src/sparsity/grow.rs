//! Growth rules: where new weights appear.

use std::collections::HashSet;

use ndarray::{Array2, s};
use rand::RngExt;
use rand::rngs::ChaCha8Rng;

use super::prune::smallest_by;
use super::rules::{GrowthRule, GrowthSignal, LayerView, MomentumWindow, Vacancies};
use crate::dense::gemm;

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
    fn signal(&self) -> GrowthSignal {
        GrowthSignal::DenseMomentum(self.window)
    }

    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        _: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let momentum = layer
            .dense_momentum
            .expect("the controller provides the dense momentum this rule asked for");
        let mut best = BestCandidates::new(count);
        for r in 0..layer.weights.rows() {
            vacancies.for_each_in_row(r, |c| best.offer(momentum[(r, c)].abs(), r, c));
        }
        best.into_positions()
    }
}

/// Regrows the free positions with the largest gradient `|dY·Xᵀ|` of the
/// update's last step (RigL, Evci et al., 2020).
///
/// The dense gradient is computed 32 rows at a time and only the best
/// candidates are kept, so memory stays `O(32 · cols + count)`: no
/// `rows × cols` array is ever formed.
#[derive(Debug, Clone, Copy, Default)]
pub struct GradientGrowth;

/// Rows of the dense gradient computed at once by [`GradientGrowth`].
const GRADIENT_TILE_ROWS: usize = 32;

impl GrowthRule for GradientGrowth {
    fn signal(&self) -> GrowthSignal {
        GrowthSignal::Gradient
    }

    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        _: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let (rows, cols) = layer.weights.shape();
        let mut tile = Array2::zeros((GRADIENT_TILE_ROWS, cols));
        let mut best = BestCandidates::new(count);
        for first in (0..rows).step_by(GRADIENT_TILE_ROWS) {
            let last = (first + GRADIENT_TILE_ROWS).min(rows);
            let mut tile = tile.slice_mut(s![..last - first, ..]);
            tile.fill(0.0);
            for f in layer.gradient {
                let dy = f.output_grad.slice(s![first..last, ..]);
                gemm(1.0, dy, f.input.t(), 1.0, tile.view_mut());
            }
            for r in first..last {
                vacancies.for_each_in_row(r, |c| best.offer(tile[(r - first, c)].abs(), r, c));
            }
        }
        best.into_positions()
    }
}

/// Regrows uniformly at random among the free positions (SET).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomGrowth;

impl GrowthRule for RandomGrowth {
    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let (rows, cols) = layer.weights.shape();
        let free = vacancies.count();
        let mut chosen = Vec::with_capacity(count);
        if 2 * count <= free {
            // Mostly free: draw positions and reject taken ones (expected < 2 draws each).
            let mut seen = HashSet::with_capacity(count);
            while chosen.len() < count {
                let p = rng.random_range(0..rows * cols);
                let (r, c) = (p / cols, p % cols);
                if vacancies.is_free(r, c) && seen.insert(p) {
                    chosen.push((r, c));
                }
            }
        } else {
            let mut all = Vec::with_capacity(free);
            vacancies.for_each(|r, c| all.push((r, c)));
            chosen.extend(
                rand::seq::index::sample(rng, all.len(), count)
                    .into_iter()
                    .map(|i| all[i]),
            );
        }
        chosen.sort_unstable();
        chosen
    }
}

/// The `capacity` best-scoring positions seen so far (highest score first,
/// ties to the lower position), in bounded memory: when the pool holds twice
/// what is needed it is cut back with a selection, not a sort. After a cut,
/// the worst candidate kept is a bar: `capacity` candidates beat it, so an
/// offer that does not is dropped at once (most offers, once the pool has
/// seen a representative sample).
struct BestCandidates {
    capacity: usize,
    pool: Vec<(f32, usize, usize)>,
    bar: Option<(f32, usize, usize)>,
}

/// The candidates' ranking: higher score first, then lower position.
fn rank_order(a: &(f32, usize, usize), b: &(f32, usize, usize)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)))
}

/// Whether candidate `a` ranks before `b`.
fn ranks_before(a: &(f32, usize, usize), b: &(f32, usize, usize)) -> bool {
    rank_order(a, b).is_lt()
}

impl BestCandidates {
    fn new(capacity: usize) -> Self {
        BestCandidates {
            capacity,
            pool: Vec::with_capacity(2 * capacity + 1),
            bar: None,
        }
    }

    fn offer(&mut self, score: f32, row: usize, col: usize) {
        let candidate = (score, row, col);
        if self.capacity == 0 || self.bar.is_some_and(|bar| !ranks_before(&candidate, &bar)) {
            return;
        }
        self.pool.push(candidate);
        if self.pool.len() >= 2 * self.capacity.max(1024) {
            self.keep_best();
        }
    }

    fn keep_best(&mut self) {
        let pool = &self.pool;
        let keep = smallest_by(pool.len(), self.capacity, |a, b| {
            rank_order(&pool[a], &pool[b])
        });
        self.pool = keep.into_iter().map(|i| self.pool[i]).collect();
        if self.pool.len() == self.capacity {
            self.bar = self
                .pool
                .iter()
                .copied()
                .reduce(|worst, c| if ranks_before(&worst, &c) { c } else { worst });
        }
    }

    fn into_positions(mut self) -> Vec<(usize, usize)> {
        self.keep_best();
        let mut positions: Vec<(usize, usize)> =
            self.pool.into_iter().map(|(_, r, c)| (r, c)).collect();
        positions.sort_unstable();
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_candidates_match_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Scores from a few values, so ties (broken by position) are common.
        let offers: Vec<(f32, usize, usize)> = (0..20_000)
            .map(|i| (rng.random_range(0..50) as f32, i / 100, i % 100))
            .collect();
        for capacity in [0, 5, 300, 1500, 25_000] {
            let mut best = BestCandidates::new(capacity);
            for &(score, r, c) in &offers {
                best.offer(score, r, c);
            }
            let mut sorted = offers.clone();
            sorted.sort_by(rank_order);
            let mut expected: Vec<(usize, usize)> = sorted
                .iter()
                .take(capacity)
                .map(|&(_, r, c)| (r, c))
                .collect();
            expected.sort_unstable();
            assert_eq!(best.into_positions(), expected, "capacity {capacity}");
        }
    }
    use crate::autograd::GradientFactors;
    use crate::sparse::SparseMatrix;
    use ndarray::array;
    use rand::SeedableRng;

    fn view<'a>(w: &'a SparseMatrix) -> LayerView<'a> {
        LayerView {
            name: "w",
            weights: w,
            momentum: &[],
            dense_momentum: None,
            gradient: &[],
        }
    }

    #[test]
    fn momentum_growth_picks_the_largest_missing_momentum() {
        let w = SparseMatrix::from_dense(array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]].view());
        let dense = array![[9.0, -5.0, 0.1], [4.0, 9.0, -6.0]];
        let layer = LayerView {
            dense_momentum: Some(dense.view()),
            ..view(&w)
        };
        let rule = MomentumGrowth {
            window: MomentumWindow::EveryStep,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grown = rule.select(&layer, &Vacancies::new(&w, &[false, false]), 2, &mut rng);
        // Stored (0,0) and (1,1) are not candidates despite |m| = 9.
        assert_eq!(grown, vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn gradient_growth_picks_the_largest_missing_gradient() {
        // dY·Xᵀ with dY = [[1], [2]], X = [[3], [-1], [0.5]] → [[3, -1, 0.5], [6, -2, 1]].
        let w = SparseMatrix::from_dense(array![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]].view());
        let factors = [GradientFactors {
            output_grad: array![[1.0], [2.0]],
            input: array![[3.0], [-1.0], [0.5]],
        }];
        let layer = LayerView {
            gradient: &factors,
            ..view(&w)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grown = GradientGrowth.select(&layer, &Vacancies::new(&w, &[false]), 2, &mut rng);
        // (1,0) has the largest |g| = 6 but is stored; next are 3 at (0,0) and 2 at (1,1).
        assert_eq!(grown, vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn gradient_growth_handles_more_rows_than_a_tile() {
        let rows = 3 * GRADIENT_TILE_ROWS + 5;
        let w = SparseMatrix::zeros(rows, 2);
        let dy = Array2::from_shape_fn((rows, 1), |(r, _)| r as f32);
        let factors = [GradientFactors {
            output_grad: dy,
            input: array![[1.0], [-0.5]],
        }];
        let layer = LayerView {
            gradient: &factors,
            ..view(&w)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grown = GradientGrowth.select(&layer, &Vacancies::new(&w, &[]), 3, &mut rng);
        assert_eq!(grown, vec![(rows - 3, 0), (rows - 2, 0), (rows - 1, 0)]);
    }

    #[test]
    fn random_growth_picks_distinct_free_positions() {
        let w = SparseMatrix::from_dense(array![[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]].view());
        let removed = [true, false, false];
        let vacancies = Vacancies::new(&w, &removed);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for count in [0, 1, 3, 6] {
            let grown = RandomGrowth.select(&view(&w), &vacancies, count, &mut rng);
            assert_eq!(grown.len(), count);
            let mut unique = grown.clone();
            unique.dedup();
            assert_eq!(unique.len(), count, "distinct");
            assert!(
                grown.iter().all(|&(r, c)| vacancies.is_free(r, c)),
                "free: {grown:?}"
            );
        }
    }

    #[test]
    fn default_window_forgets_all_but_one_percent() {
        let w = MomentumGrowth::default_window_steps(0.9);
        assert_eq!(w, 44);
        assert!(0.9f64.powi(w as i32) < 0.01 && 0.9f64.powi(w as i32 - 1) >= 0.01);
    }
}

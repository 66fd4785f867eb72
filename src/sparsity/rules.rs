//! The three decisions of a mask update, as traits.
//!
//! A sparse-learning method is a choice of one rule per decision:
//!
//! | decision | trait | sparse momentum | SET | RigL |
//! |---|---|---|---|---|
//! | which weights die | [`PruneRule`] | [`MagnitudePrune`] | [`SignedMagnitudePrune`] | [`MagnitudePrune`] |
//! | how many each layer regrows | [`Redistribution`] | [`MomentumRedistribution`] | [`NoRedistribution`] | [`NoRedistribution`] |
//! | where they regrow | [`GrowthRule`] | [`MomentumGrowth`] | [`RandomGrowth`] | [`GradientGrowth`] |
//!
//! A new rule is a struct and one method; see `examples/custom_growth_rule.rs`.
//!
//! [`MagnitudePrune`]: super::MagnitudePrune
//! [`SignedMagnitudePrune`]: super::SignedMagnitudePrune
//! [`MomentumRedistribution`]: super::MomentumRedistribution
//! [`NoRedistribution`]: super::NoRedistribution
//! [`MomentumGrowth`]: super::MomentumGrowth
//! [`RandomGrowth`]: super::RandomGrowth
//! [`GradientGrowth`]: super::GradientGrowth

use ndarray::ArrayView2;
use rand::rngs::ChaCha8Rng;

use crate::autograd::GradientFactors;
use crate::sparse::SparseMatrix;

/// What a rule may look at for one sparse layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    /// The parameter's name, e.g. `fc1.weight`.
    pub name: &'a str,
    /// The layer's weights.
    pub weights: &'a SparseMatrix,
    /// The optimizer's momentum of each stored weight, aligned with `weights.values()`.
    pub momentum: &'a [f32],
    /// The momentum of *every* position, stored or missing (`rows × cols`), if
    /// the growth rule asked for it ([`GrowthSignal::DenseMomentum`]).
    pub dense_momentum: Option<ArrayView2<'a, f32>>,
    /// The factors of the last step's full gradient `dY·Xᵀ`, if the growth
    /// rule asked for them ([`GrowthSignal::Gradient`]); empty otherwise.
    pub gradient: &'a [GradientFactors],
}

/// The positions of a layer that are free for growth: missing before the
/// update, or just pruned.
#[derive(Debug, Clone, Copy)]
pub struct Vacancies<'a> {
    weights: &'a SparseMatrix,
    removed: &'a [bool],
}

impl<'a> Vacancies<'a> {
    /// The vacancies of `weights` once the entries flagged in `removed`
    /// (aligned with the values) are gone.
    pub fn new(weights: &'a SparseMatrix, removed: &'a [bool]) -> Self {
        assert_eq!(
            removed.len(),
            weights.nnz(),
            "one removal flag per stored entry"
        );
        Vacancies { weights, removed }
    }

    /// How many positions are free.
    pub fn count(&self) -> usize {
        let (rows, cols) = self.weights.shape();
        rows * cols - self.weights.nnz() + self.removed.iter().filter(|&&r| r).count()
    }

    /// Whether `(row, col)` is free.
    pub fn is_free(&self, row: usize, col: usize) -> bool {
        self.weights
            .position(row, col)
            .is_none_or(|k| self.removed[k])
    }

    /// Calls `f(row, col)` for every free position, row by row, columns ascending.
    pub fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        for r in 0..self.weights.rows() {
            self.for_each_in_row(r, |c| f(r, c));
        }
    }

    /// The free columns of row `row`, ascending.
    pub fn columns_in_row(&self, row: usize) -> Vec<usize> {
        let mut columns = Vec::new();
        self.for_each_in_row(row, |c| columns.push(c));
        columns
    }

    /// Calls `f(col)` for every free position of row `row`, columns ascending.
    pub fn for_each_in_row(&self, row: usize, mut f: impl FnMut(usize)) {
        let first = self.weights.indptr()[row];
        let (stored, _) = self.weights.row(row);
        let mut next = stored.iter().enumerate().peekable();
        for c in 0..self.weights.cols() {
            match next.peek() {
                Some(&(i, &sc)) if sc == c => {
                    next.next();
                    if self.removed[first + i] {
                        f(c);
                    }
                }
                _ => f(c),
            }
        }
    }
}

/// Chooses which stored weights of a layer to remove.
pub trait PruneRule: Send + Sync {
    /// Exactly `count` distinct value positions (indices into
    /// `layer.weights.values()`); `count` never exceeds the layer's nnz.
    fn select(&self, layer: &LayerView, count: usize) -> Vec<usize>;

    /// The removals of every layer at once, `counts[i]` of layer `i` in all.
    /// Per-layer rules keep this default; a rule that compares weights across
    /// layers (one global threshold) overrides it and may move counts between
    /// layers, as long as the total is `Σ counts`.
    fn select_all(&self, layers: &[LayerView], counts: &[usize]) -> Vec<Vec<usize>> {
        layers
            .iter()
            .zip(counts)
            .map(|(layer, &count)| self.select(layer, count))
            .collect()
    }
}

/// Scores layers; each regrows a share of the pruned weights proportional to its score.
pub trait Redistribution: Send + Sync {
    /// A non-negative score; a layer with no stored weights may score 0.
    fn score(&self, layer: &LayerView) -> f64;

    /// True for "no redistribution": every layer regrows exactly what it
    /// lost, and scores are ignored.
    fn keeps_layer_counts(&self) -> bool {
        false
    }
}

/// How much history of missing weights' gradients a growth rule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MomentumWindow {
    /// Accumulate the dense momentum over the last `steps` steps before each update.
    LastSteps(usize),
    /// Keep the dense momentum of every position at every step (slow, exact).
    EveryStep,
}

/// What a growth rule reads about the positions that are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrowthSignal {
    /// Nothing (random growth, or rules that only look at the stored weights).
    #[default]
    None,
    /// The SGD momentum of every position ([`LayerView::dense_momentum`]).
    DenseMomentum(MomentumWindow),
    /// The full gradient of the update's last step, as factors
    /// ([`LayerView::gradient`]).
    Gradient,
}

/// Chooses where a layer regrows weights.
pub trait GrowthRule: Send + Sync {
    /// What this rule reads; the controller collects it before each update.
    fn signal(&self) -> GrowthSignal {
        GrowthSignal::None
    }

    /// Exactly `count` distinct free positions `(row, col)`; `count` never
    /// exceeds `vacancies.count()`.
    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn vacancies_are_missing_or_removed_positions() {
        let w = SparseMatrix::from_dense(array![[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]].view());
        let removed = [false, true, false];
        let v = Vacancies::new(&w, &removed);
        let mut free = Vec::new();
        v.for_each(|r, c| free.push((r, c)));
        assert_eq!(free, vec![(0, 1), (0, 2), (1, 0), (1, 2)]);
        assert_eq!(v.count(), 4);
        assert!(v.is_free(0, 2) && !v.is_free(0, 0) && !v.is_free(1, 1));
    }
}

//! Pruning rules.

use std::cmp::Ordering;

use super::rules::{LayerView, PruneRule};

/// Removes the weights of smallest magnitude `|w|` in each layer: they change
/// the layer's output least (ties go to the earlier position, so the choice is
/// deterministic). Sparse momentum's and RigL's rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct MagnitudePrune;

impl PruneRule for MagnitudePrune {
    fn select(&self, layer: &LayerView, count: usize) -> Vec<usize> {
        let values = layer.weights.values();
        smallest_by(values.len(), count, |a, b| {
            values[a].abs().total_cmp(&values[b].abs())
        })
    }
}

/// Removes the weights of smallest magnitude over *all* layers together: one
/// threshold, so a layer of small weights loses more than its share. The
/// total removed is the sum of the per-layer counts, exactly.
///
/// A layer can lose every weight; it then regrows only as much as the
/// redistribution rule gives it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalMagnitudePrune;

impl PruneRule for GlobalMagnitudePrune {
    fn select(&self, layer: &LayerView, count: usize) -> Vec<usize> {
        MagnitudePrune.select(layer, count)
    }

    fn select_all(&self, layers: &[LayerView], counts: &[usize]) -> Vec<Vec<usize>> {
        // Every stored weight of every layer as (layer, position).
        let all: Vec<(usize, usize)> = layers
            .iter()
            .enumerate()
            .flat_map(|(l, layer)| (0..layer.weights.nnz()).map(move |k| (l, k)))
            .collect();
        let magnitude = |(l, k): (usize, usize)| layers[l].weights.values()[k].abs();
        let total: usize = counts.iter().sum();
        let mut removals = vec![Vec::new(); layers.len()];
        for i in smallest_by(all.len(), total, |a, b| {
            magnitude(all[a]).total_cmp(&magnitude(all[b]))
        }) {
            let (l, k) = all[i];
            removals[l].push(k);
        }
        removals
    }
}

/// SET's rule (Mocanu et al., 2018): half of the removals are the smallest
/// positive weights, half the largest negative ones — the weights closest to
/// zero on each side. If one side has too few weights, the other gives the
/// rest. Zero counts as positive.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedMagnitudePrune;

impl PruneRule for SignedMagnitudePrune {
    fn select(&self, layer: &LayerView, count: usize) -> Vec<usize> {
        let values = layer.weights.values();
        let (positive, negative): (Vec<usize>, Vec<usize>) =
            (0..values.len()).partition(|&k| values[k] >= 0.0);
        let wanted_positive = count.div_ceil(2).min(positive.len());
        let from_negative = (count - wanted_positive).min(negative.len());
        let from_positive = (count - from_negative).min(positive.len());
        // Closest to zero first: ascending values above zero, descending below.
        let mut chosen: Vec<usize> = smallest_by(positive.len(), from_positive, |a, b| {
            values[positive[a]].total_cmp(&values[positive[b]])
        })
        .into_iter()
        .map(|i| positive[i])
        .collect();
        chosen.extend(
            smallest_by(negative.len(), from_negative, |a, b| {
                values[negative[b]].total_cmp(&values[negative[a]])
            })
            .into_iter()
            .map(|i| negative[i]),
        );
        chosen.sort_unstable();
        chosen
    }
}

/// The `count` positions of `0..len` that come first under `order` (ties by
/// position), in ascending position order. O(len) with a selection, not a sort.
pub(crate) fn smallest_by(
    len: usize,
    count: usize,
    order: impl Fn(usize, usize) -> Ordering,
) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..len).collect();
    let total_order = |&a: &usize, &b: &usize| order(a, b).then(a.cmp(&b));
    if count < len {
        positions.select_nth_unstable_by(count, total_order);
        positions.truncate(count);
    }
    positions.sort_unstable();
    positions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::SparseMatrix;
    use ndarray::array;

    fn view<'a>(name: &'a str, w: &'a SparseMatrix) -> LayerView<'a> {
        LayerView {
            name,
            weights: w,
            momentum: &[],
            dense_momentum: None,
            gradient: &[],
        }
    }

    #[test]
    fn magnitude_removes_the_smallest_magnitudes() {
        let w = SparseMatrix::from_dense(array![[0.5, -0.1, 3.0], [-2.0, 0.2, 0.0]].view());
        // values: 0.5, -0.1, 3.0, -2.0, 0.2 → smallest |w|: -0.1 (1), 0.2 (4)
        assert_eq!(MagnitudePrune.select(&view("w", &w), 2), vec![1, 4]);
        assert_eq!(
            MagnitudePrune.select(&view("w", &w), 0),
            Vec::<usize>::new()
        );
        assert_eq!(
            MagnitudePrune.select(&view("w", &w), 5),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn global_magnitude_uses_one_threshold_across_layers() {
        let small = SparseMatrix::from_dense(array![[0.01, 0.02, 0.03]].view());
        let large = SparseMatrix::from_dense(array![[1.0, 2.0, 0.015]].view());
        let layers = [view("small", &small), view("large", &large)];
        // 2 + 2 removals: the four smallest overall are 0.01, 0.015, 0.02, 0.03.
        let removals = GlobalMagnitudePrune.select_all(&layers, &[2, 2]);
        assert_eq!(removals, vec![vec![0, 1, 2], vec![2]]);
    }

    #[test]
    fn signed_magnitude_takes_both_sides_closest_to_zero() {
        let w = SparseMatrix::from_dense(array![[0.3, -0.2, 0.1, -0.9, 0.7, -0.05]].view());
        // 4 removals: positives 0.1 (2), 0.3 (0); negatives -0.05 (5), -0.2 (1).
        assert_eq!(
            SignedMagnitudePrune.select(&view("w", &w), 4),
            vec![0, 1, 2, 5]
        );
        // 3 removals: two positives (ceil), one negative.
        assert_eq!(
            SignedMagnitudePrune.select(&view("w", &w), 3),
            vec![0, 2, 5]
        );
    }

    #[test]
    fn signed_magnitude_borrows_from_the_other_side() {
        let w = SparseMatrix::from_dense(array![[0.3, -0.2, -0.1, -0.9]].view());
        // One positive only: it goes, the other three come from the negatives.
        assert_eq!(
            SignedMagnitudePrune.select(&view("w", &w), 4),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            SignedMagnitudePrune.select(&view("w", &w), 3),
            vec![0, 1, 2]
        );
    }
}

//! Pruning rules.

use std::cmp::Ordering;

use super::rules::{LayerView, PruneRule};

/// Removes the weights of smallest magnitude `|w|`: they change the layer's
/// output least (ties go to the earlier position, so the choice is deterministic).
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

    #[test]
    fn removes_the_smallest_magnitudes() {
        let w = SparseMatrix::from_dense(array![[0.5, -0.1, 3.0], [-2.0, 0.2, 0.0]].view());
        let layer = LayerView {
            name: "w",
            weights: &w,
            momentum: &[0.0; 5],
            dense_momentum: None,
        };
        // values: 0.5, -0.1, 3.0, -2.0, 0.2 → smallest |w|: -0.1 (1), 0.2 (4)
        assert_eq!(MagnitudePrune.select(&layer, 2), vec![1, 4]);
        assert_eq!(MagnitudePrune.select(&layer, 0), Vec::<usize>::new());
        assert_eq!(MagnitudePrune.select(&layer, 5), vec![0, 1, 2, 3, 4]);
    }
}

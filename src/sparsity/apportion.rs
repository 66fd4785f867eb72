//! Splitting a whole number of weights among layers, exactly.
//!
//! Both the initial layer sizes and the regrowth after pruning have the same
//! shape of problem: hand out `total` weights in proportion to some shares,
//! no layer taking more than it has room for, and the parts summing to
//! `total` *exactly*. Rounding each layer's share separately drifts (the
//! reference library corrects the drift approximately, over later updates);
//! the largest-remainder method does not.

/// Splits `total` into integer parts proportional to `shares`, part `i` at most
/// `capacity[i]`.
///
/// Rounds by largest remainder (ties to the lower index). What the caps cut off
/// is handed out again, in proportion, to the parts that still have room. If
/// every part with room has share 0, the rest goes in proportion to the room
/// left. Returns `None` if `total` exceeds the total capacity.
pub fn apportion(shares: &[f64], total: usize, capacity: &[usize]) -> Option<Vec<usize>> {
    assert_eq!(shares.len(), capacity.len(), "one share per capacity");
    if total > capacity.iter().sum() {
        return None;
    }
    let mut parts = vec![0usize; shares.len()];
    let mut remaining = total;
    while remaining > 0 {
        let room: Vec<usize> = capacity.iter().zip(&parts).map(|(c, p)| c - p).collect();
        let mut weights: Vec<f64> = shares
            .iter()
            .zip(&room)
            .map(|(&s, &r)| if r > 0 { s.max(0.0) } else { 0.0 })
            .collect();
        if weights.iter().sum::<f64>() <= 0.0 {
            weights = room.iter().map(|&r| r as f64).collect();
        }
        let quotas = largest_remainder(&weights, remaining);
        let mut given = 0;
        for ((part, quota), room) in parts.iter_mut().zip(quotas).zip(&room) {
            let take = quota.min(*room);
            *part += take;
            given += take;
        }
        // Each round either places everything or fills at least one part.
        remaining -= given;
    }
    Some(parts)
}

/// `total` split in proportion to `weights` (not all zero): floor of each
/// quota, then one more to the largest fractional remainders.
fn largest_remainder(weights: &[f64], total: usize) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let quotas: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut parts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let assigned: usize = parts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(total.saturating_sub(assigned)) {
        parts[i] += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_sum_to_the_total_exactly() {
        let parts = apportion(&[1.0, 1.0, 1.0], 10, &[100, 100, 100]).unwrap();
        assert_eq!(parts.iter().sum::<usize>(), 10);
        assert_eq!(parts, vec![4, 3, 3]);
    }

    #[test]
    fn capped_parts_hand_their_excess_to_the_others() {
        let parts = apportion(&[0.8, 0.1, 0.1], 100, &[20, 1000, 1000]).unwrap();
        assert_eq!(parts, vec![20, 40, 40]);
    }

    #[test]
    fn zero_shares_take_the_rest_when_the_others_are_full() {
        let parts = apportion(&[1.0, 0.0, 0.0], 10, &[4, 3, 9]).unwrap();
        assert_eq!(parts[0], 4);
        assert_eq!(parts.iter().sum::<usize>(), 10);
        assert!(parts[1] <= 3);
    }

    #[test]
    fn more_than_the_capacity_is_refused() {
        assert_eq!(apportion(&[1.0], 5, &[4]), None);
    }

    #[test]
    fn nothing_to_place_gives_zeros() {
        assert_eq!(apportion(&[0.5, 0.5], 0, &[3, 3]), Some(vec![0, 0]));
    }
}

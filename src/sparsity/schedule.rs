//! How the prune rate changes over training, and when masks are updated.

use std::f64::consts::PI;

/// The prune rate `p(t)` after `t` of `T` training steps, starting from `p₀`.
///
/// Early in training the network moves weights around a lot; later it should
/// settle. The reference decays `p` with a cosine towards a small floor.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PruneRateSchedule {
    /// `floor + (p₀ − floor) · (1 + cos(π t/T)) / 2` (the reference, floor 0.005).
    Cosine {
        /// The rate at the end of training.
        floor: f64,
    },
    /// `p₀ + (floor − p₀) · t/T`.
    Linear {
        /// The rate at the end of training.
        floor: f64,
    },
    /// `p₀` throughout.
    Constant,
}

impl PruneRateSchedule {
    /// The reference library's schedule: cosine decay to 0.005.
    pub const REFERENCE: PruneRateSchedule = PruneRateSchedule::Cosine { floor: 0.005 };

    /// The rate after `steps_done` of `total_steps`, starting from `initial`.
    pub fn rate(&self, initial: f64, steps_done: usize, total_steps: usize) -> f64 {
        let progress = if total_steps == 0 {
            1.0
        } else {
            (steps_done as f64 / total_steps as f64).min(1.0)
        };
        match *self {
            PruneRateSchedule::Cosine { floor } => {
                floor + (initial - floor) * (1.0 + (PI * progress).cos()) / 2.0
            }
            PruneRateSchedule::Linear { floor } => initial + (floor - initial) * progress,
            PruneRateSchedule::Constant => initial,
        }
    }
}

/// Which steps end with a mask update: after every `interval` steps, as long as
/// training goes on afterwards (no update after the last step, whose new
/// weights would never be trained), and not from `stop_at` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSchedule {
    /// Steps between updates (an epoch's steps for epoch-end updates).
    pub interval: usize,
    /// Updates happen only after steps `t` with `t + 1 < stop_at`.
    pub stop_at: usize,
}

impl UpdateSchedule {
    /// Whether a mask update follows 0-based step `step`.
    pub fn updates_after(&self, step: usize) -> bool {
        self.interval > 0 && (step + 1).is_multiple_of(self.interval) && step + 1 < self.stop_at
    }

    /// How many steps from `step` (inclusive) to the next update (1 if the
    /// update follows `step`), or `None` if no update comes.
    pub fn steps_until_update(&self, step: usize) -> Option<usize> {
        if self.interval == 0 {
            return None;
        }
        let next_end = (step / self.interval + 1) * self.interval;
        (next_end < self.stop_at).then_some(next_end - step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_goes_from_initial_to_floor_through_the_midpoint() {
        let s = PruneRateSchedule::REFERENCE;
        assert!((s.rate(0.5, 0, 100) - 0.5).abs() < 1e-12);
        assert!((s.rate(0.5, 50, 100) - (0.005 + 0.495 / 2.0)).abs() < 1e-12);
        assert!((s.rate(0.5, 100, 100) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn linear_and_constant_follow_their_closed_forms() {
        let linear = PruneRateSchedule::Linear { floor: 0.1 };
        assert!((linear.rate(0.5, 25, 100) - 0.4).abs() < 1e-12);
        assert_eq!(PruneRateSchedule::Constant.rate(0.3, 77, 100), 0.3);
    }

    #[test]
    fn epoch_end_updates_skip_the_last_epoch() {
        let s = UpdateSchedule {
            interval: 10,
            stop_at: 30,
        };
        let updates: Vec<usize> = (0..30).filter(|&t| s.updates_after(t)).collect();
        assert_eq!(updates, vec![9, 19]);
        assert_eq!(s.steps_until_update(0), Some(10));
        assert_eq!(s.steps_until_update(19), Some(1));
        assert_eq!(s.steps_until_update(20), None);
    }
}

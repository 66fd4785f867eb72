//! Learning-rate schedules.

/// Multiply the learning rate by `gamma` every `step_size` steps.
///
/// The reference library steps PyTorch's `StepLR` *before* each batch, so the
/// first decay already applies to batch `step_size − 1` (0-based); we mirror it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    /// Learning rate of the first step.
    pub initial: f32,
    /// Factor applied at each decay (0.1 in the reference).
    pub gamma: f32,
    /// Steps between decays (25 000 in the reference); 0 disables decay.
    pub step_size: usize,
}

impl StepLr {
    /// The learning rate for 0-based global step `step`.
    pub fn lr(&self, step: usize) -> f32 {
        if self.step_size == 0 {
            return self.initial;
        }
        let decays = (step + 1) / self.step_size;
        self.initial * self.gamma.powi(decays as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_every_step_size_steps_like_torch_steplr() {
        let s = StepLr {
            initial: 0.1,
            gamma: 0.1,
            step_size: 100,
        };
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(98), 0.1);
        assert!((s.lr(99) - 0.01).abs() < 1e-9);
        assert!((s.lr(250) - 0.001).abs() < 1e-9);
    }
}

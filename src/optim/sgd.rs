//! Stochastic gradient descent with momentum, Nesterov and weight decay.

use rayon::prelude::*;

use crate::autograd::{Gradients, PARALLEL_CHUNK};
use crate::error::{Error, Result};
use crate::params::ParamStore;

/// SGD as PyTorch's `torch.optim.SGD` (dampening 0), the reference library's optimizer.
///
/// Per value, with gradient `g`, weight `w` and momentum buffer `m` (see
/// [`crate::params::Param::momentum`]):
///
/// ```text
/// g ← g + weight_decay · w
/// m ← momentum · m + g
/// w ← w − lr · (g + momentum · m)   if nesterov
/// w ← w − lr · m                    otherwise
/// ```
///
/// A sparse weight updates its stored values only; missing weights stay
/// missing, so there is no mask to re-apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    /// Momentum coefficient β (0.9 in the reference).
    pub momentum: f32,
    /// Nesterov's lookahead form of momentum.
    pub nesterov: bool,
    /// L2 penalty coefficient, added to the gradient (5e-4 in the reference).
    pub weight_decay: f32,
}

impl Sgd {
    /// Updates every parameter of `store` with its gradient from `grads`.
    ///
    /// Fails with [`Error::MissingGradient`] if a parameter has none: a
    /// parameter the loss does not use is almost always a wiring mistake.
    pub fn step(&self, store: &mut ParamStore, grads: &Gradients, lr: f32) -> Result<()> {
        for (id, param) in store.iter_mut().filter(|(_, p)| p.trainable) {
            let grad = grads
                .param(id)
                .ok_or_else(|| Error::MissingGradient(param.name.clone()))?
                .values();
            let values = param.value.values_mut();
            assert_eq!(
                grad.len(),
                values.len(),
                "gradient of `{}` is misaligned",
                param.name
            );
            // A big dense layer's update is split across the threads; every
            // value's arithmetic is the same either way.
            (values.par_chunks_mut(PARALLEL_CHUNK))
                .zip(param.momentum.par_chunks_mut(PARALLEL_CHUNK))
                .zip(grad.par_chunks(PARALLEL_CHUNK))
                .for_each(|((values, momentum), grad)| self.update(values, momentum, grad, lr));
        }
        Ok(())
    }

    fn update(&self, values: &mut [f32], momentum: &mut [f32], grad: &[f32], lr: f32) {
        for ((w, m), &g) in values.iter_mut().zip(momentum).zip(grad) {
            let g = g + self.weight_decay * *w;
            *m = self.momentum * *m + g;
            let step = if self.nesterov {
                g + self.momentum * *m
            } else {
                *m
            };
            *w -= lr * step;
        }
    }
}

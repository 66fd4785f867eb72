//! Stochastic gradient descent with momentum, Nesterov and weight decay.

use rayon::prelude::*;

use crate::autograd::Gradients;
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
        self.step_summed(store, std::slice::from_ref(grads), lr)
    }

    /// Updates every parameter of `store` with the sum of its gradients in
    /// `shards`, the gradients of the parts of one batch, each computed on
    /// its own tape. They are added in order, value by value, as the update
    /// reads them: no summed copy is written.
    ///
    /// Fails with [`Error::MissingGradient`], before changing anything, if a
    /// parameter has a gradient in no shard.
    pub fn step_summed(&self, store: &mut ParamStore, shards: &[Gradients], lr: f32) -> Result<()> {
        for (id, param) in store.iter().filter(|(_, p)| p.trainable) {
            let mut grads = shards.iter().filter_map(|g| g.param(id));
            let Some(first) = grads.next() else {
                return Err(Error::MissingGradient(param.name.clone()));
            };
            let len = first.values().len();
            assert!(
                len == param.value.values().len() && grads.all(|g| g.values().len() == len),
                "gradient of `{}` is misaligned",
                param.name
            );
        }
        // Every parameter, in pieces, is one rayon task: even a small
        // network's update is shared by the cores (the weights of
        // LeNet-300-100 at 2 % are 5 000 values, a few microseconds).
        store
            .par_iter_mut()
            .filter(|(_, param)| param.trainable)
            .for_each(|(id, param)| {
                let values = param.value.values_mut();
                (values.par_chunks_mut(UPDATE_PIECE))
                    .zip(param.momentum.par_chunks_mut(UPDATE_PIECE))
                    .enumerate()
                    .for_each(|(piece, (values, momentum))| {
                        let range = piece * UPDATE_PIECE..piece * UPDATE_PIECE + values.len();
                        let grads = shards
                            .iter()
                            .filter_map(|g| g.param(id))
                            .map(|g| &g.values()[range.clone()]);
                        self.update(values, momentum, grads, lr);
                    });
            });
        Ok(())
    }

    /// The update of one piece of a parameter, whose gradient is the sum of
    /// `grads`' (a block at a time, so the loops stay vectorised).
    fn update<'g>(
        &self,
        values: &mut [f32],
        momentum: &mut [f32],
        mut grads: impl Iterator<Item = &'g [f32]> + Clone,
        lr: f32,
    ) {
        let first = grads.next().expect("checked in step_summed");
        if grads.clone().next().is_none() {
            return self.update_with(values, momentum, first, lr);
        }
        const BLOCK: usize = 256;
        let mut sum = [0.0f32; BLOCK];
        for (block, (values, momentum)) in values
            .chunks_mut(BLOCK)
            .zip(momentum.chunks_mut(BLOCK))
            .enumerate()
        {
            let range = block * BLOCK..block * BLOCK + values.len();
            let sum = &mut sum[..values.len()];
            sum.copy_from_slice(&first[range.clone()]);
            for part in grads.clone() {
                sum.iter_mut()
                    .zip(&part[range.clone()])
                    .for_each(|(s, g)| *s += g);
            }
            self.update_with(values, momentum, sum, lr);
        }
    }

    /// The update of `values` with gradient `grad`.
    fn update_with(&self, values: &mut [f32], momentum: &mut [f32], grad: &[f32], lr: f32) {
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

/// Values per task of an update: big enough to be worth a rayon task, small
/// enough that a layer of a few thousand values splits.
const UPDATE_PIECE: usize = 1024;

//! Softmax cross-entropy, the classification loss.

use ndarray::Array2;

use super::tape::{BackwardPass, Op, Tape, Var};
use super::workspace::Workspace;
use crate::error::{Error, Result};

/// Mean over the batch of `−log softmax(logits)[label]`.
#[derive(Debug)]
pub(crate) struct SoftmaxCrossEntropy {
    logits: Var,
    /// The gradient per unit of upstream gradient,
    /// `(softmax(logits) − onehot(labels)) / batch`, `classes × batch`:
    /// computed in the forward pass, where the probabilities are at hand.
    unit_grad: Array2<f32>,
}

impl Tape<'_> {
    /// Softmax cross-entropy of `logits` (`classes × batch`) against one label
    /// per column, averaged over the batch; a `1 × 1` value.
    ///
    /// Numerically stable: each column is shifted by its maximum before `exp`,
    /// and the loss is computed as `log Σ exp(z − max) − (z_label − max)`, so
    /// large logits neither overflow nor lose the small probabilities.
    /// The loops run along the rows (the batch), which are contiguous.
    pub fn softmax_cross_entropy(&mut self, logits: Var, labels: &[usize]) -> Result<Var> {
        let z = self.value(logits);
        let (classes, batch) = z.dim();
        if labels.len() != batch || batch == 0 {
            return Err(Error::shape(
                "softmax_cross_entropy",
                format!("{batch} columns of logits but {} labels", labels.len()),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::shape(
                "softmax_cross_entropy",
                format!("label {bad} but only {classes} classes"),
            ));
        }
        // Scratch from the pool: the column maxima, then the sums of exps.
        let mut max = self.workspace().vec(batch);
        let mut sums = self.workspace().vec(batch);
        let mut unit_grad = self.alloc(classes, batch);
        let z = self
            .value(logits)
            .as_slice()
            .expect("tape values are contiguous");
        let row = |c: usize| &z[c * batch..(c + 1) * batch];
        max.fill(f32::NEG_INFINITY);
        for c in 0..classes {
            for (m, &v) in max.iter_mut().zip(row(c)) {
                *m = m.max(v);
            }
        }
        sums.fill(0.0);
        let exps = unit_grad.as_slice_mut().expect("contiguous");
        for (c, exps) in exps.chunks_exact_mut(batch).enumerate() {
            for (((e, s), &v), &m) in exps.iter_mut().zip(sums.iter_mut()).zip(row(c)).zip(&max) {
                *e = (v - m).exp();
                *s += *e;
            }
        }
        let mut total = 0.0f64;
        for (j, &label) in labels.iter().enumerate() {
            total += sums[j].ln() as f64 - (row(label)[j] - max[j]) as f64;
        }
        // softmax − onehot, over the batch.
        let per_sample = 1.0 / batch as f32;
        for exps in exps.chunks_exact_mut(batch) {
            for (e, s) in exps.iter_mut().zip(&sums) {
                *e = *e / s * per_sample;
            }
        }
        for (j, &label) in labels.iter().enumerate() {
            unit_grad[(label, j)] -= per_sample;
        }
        self.workspace().give_vec(max);
        self.workspace().give_vec(sums);
        let mut loss = self.alloc(1, 1);
        loss[(0, 0)] = (total / batch as f64) as f32;
        let op = SoftmaxCrossEntropy { logits, unit_grad };
        Ok(self.push_op(loss, Op::SoftmaxCrossEntropy(op), &[logits], false))
    }
}

impl SoftmaxCrossEntropy {
    /// `d loss / d z = (softmax(z) − onehot(label)) / batch`, times the upstream scalar.
    pub(crate) fn backward(&self, upstream: Array2<f32>, pass: &mut BackwardPass) {
        let scale = upstream[(0, 0)];
        pass.recycle(upstream);
        let (classes, batch) = self.unit_grad.dim();
        let mut dz = pass.alloc(classes, batch);
        dz.zip_mut_with(&self.unit_grad, |d, &g| *d = g * scale);
        pass.accumulate(self.logits, dz);
    }

    /// Returns the kept gradient to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        workspace.give(self.unit_grad);
    }
}

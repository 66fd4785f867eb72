//! Softmax cross-entropy, the classification loss.

use ndarray::{Array2, Axis};

use super::tape::{BackwardPass, Op, Tape, Var};
use crate::error::{Error, Result};

/// Mean over the batch of `−log softmax(logits)[label]`.
#[derive(Debug)]
pub(crate) struct SoftmaxCrossEntropy {
    logits: Var,
    /// `softmax(logits)`, `classes × batch`, kept for the backward pass.
    probabilities: Array2<f32>,
    labels: Vec<usize>,
}

impl Tape<'_> {
    /// Softmax cross-entropy of `logits` (`classes × batch`) against one label
    /// per column, averaged over the batch; a `1 × 1` value.
    ///
    /// Numerically stable: each column is shifted by its maximum before `exp`,
    /// and the loss is computed as `log Σ exp(z − max) − (z_label − max)`, so
    /// large logits neither overflow nor lose the small probabilities.
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
        let mut probabilities = z.clone();
        let mut total = 0.0f64;
        for (mut column, &label) in probabilities.axis_iter_mut(Axis(1)).zip(labels) {
            let max = column.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let label_logit = column[label] - max;
            column.mapv_inplace(|v| (v - max).exp());
            let sum = column.sum();
            total += sum.ln() as f64 - label_logit as f64;
            column /= sum;
        }
        let loss = Array2::from_elem((1, 1), (total / batch as f64) as f32);
        let op = SoftmaxCrossEntropy {
            logits,
            probabilities,
            labels: labels.to_vec(),
        };
        Ok(self.push_op(loss, Op::SoftmaxCrossEntropy(op), &[logits], false))
    }
}

impl SoftmaxCrossEntropy {
    /// `d loss / d z = (softmax(z) − onehot(label)) / batch`, times the upstream scalar.
    pub(crate) fn backward(&self, upstream: &Array2<f32>, pass: &mut BackwardPass) {
        let batch = self.labels.len();
        let scale = upstream[(0, 0)] / batch as f32;
        let mut dz = self.probabilities.clone();
        for (mut column, &label) in dz.axis_iter_mut(Axis(1)).zip(&self.labels) {
            column[label] -= 1.0;
            column *= scale;
        }
        pass.accumulate(self.logits, dz);
    }
}

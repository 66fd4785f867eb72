//! Softmax cross-entropy, the classification loss.

use ndarray::Array2;

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
        let rows: Vec<&[f32]> = z
            .as_slice()
            .expect("tape values are contiguous")
            .chunks_exact(batch)
            .collect();
        let mut max = vec![f32::NEG_INFINITY; batch];
        for row in &rows {
            for (m, &v) in max.iter_mut().zip(*row) {
                *m = m.max(v);
            }
        }
        let mut exps = Vec::with_capacity(classes * batch);
        let mut sums = vec![0.0f32; batch];
        for row in &rows {
            for ((s, &v), &m) in sums.iter_mut().zip(*row).zip(&max) {
                let e = (v - m).exp();
                exps.push(e);
                *s += e;
            }
        }
        let mut total = 0.0f64;
        for (j, &label) in labels.iter().enumerate() {
            total += sums[j].ln() as f64 - (rows[label][j] - max[j]) as f64;
        }
        for (e, s) in exps.iter_mut().zip(sums.iter().cycle()) {
            *e /= s;
        }
        let probabilities =
            Array2::from_shape_vec((classes, batch), exps).expect("classes · batch values");
        let mut loss = self.alloc(1, 1);
        loss[(0, 0)] = (total / batch as f64) as f32;
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
    pub(crate) fn backward(&self, upstream: Array2<f32>, pass: &mut BackwardPass) {
        let batch = self.labels.len();
        let scale = upstream[(0, 0)] / batch as f32;
        pass.recycle(upstream);
        let (classes, batch) = self.probabilities.dim();
        let mut dz = pass.alloc(classes, batch);
        dz.zip_mut_with(&self.probabilities, |d, &p| *d = p * scale);
        for (j, &label) in self.labels.iter().enumerate() {
            dz[(label, j)] -= scale;
        }
        pass.accumulate(self.logits, dz);
    }
}

//! Batch normalisation over the columns of each row (a channel or a feature).

use ndarray::Array2;
use rayon::prelude::*;

use super::elementwise::slice;
use super::tape::{BackwardPass, Op, ParamGrad, Tape, Var};
use super::workspace::Workspace;
use crate::dense::sum;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamValue};

/// The parameters of a batch-normalisation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNormParams {
    /// Scale γ, `rows × 1`, trainable.
    pub gamma: ParamId,
    /// Shift β, `rows × 1`, trainable.
    pub beta: ParamId,
    /// Running mean, `rows × 1`, not trainable.
    pub running_mean: ParamId,
    /// Running (unbiased) variance, `rows × 1`, not trainable.
    pub running_var: ParamId,
}

/// How far the running statistics move towards each batch's (PyTorch's default).
pub const RUNNING_MOMENTUM: f32 = 0.1;
/// Added to the variance before the square root.
pub const EPSILON: f32 = 1e-5;

/// `y = γ · (x − mean) / √(var + ε) + β`, per row.
#[derive(Debug)]
pub(crate) struct BatchNorm {
    input: Var,
    gamma: ParamId,
    beta: ParamId,
    /// `(x − mean) / √(var + ε)`, kept for the backward pass.
    normalized: Array2<f32>,
    inv_std: Vec<f32>,
    /// Training normalises with the batch's statistics, whose gradient flows too.
    batch_statistics: bool,
}

impl Tape<'_> {
    /// Batch normalisation of `input` (`rows × columns`; for images the rows
    /// are channels and the columns every pixel of every sample).
    ///
    /// While training it uses the batch's mean and variance and records new
    /// running statistics ([`Tape::take_state_updates`]); in evaluation mode it
    /// uses the running statistics. Each use records an update from the
    /// statistics the pass started with, so a layer applied twice in one pass
    /// keeps only its last use's update (PyTorch would apply both in turn).
    pub fn batch_norm(&mut self, input: Var, bn: &BatchNormParams) -> Result<Var> {
        let x = self.value(input);
        let (rows, n) = x.dim();
        let column = |id: ParamId| -> Result<&[f32]> {
            let param = self.params().get(id);
            match &param.value {
                ParamValue::Dense(a) if a.dim() == (rows, 1) => {
                    Ok(a.as_slice().expect("contiguous"))
                }
                _ => Err(Error::shape(
                    "batch_norm",
                    format!(
                        "`{}` is {:?}, expected ({rows}, 1)",
                        param.name,
                        param.value.shape()
                    ),
                )),
            }
        };
        let (gamma, beta) = (column(bn.gamma)?, column(bn.beta)?);
        let (running_mean, running_var) = (column(bn.running_mean)?, column(bn.running_var)?);
        if n == 0 {
            return Err(Error::shape("batch_norm", "an empty batch"));
        }
        let training = self.training();
        let stats: Vec<(f32, f32)> = slice(x)
            .chunks_exact(n)
            .enumerate()
            .map(|(r, row)| {
                if training {
                    let mean = sum(row) / n as f32;
                    let squares: Vec<f32> = row.iter().map(|v| (v - mean) * (v - mean)).collect();
                    (mean, sum(&squares) / n as f32)
                } else {
                    (running_mean[r], running_var[r])
                }
            })
            .collect();
        let inv_std: Vec<f32> = stats
            .iter()
            .map(|&(_, var)| 1.0 / (var + EPSILON).sqrt())
            .collect();
        let mut normalized = self.alloc(rows, n);
        let mut y = self.alloc(rows, n);
        let x = self.value(input);
        normalized
            .as_slice_mut()
            .expect("contiguous")
            .par_chunks_mut(n)
            .zip(y.as_slice_mut().expect("contiguous").par_chunks_mut(n))
            .zip(slice(x).par_chunks(n))
            .enumerate()
            .for_each(|(r, ((xhat, out), row))| {
                for ((h, o), &v) in xhat.iter_mut().zip(out.iter_mut()).zip(row) {
                    *h = (v - stats[r].0) * inv_std[r];
                    *o = gamma[r] * *h + beta[r];
                }
            });
        if training {
            let unbiased = if n > 1 {
                n as f32 / (n - 1) as f32
            } else {
                1.0
            };
            let mean = Array2::from_shape_fn((rows, 1), |(r, _)| {
                (1.0 - RUNNING_MOMENTUM) * running_mean[r] + RUNNING_MOMENTUM * stats[r].0
            });
            let var = Array2::from_shape_fn((rows, 1), |(r, _)| {
                (1.0 - RUNNING_MOMENTUM) * running_var[r] + RUNNING_MOMENTUM * stats[r].1 * unbiased
            });
            self.update_state(bn.running_mean, mean);
            self.update_state(bn.running_var, var);
        }
        let op = BatchNorm {
            input,
            gamma: bn.gamma,
            beta: bn.beta,
            normalized,
            inv_std,
            batch_statistics: training,
        };
        Ok(self.push_op(y, Op::BatchNorm(op), &[input], true))
    }
}

impl BatchNorm {
    /// `dβ = Σ dy`, `dγ = Σ dy · x̂`; with batch statistics
    /// `dx = γ/(N·σ) · (N·dy − Σ dy − x̂ · Σ dy·x̂)`, else `dx = γ/σ · dy`.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let (rows, n) = dy.dim();
        let ParamValue::Dense(gamma) = pass.param(self.gamma) else {
            unreachable!("checked in the forward pass")
        };
        let gamma = gamma.as_slice().expect("contiguous").to_vec();
        let mut d_beta = Array2::zeros((rows, 1));
        let mut d_gamma = Array2::zeros((rows, 1));
        let mut dx = pass.alloc(rows, n);
        for (r, ((grads, xhat), out)) in slice(&dy)
            .chunks_exact(n)
            .zip(slice(&self.normalized).chunks_exact(n))
            .zip(dx.as_slice_mut().expect("contiguous").chunks_exact_mut(n))
            .enumerate()
        {
            let sum_dy = sum(grads);
            let products: Vec<f32> = grads.iter().zip(xhat).map(|(g, h)| g * h).collect();
            let sum_dy_xhat = sum(&products);
            d_beta[(r, 0)] = sum_dy;
            d_gamma[(r, 0)] = sum_dy_xhat;
            let scale = gamma[r] * self.inv_std[r];
            for ((o, &g), &h) in out.iter_mut().zip(grads).zip(xhat) {
                *o = if self.batch_statistics {
                    scale / n as f32 * (n as f32 * g - sum_dy - h * sum_dy_xhat)
                } else {
                    scale * g
                };
            }
        }
        pass.accumulate_param(self.beta, ParamGrad::Dense(d_beta));
        pass.accumulate_param(self.gamma, ParamGrad::Dense(d_gamma));
        pass.accumulate(self.input, dx);
        pass.recycle(dy);
    }

    /// Returns the normalised values' buffer to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        workspace.give(self.normalized);
    }
}

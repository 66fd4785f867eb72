//! # sparsetrain
//!
//! Train neural networks that are sparse from the first step to the last.
//!
//! Every sparse layer keeps its weights as a CSR matrix ([`sparse::SparseMatrix`])
//! for its whole life: drawn sparse, multiplied with sparse kernels, pruned and
//! regrown by rebuilding the CSR structure. No dense weight matrix exists for a
//! sparse layer, so a step costs `O(nnz · batch)`, not `O(rows · cols · batch)`.
//! Masks evolve with *sparse momentum* (Dettmers & Zettlemoyer, 2019): prune the
//! smallest weights, give each layer a share of them back in proportion to its
//! mean momentum, and regrow where missing weights' momentum is largest.
//!
//! ```no_run
//! use sparsetrain::prelude::*;
//!
//! # fn main() -> sparsetrain::Result<()> {
//! let mnist = Mnist::load("data".as_ref())?;
//! let config = TrainConfig {
//!     epochs: 5,
//!     sparse: Some(SparseSettings { density: 0.02, ..SparseSettings::default() }),
//!     ..TrainConfig::default()
//! };
//! let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
//! let summary = trainer.run(&mut ())?;
//! println!("test error {:.2} %", 100.0 * summary.test_error);
//! # Ok(())
//! # }
//! ```
//!
//! The pieces, one concept per module:
//!
//! | module | what it holds |
//! |---|---|
//! | [`data`] | IDX reader, MNIST-format datasets, normalisation, batching |
//! | [`sparse`] | the CSR matrix and the three training kernels |
//! | [`dense`] | the dense matrix product (matrixmultiply, parallel by rows) |
//! | [`conv`] | convolution as a matrix product: geometry, im2col, col2im |
//! | [`autograd`] | the tape and its ops, forward and backward side by side |
//! | [`params`] | parameters with their optimizer state |
//! | [`nn`] | layers and models |
//! | [`optim`] | SGD and learning-rate schedules |
//! | [`sparsity`] | the sparse-learning controller and its rules |
//! | [`train`] | the training loop |
//! | [`checkpoint`] | saving and resuming runs (safetensors) |
//! | [`runlog`], [`plot`] | a run's metrics and its pictures |
//! | [`stats`] | summaries of repeated runs |
//! | [`mod@bench`] | epoch and kernel timings for the CLI's `bench` command |

#[macro_use]
mod choices;

pub mod aligned;
pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod conv;
pub mod data;
pub mod dense;
pub mod error;
pub mod nn;
pub mod optim;
pub mod params;
pub mod plot;
pub mod runlog;
pub mod sparse;
pub mod sparsity;
pub mod stats;
pub mod train;

pub use error::{Error, Result};

/// The names most programs need.
pub mod prelude {
    pub use crate::autograd::{Gradients, Tape, Var};
    pub use crate::checkpoint::Checkpoint;
    pub use crate::data::{Dataset, Mnist, Splits};
    pub use crate::error::{Error, Result};
    pub use crate::nn::{
        Architecture, Layer, Linear, ParamBuilder, Sequential, WeightInit, WeightKind,
    };
    pub use crate::optim::{Sgd, StepLr};
    pub use crate::params::{ParamId, ParamStore, ParamValue};
    pub use crate::sparse::SparseMatrix;
    pub use crate::sparsity::{Distribution, Method, Rules, SparseLearning, SparseLearningConfig};
    pub use crate::train::{Observer, SparseSettings, TrainConfig, TrainSummary, Trainer};
}

/// Compiles the README's code blocks as doc tests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Reverse-mode automatic differentiation on a tape.
//!
//! [`Tape`] records the forward pass; each op lives in one file with its
//! forward (a method on `Tape`) and its backward side by side:
//!
//! | file | ops |
//! |---|---|
//! | `linear.rs` | [`Tape::matmul`] (sparse or dense weight), [`Tape::add_bias`] |
//! | `conv.rs` | [`Tape::conv2d`] (im2col and a sparse or dense product) |
//! | `pool.rs` | [`Tape::max_pool2d`], [`Tape::global_avg_pool`], [`Tape::flatten`] |
//! | `norm.rs` | [`Tape::batch_norm`] |
//! | `elementwise.rs` | [`Tape::relu`], [`Tape::add`], [`Tape::dropout`] |
//! | `loss.rs` | [`Tape::softmax_cross_entropy`] |
//!
//! Big scratch buffers (im2col) come from a [`Workspace`] that outlives the tape.
//! `weight_product.rs` decides how each use of a weight is multiplied: sgemm
//! for a dense one, the sparse kernels or (above a density threshold) sgemm
//! on a dense copy for a sparse one.

mod conv;
mod elementwise;
mod linear;
mod loss;
mod norm;
mod pool;
mod tape;
mod weight_product;
mod workspace;

pub use linear::Activation;
pub use norm::{BatchNormParams, EPSILON, RUNNING_MOMENTUM};
pub use tape::{GradientFactors, Gradients, ParamGrad, Tape, Var};
pub use weight_product::{DEFAULT_DENSE_KERNELS_ABOVE, DenseKernels};
pub use workspace::Workspace;

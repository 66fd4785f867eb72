//! Reverse-mode automatic differentiation on a tape.
//!
//! [`Tape`] records the forward pass; each op lives in one file with its
//! forward (a method on `Tape`) and its backward side by side:
//!
//! | file | ops |
//! |---|---|
//! | `linear.rs` | [`Tape::matmul`] (sparse or dense weight), [`Tape::add_bias`] |
//! | `activation.rs` | [`Tape::relu`] |
//! | `loss.rs` | [`Tape::softmax_cross_entropy`] |

mod activation;
mod linear;
mod loss;
mod tape;

pub use tape::{GradientFactors, Gradients, ParamGrad, Tape, Var};

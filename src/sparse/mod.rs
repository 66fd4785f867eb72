//! Sparse weights: the CSR matrix type and the kernels that train it.

pub mod kernels;
pub mod matrix;

pub use kernels::{sddmm, spmm, spmm_transposed};
pub use matrix::{ChannelUsage, SparseMatrix, TransposeIndex, ValueOrigins};

//! Sparse weights: the CSR matrix type and the kernels that train it.

pub mod kernels;
pub mod matrix;
mod simd;

pub(crate) use kernels::add_weighted_rows;
pub use kernels::{sddmm, sddmm_using, spmm, spmm_transposed, spmm_transposed_using, spmm_using};
pub use matrix::{ChannelUsage, SparseMatrix, TransposeIndex, ValueOrigins};
pub use simd::InstructionSet;

//! Sparse weights: the CSR matrix type and the kernels that train it.

pub mod kernels;
pub mod matrix;
mod simd;

pub(crate) use kernels::add_weighted_rows;
pub use kernels::{
    Epilogue, epilogue_backward, epilogue_backward_using, relu, sddmm, sddmm_using, spmm,
    spmm_then, spmm_then_using, spmm_transposed, spmm_transposed_using, spmm_using,
};
pub use matrix::{ChannelUsage, SparseMatrix, TransposeIndex, ValueOrigins};
pub use simd::InstructionSet;
pub(crate) use simd::push_off_background;

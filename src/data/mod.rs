//! Data: the IDX file reader, MNIST-format datasets, normalisation and batching.

pub mod dataset;
pub mod idx;
pub mod mnist;

pub use dataset::{Batch, Dataset, Normalization, Splits, epoch_order};
pub use idx::{IdxArray, read_idx};
pub use mnist::Mnist;

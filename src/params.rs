//! Trainable parameters and the store that owns them.
//!
//! A parameter is dense (an ndarray) or sparse (a [`SparseMatrix`]). Either way
//! its trainable numbers are one flat slice, [`ParamValue::values`], and the
//! optimizer's state for it (the momentum buffer) is a `Vec<f32>` aligned with
//! that slice and kept *in the same struct*. When sparse learning rebuilds a
//! sparse weight's structure, it remaps the momentum in the same place, so the
//! two can never fall out of step.
//!
//! Layers hold [`ParamId`]s, not the values: the autograd tape borrows the store
//! immutably for a step, the optimizer then borrows it mutably.

use ndarray::Array2;
use rayon::prelude::*;

use crate::sparse::{ChannelUsage, SparseMatrix};

/// Handle to a parameter in a [`ParamStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) usize);

impl ParamId {
    /// The position of the parameter in its store (creation order).
    pub fn index(self) -> usize {
        self.0
    }
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A dense matrix; a bias is an `n × 1` column so it broadcasts over the batch.
    Dense(Array2<f32>),
    /// A sparse weight matrix; only its stored entries are trainable.
    Sparse(SparseMatrix),
}

impl ParamValue {
    /// The trainable numbers as one slice (a sparse matrix's stored values).
    pub fn values(&self) -> &[f32] {
        match self {
            ParamValue::Dense(a) => a.as_slice().expect("dense parameters are contiguous"),
            ParamValue::Sparse(m) => m.values(),
        }
    }

    /// Mutable access to the trainable numbers.
    pub fn values_mut(&mut self) -> &mut [f32] {
        match self {
            ParamValue::Dense(a) => a.as_slice_mut().expect("dense parameters are contiguous"),
            ParamValue::Sparse(m) => m.values_mut(),
        }
    }

    /// `(rows, cols)` of the full matrix (for a sparse one, including missing entries).
    pub fn shape(&self) -> (usize, usize) {
        match self {
            ParamValue::Dense(a) => a.dim(),
            ParamValue::Sparse(m) => m.shape(),
        }
    }

    /// The sparse matrix, if this parameter is sparse.
    pub fn as_sparse(&self) -> Option<&SparseMatrix> {
        match self {
            ParamValue::Sparse(m) => Some(m),
            ParamValue::Dense(_) => None,
        }
    }
}

/// A named parameter and its optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// A path-like name, e.g. `fc1.weight`.
    pub name: String,
    /// The current value.
    pub value: ParamValue,
    /// The momentum buffer, one entry per trainable value (zeros until the
    /// first optimizer step). Sparse momentum reads it to decide where weights go.
    pub momentum: Vec<f32>,
    /// The weight's dimensions as a network sees them, output first: `[out,
    /// in]` for a fully connected layer, `[out, in, kh, kw]` for a
    /// convolution (stored as `out × (in · kh · kw)`).
    pub dims: Vec<usize>,
    /// False for state the forward pass keeps (batch normalisation's running
    /// statistics): saved in checkpoints, never touched by the optimizer.
    pub trainable: bool,
}

impl Param {
    /// Its output and input channels (neurons, for a fully connected layer):
    /// how many there are, how many filters are empty, how many inputs no
    /// filter reads. A dense weight uses all of them.
    pub fn channel_usage(&self) -> ChannelUsage {
        let group = self.dims.get(2..).map_or(1, |k| k.iter().product());
        match &self.value {
            ParamValue::Sparse(m) => m.channel_usage(group),
            ParamValue::Dense(a) => ChannelUsage {
                outputs: a.nrows(),
                inputs: a.ncols() / group.max(1),
                ..ChannelUsage::default()
            },
        }
    }
}

/// Owns every parameter of a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamStore {
    params: Vec<Param>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a trainable parameter with zero momentum and returns its handle.
    pub fn add(&mut self, name: impl Into<String>, value: ParamValue) -> ParamId {
        let (rows, cols) = value.shape();
        self.add_with_dims(name, value, vec![rows, cols])
    }

    /// Adds a trainable parameter whose matrix stands for a tensor of `dims`
    /// (see [`Param::dims`]).
    pub fn add_with_dims(
        &mut self,
        name: impl Into<String>,
        value: ParamValue,
        dims: Vec<usize>,
    ) -> ParamId {
        let momentum = vec![0.0; value.values().len()];
        self.params.push(Param {
            name: name.into(),
            value,
            momentum,
            dims,
            trainable: true,
        });
        ParamId(self.params.len() - 1)
    }

    /// Adds state that is not trained (see [`Param::trainable`]).
    pub fn add_state(&mut self, name: impl Into<String>, value: Array2<f32>) -> ParamId {
        self.params.push(Param {
            name: name.into(),
            dims: vec![value.nrows(), value.ncols()],
            value: ParamValue::Dense(value),
            momentum: Vec::new(),
            trainable: false,
        });
        ParamId(self.params.len() - 1)
    }

    /// Writes new values of non-trainable state (from [`crate::autograd::Tape::take_state_updates`]).
    pub fn apply_state_updates(&mut self, updates: Vec<(ParamId, Array2<f32>)>) {
        for (id, value) in updates {
            self.params[id.0].value = ParamValue::Dense(value);
        }
    }

    /// The parameter behind `id`.
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    /// Mutable access to the parameter behind `id`.
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }

    /// All parameters with their handles, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    /// Mutable iteration in creation order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Param)> {
        self.params
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (ParamId(i), p))
    }

    /// Mutable iteration, in parallel.
    pub(crate) fn par_iter_mut(
        &mut self,
    ) -> impl IndexedParallelIterator<Item = (ParamId, &mut Param)> {
        self.params
            .par_iter_mut()
            .enumerate()
            .map(|(i, p)| (ParamId(i), p))
    }

    /// The handles of the sparse parameters, in creation order.
    pub fn sparse_ids(&self) -> Vec<ParamId> {
        self.iter()
            .filter(|(_, p)| p.value.as_sparse().is_some())
            .map(|(id, _)| id)
            .collect()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// True if the store holds no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

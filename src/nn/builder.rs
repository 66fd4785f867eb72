//! Creating a network's parameters: how each weight matrix is stored, and its
//! initial values.
//!
//! A network is described once, by the function that builds it (see
//! [`crate::nn::models`]). Sizing sparse layers needs every weight's shape
//! before any weight exists (ERK shares the density by the shapes of all
//! layers), so a network is built twice: first with [`ParamBuilder::measure`],
//! whose weights are empty sparse matrices, only to read the shapes; then for
//! real, with each weight's storage decided ([`ParamBuilder::new`]).

use std::collections::HashMap;

use ndarray::Array2;
use rand::{Rng, RngExt};

use super::init::WeightInit;
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamStore, ParamValue};
use crate::sparse::SparseMatrix;
use crate::sparsity::LayerShape;

/// Whether a layer's weight is stored sparse, and how many entries it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Every entry stored (a dense ndarray).
    Dense,
    /// Exactly `nnz` entries stored, in CSR form.
    Sparse {
        /// The number of stored weights.
        nnz: usize,
    },
}

/// How the builder stores weight matrices.
#[derive(Debug, Clone)]
enum Storage {
    /// Every weight dense.
    Dense,
    /// By name; a weight not named is an error.
    Planned(HashMap<String, WeightKind>),
    /// Every weight an empty sparse matrix: only the shapes matter.
    Measure,
}

/// Adds a network's parameters to a [`ParamStore`], drawing initial values,
/// and records the shape of every weight matrix.
pub struct ParamBuilder<'a> {
    store: &'a mut ParamStore,
    rng: &'a mut dyn Rng,
    init: WeightInit,
    storage: Storage,
    shapes: Vec<LayerShape>,
}

impl<'a> ParamBuilder<'a> {
    /// Stores each weight matrix as `kinds` says (by parameter name, e.g.
    /// `conv1.weight`), drawing values with `init` from `rng`.
    pub fn new(
        store: &'a mut ParamStore,
        kinds: HashMap<String, WeightKind>,
        init: WeightInit,
        rng: &'a mut dyn Rng,
    ) -> Self {
        Self::with_storage(store, Storage::Planned(kinds), init, rng)
    }

    /// Stores every weight matrix dense.
    pub fn dense(store: &'a mut ParamStore, init: WeightInit, rng: &'a mut dyn Rng) -> Self {
        Self::with_storage(store, Storage::Dense, init, rng)
    }

    /// A builder whose weights are empty: build a network with it to learn its
    /// weight shapes ([`ParamBuilder::into_shapes`]), then discard `store`.
    pub fn measure(store: &'a mut ParamStore, rng: &'a mut dyn Rng) -> Self {
        Self::with_storage(store, Storage::Measure, WeightInit::default(), rng)
    }

    fn with_storage(
        store: &'a mut ParamStore,
        storage: Storage,
        init: WeightInit,
        rng: &'a mut dyn Rng,
    ) -> Self {
        ParamBuilder {
            store,
            rng,
            init,
            storage,
            shapes: Vec::new(),
        }
    }

    /// The shapes of the weight matrices created so far, in creation order.
    pub fn into_shapes(self) -> Vec<LayerShape> {
        self.shapes
    }

    /// A weight matrix named `name` with dimensions `dims` (output first:
    /// `[out, in]`, or `[out, in, kh, kw]` for a convolution), stored as a
    /// `dims[0] × (dims[1] · …)` matrix. Values are uniform in `[−b, b]`
    /// with `b` from the builder's [`WeightInit`] for the fan-in `in · kh · kw`;
    /// a sparse weight is drawn position by position, no dense matrix exists.
    pub fn weight(&mut self, name: String, dims: &[usize]) -> Result<ParamId> {
        let (rows, cols) = (dims[0], dims[1..].iter().product::<usize>());
        let kind = match &self.storage {
            Storage::Dense => WeightKind::Dense,
            Storage::Measure => WeightKind::Sparse { nnz: 0 },
            Storage::Planned(kinds) => *kinds.get(&name).ok_or_else(|| Error::Model {
                layer: name.clone(),
                problem: "no storage was planned for this weight".into(),
            })?,
        };
        let value = match kind {
            WeightKind::Dense => {
                let bound = self.init.bound(cols, 1.0);
                let rng = &mut *self.rng;
                ParamValue::Dense(Array2::from_shape_simple_fn((rows, cols), || {
                    rng.random_range(-bound..=bound)
                }))
            }
            WeightKind::Sparse { nnz } => {
                let density = nnz as f64 / (rows * cols).max(1) as f64;
                let bound = self.init.bound(cols, density);
                ParamValue::Sparse(SparseMatrix::random(rows, cols, nnz, self.rng, |rng| {
                    rng.random_range(-bound..=bound)
                })?)
            }
        };
        self.shapes.push(LayerShape {
            name: name.clone(),
            dims: dims.to_vec(),
        });
        Ok(self.store.add_with_dims(name, value, dims.to_vec()))
    }

    /// A bias for `rows` outputs of a layer with `fan_in` inputs per output,
    /// uniform in `±1/√fan_in` as PyTorch draws it.
    pub fn bias(&mut self, name: String, rows: usize, fan_in: usize) -> ParamId {
        let bound = WeightInit::Reference.bound(fan_in, 1.0);
        let rng = &mut *self.rng;
        let bias = Array2::from_shape_simple_fn((rows, 1), || rng.random_range(-bound..=bound));
        self.store.add(name, ParamValue::Dense(bias))
    }

    /// A trainable `rows × 1` column holding `value` everywhere.
    pub fn constant(&mut self, name: String, rows: usize, value: f32) -> ParamId {
        self.store
            .add(name, ParamValue::Dense(Array2::from_elem((rows, 1), value)))
    }

    /// A non-trainable `rows × 1` column (running statistics) holding `value`.
    pub fn state(&mut self, name: String, rows: usize, value: f32) -> ParamId {
        self.store
            .add_state(name, Array2::from_elem((rows, 1), value))
    }
}

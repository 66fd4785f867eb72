//! Checkpoints: a run's whole state in one safetensors file.
//!
//! Every sparse weight is stored as three 1-D tensors in CSR form —
//! `NAME.indptr` and `NAME.indices` (i64) and `NAME.values` (f32) — with
//! `NAME.format = "csr"`, `NAME.shape = "rows,cols"` and `NAME.dims` (the
//! tensor's dimensions, `out,in,kh,kw` for a convolution stored as `out ×
//! (in · kh · kw)`) in the metadata, so
//! SciPy (`csr_matrix((values, indices, indptr), shape)`) and PyTorch
//! (`torch.sparse_csr_tensor(indptr, indices, values, size)`) read it directly
//! (see the README). Dense parameters are `NAME` with their shape. Optimizer
//! state is `NAME.momentum`, aligned with the values. The metadata also holds
//! the run's configuration (JSON), epochs and steps done, the data
//! normalisation, and the sparse-learning controller's random-number state;
//! an open dense-momentum window is stored as tensors under `sparse_learning.`.
//! With all that, [`crate::train::Trainer::restore`] continues a run exactly as
//! if it had never stopped.
//!
//! Writes are atomic: a temporary file is written and synced, then renamed
//! over the checkpoint, so a crash leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::params::{ParamStore, ParamValue};
use crate::sparse::SparseMatrix;

/// The `format` metadata of the checkpoints this version writes. v2 names
/// the network in the configuration (`model`) where v1 had MLP `widths`.
pub const FORMAT: &str = "sparsetrain.checkpoint.v2";

/// A tensor on its way into a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tensor {
    /// 32-bit floats.
    F32(Vec<usize>, Vec<f32>),
    /// 64-bit integers (CSR indices, step positions).
    I64(Vec<usize>, Vec<i64>),
}

/// What goes into a checkpoint: named tensors and string metadata.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    pub(crate) tensors: Vec<(String, Tensor)>,
    pub(crate) metadata: HashMap<String, String>,
}

impl Contents {
    /// Adds every parameter of `store`, with its momentum.
    pub(crate) fn add_params(&mut self, store: &ParamStore) {
        let mut names = Vec::with_capacity(store.len());
        for (_, param) in store.iter() {
            let name = &param.name;
            names.push(name.clone());
            match &param.value {
                ParamValue::Sparse(m) => {
                    let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect();
                    self.tensors.push((
                        format!("{name}.indptr"),
                        Tensor::I64(vec![m.rows() + 1], as_i64(m.indptr())),
                    ));
                    self.tensors.push((
                        format!("{name}.indices"),
                        Tensor::I64(vec![m.nnz()], as_i64(m.indices())),
                    ));
                    self.tensors.push((
                        format!("{name}.values"),
                        Tensor::F32(vec![m.nnz()], m.values().to_vec()),
                    ));
                    self.metadata.insert(format!("{name}.format"), "csr".into());
                }
                ParamValue::Dense(a) => {
                    self.tensors.push((
                        name.clone(),
                        Tensor::F32(vec![a.nrows(), a.ncols()], param.value.values().to_vec()),
                    ));
                    self.metadata
                        .insert(format!("{name}.format"), "dense".into());
                }
            }
            let (rows, cols) = param.value.shape();
            self.metadata
                .insert(format!("{name}.shape"), format!("{rows},{cols}"));
            let dims: Vec<String> = param.dims.iter().map(usize::to_string).collect();
            self.metadata.insert(format!("{name}.dims"), dims.join(","));
            self.tensors.push((
                format!("{name}.momentum"),
                Tensor::F32(vec![param.momentum.len()], param.momentum.clone()),
            ));
        }
        self.metadata.insert("params".into(), names.join(","));
        self.metadata.insert("format".into(), FORMAT.into());
    }

    /// Writes the checkpoint to `path` atomically.
    pub(crate) fn write(self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .into_iter()
            .map(|(name, tensor)| match tensor {
                Tensor::F32(shape, values) => {
                    let mut bytes = vec![0; values.len() * 4];
                    LittleEndian::write_f32_into(&values, &mut bytes);
                    (name, Dtype::F32, shape, bytes)
                }
                Tensor::I64(shape, values) => {
                    let mut bytes = vec![0; values.len() * 8];
                    LittleEndian::write_i64_into(&values, &mut bytes);
                    (name, Dtype::I64, shape, bytes)
                }
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let serialized = safetensors::serialize(views, Some(self.metadata))
            .map_err(|e| bad(path, format!("cannot encode: {e}")))?;
        write_atomically(path, &serialized)
    }
}

/// Replaces `path` with `bytes` so that a reader sees either the old file or
/// the whole new one: write a temporary file beside it, sync it to disk,
/// rename it over `path`, sync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable; not every platform can open a directory.
        if let Ok(dir) = File::open(dir) {
            dir.sync_all().map_err(io)?;
        }
    }
    Ok(())
}

/// A checkpoint read from disk.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads and checks the file's framing and format; tensors are decoded on demand.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            bad(
                path,
                format!("not a readable safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        SafeTensors::deserialize(&bytes).map_err(|e| {
            bad(
                path,
                format!("not a readable safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let checkpoint = Checkpoint {
            path: path.to_path_buf(),
            bytes,
            metadata,
        };
        let format = checkpoint.metadata("format")?;
        if format != FORMAT {
            return Err(bad(
                path,
                format!(
                    "format `{format}` is not `{FORMAT}` (a checkpoint from another version of sparsetrain)"
                ),
            ));
        }
        Ok(checkpoint)
    }

    /// The configuration of the run that wrote it.
    pub fn config(&self) -> Result<crate::train::TrainConfig> {
        serde_json::from_str(self.metadata("config")?).map_err(|e| {
            bad(
                &self.path,
                format!("metadata `config` is not a valid configuration: {e}"),
            )
        })
    }

    /// Epochs the run had done when it wrote this checkpoint.
    pub fn epochs_done(&self) -> Result<usize> {
        self.metadata_number("epochs_done")
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata entry, or an error naming it.
    pub fn metadata(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| bad(&self.path, format!("metadata `{key}` is missing")))
    }

    /// A metadata entry parsed as a number.
    pub(crate) fn metadata_number<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self.metadata(key)?;
        text.parse().map_err(|_| {
            bad(
                &self.path,
                format!("metadata `{key}` = `{text}` is not a number"),
            )
        })
    }

    /// The names of the parameters, in model order.
    pub fn param_names(&self) -> Result<Vec<String>> {
        Ok(self
            .metadata("params")?
            .split(',')
            .map(str::to_string)
            .collect())
    }

    /// `(rows, cols)` of a parameter.
    pub fn param_shape(&self, name: &str) -> Result<(usize, usize)> {
        let text = self.metadata(&format!("{name}.shape"))?;
        let parsed = text
            .split_once(',')
            .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)));
        parsed.ok_or_else(|| {
            bad(
                &self.path,
                format!("`{name}.shape` = `{text}` is not `rows,cols`"),
            )
        })
    }

    /// A parameter's dimensions as the network sees them (`out,in,kh,kw` for
    /// a convolution; see [`crate::params::Param::dims`]); its matrix shape
    /// for checkpoints that do not record them.
    pub fn param_dims(&self, name: &str) -> Result<Vec<usize>> {
        let key = format!("{name}.dims");
        let (rows, cols) = self.param_shape(name)?;
        if !self.metadata.contains_key(&key) {
            return Ok(vec![rows, cols]);
        }
        let text = self.metadata(&key)?;
        let dims: Option<Vec<usize>> = text.split(',').map(|d| d.parse().ok()).collect();
        // The dimensions must lay out the stored matrix: outputs first, the
        // rest (a kernel's channels and offsets, which readers divide by)
        // naming its columns.
        let lays_out = |d: &Vec<usize>| {
            d.len() >= 2
                && d[0] == rows
                && d[2..].iter().all(|&n| n > 0)
                && d[1..].iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)) == Some(cols)
        };
        dims.filter(lays_out).ok_or_else(|| {
            bad(
                &self.path,
                format!("`{key}` = `{text}` does not lay out a {rows} × {cols} parameter"),
            )
        })
    }

    /// Whether a parameter is stored as CSR.
    pub fn param_is_sparse(&self, name: &str) -> Result<bool> {
        match self.metadata(&format!("{name}.format"))? {
            "csr" => Ok(true),
            "dense" => Ok(false),
            other => Err(bad(
                &self.path,
                format!("`{name}.format` = `{other}` is neither csr nor dense"),
            )),
        }
    }

    /// A sparse parameter as a validated CSR matrix.
    pub fn sparse_param(&self, name: &str) -> Result<SparseMatrix> {
        let (rows, cols) = self.param_shape(name)?;
        let indptr = self.indices(&format!("{name}.indptr"))?;
        let indices = self.indices(&format!("{name}.indices"))?;
        let (_, values) = self.f32(&format!("{name}.values"))?;
        SparseMatrix::try_from_csr(rows, cols, indptr, indices, values).map_err(|e| {
            bad(
                &self.path,
                format!("`{name}` is not a valid CSR matrix: {e}"),
            )
        })
    }

    /// A parameter's value and momentum, checked against each other.
    pub(crate) fn param(&self, name: &str) -> Result<(ParamValue, Vec<f32>)> {
        let value = if self.param_is_sparse(name)? {
            ParamValue::Sparse(self.sparse_param(name)?)
        } else {
            let (rows, cols) = self.param_shape(name)?;
            let (shape, values) = self.f32(name)?;
            if shape != [rows, cols] {
                return Err(bad(
                    &self.path,
                    format!("`{name}` has shape {shape:?}, its metadata says {rows}×{cols}"),
                ));
            }
            ParamValue::Dense(
                ndarray::Array2::from_shape_vec((rows, cols), values).expect("shape checked"),
            )
        };
        let (_, momentum) = self.f32(&format!("{name}.momentum"))?;
        if !momentum.is_empty() && momentum.len() != value.values().len() {
            return Err(bad(
                &self.path,
                format!(
                    "`{name}.momentum` has {} values, the parameter {}",
                    momentum.len(),
                    value.values().len()
                ),
            ));
        }
        Ok((value, momentum))
    }

    /// Whether a tensor is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    /// An f32 tensor's shape and values.
    pub(crate) fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let view = self.view(name, Dtype::F32)?;
        let mut values = vec![0.0; view.data().len() / 4];
        LittleEndian::read_f32_into(view.data(), &mut values);
        Ok((view.shape().to_vec(), values))
    }

    /// An i64 tensor of non-negative indices.
    pub(crate) fn indices(&self, name: &str) -> Result<Vec<usize>> {
        let view = self.view(name, Dtype::I64)?;
        let mut values = vec![0i64; view.data().len() / 8];
        LittleEndian::read_i64_into(view.data(), &mut values);
        values
            .into_iter()
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| bad(&self.path, format!("`{name}` holds the negative index {v}")))
            })
            .collect()
    }

    fn view(&self, name: &str, dtype: Dtype) -> Result<TensorView<'_>> {
        let view = self
            .tensors()
            .tensor(name)
            .map_err(|_| bad(&self.path, format!("tensor `{name}` is missing")))?;
        if view.dtype() != dtype {
            return Err(bad(
                &self.path,
                format!("tensor `{name}` is {:?}, expected {dtype:?}", view.dtype()),
            ));
        }
        Ok(view)
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("checked when the file was opened")
    }
}

/// Writes the parameters of `store` from `checkpoint`, matched by name: every
/// parameter of the model must be there with the same shape.
pub(crate) fn restore_params(checkpoint: &Checkpoint, store: &mut ParamStore) -> Result<()> {
    let names = checkpoint.param_names()?;
    let ids: Vec<_> = store.iter().map(|(id, p)| (id, p.name.clone())).collect();
    for (id, name) in ids {
        if !names.contains(&name) {
            return Err(bad(
                checkpoint.path(),
                format!("the model's parameter `{name}` is not in the checkpoint"),
            ));
        }
        let (value, momentum) = checkpoint.param(&name)?;
        let param = store.get_mut(id);
        if value.shape() != param.value.shape()
            || matches!(value, ParamValue::Sparse(_))
                != matches!(param.value, ParamValue::Sparse(_))
        {
            return Err(bad(
                checkpoint.path(),
                format!(
                    "`{name}` does not fit the model: {:?} in the checkpoint, {:?} in the model",
                    value.shape(),
                    param.value.shape()
                ),
            ));
        }
        if param.trainable && momentum.len() != value.values().len() {
            return Err(bad(
                checkpoint.path(),
                format!("`{name}` has no momentum buffer"),
            ));
        }
        param.value = value;
        param.momentum = momentum;
    }
    Ok(())
}

fn bad(path: &Path, problem: String) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        problem,
    }
}

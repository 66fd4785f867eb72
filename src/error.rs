//! The crate's one error type.
//!
//! Every variant carries enough context (a file name, an operation, a layer,
//! an epoch and step) that the message alone tells a user what went wrong and
//! where. Library code returns [`Result`] and never prints; the CLI prints.

use std::path::PathBuf;

/// Everything that can go wrong in sparsetrain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read (missing, unreadable, corrupt gzip stream).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// What the operating system or decoder reported.
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its contents are not what its format promises.
    #[error("{}: {problem}", path.display())]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, in words.
        problem: String,
    },

    /// A data directory lacks a file or the files disagree with each other.
    #[error("dataset in {}: {problem}", dir.display())]
    Dataset {
        /// The directory the dataset was loaded from.
        dir: PathBuf,
        /// What is missing or inconsistent.
        problem: String,
    },

    /// A setting is outside the range where it means something (density 0, batch size 0, ...).
    #[error("invalid setting `{setting}`: {problem}")]
    Config {
        /// The name of the setting, as the CLI spells it.
        setting: &'static str,
        /// Why the value was refused.
        problem: String,
    },

    /// An operation was given arrays whose shapes do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation that checked the shapes.
        op: &'static str,
        /// The shapes involved.
        detail: String,
    },

    /// A sparse structure is not a valid CSR matrix (unsorted, duplicate or out-of-range indices).
    #[error("invalid sparse matrix: {0}")]
    InvalidSparse(String),

    /// A trainable parameter received no gradient, so the optimizer cannot update it.
    #[error("parameter `{0}` got no gradient: it is not used by the loss")]
    MissingGradient(String),

    /// The training loss stopped being a finite number.
    #[error(
        "training diverged: the loss is {value} at epoch {epoch}, step {step} (try a lower --lr)"
    )]
    NonFiniteLoss {
        /// The loss value (NaN or ±infinity).
        value: f32,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
    },

    /// A plot could not be drawn or written.
    #[error("{}: cannot draw the plot: {problem}", path.display())]
    Plot {
        /// The image being written.
        path: PathBuf,
        /// What the drawing library reported.
        problem: String,
    },

    /// A network cannot be built: a layer does not fit what comes before it.
    #[error("model, layer {layer}: {problem}")]
    Model {
        /// The layer's position and name, e.g. `3 (conv2)`.
        layer: String,
        /// Why it does not fit.
        problem: String,
    },
    /// A rule of the sparse-learning controller broke its contract.
    #[error("sparse learning, layer `{layer}`: {problem}")]
    SparseLearning {
        /// The layer being updated.
        layer: String,
        /// What went wrong.
        problem: String,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Config`].
    pub(crate) fn config(setting: &'static str, problem: impl Into<String>) -> Self {
        Error::Config {
            setting,
            problem: problem.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}

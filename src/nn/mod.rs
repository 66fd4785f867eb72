//! Layers and the networks built from them.
//!
//! A [`Layer`] records its forward pass on a tape and says what shape of
//! activation it makes from the one it gets; [`Sequential`] chains layers and
//! checks, when it is built, that every layer fits what comes before it. The
//! layers hold [`ParamId`]s; the values live in a
//! [`ParamStore`](crate::params::ParamStore), created through a
//! [`ParamBuilder`] that decides which weights are sparse.
//!
//! | file | what |
//! |---|---|
//! | `builder.rs` | [`ParamBuilder`], [`WeightKind`] |
//! | `init.rs` | [`WeightInit`] |
//! | `linear.rs` | [`Linear`] |
//! | `conv.rs` | [`Conv2d`], [`ConvShape`] |
//! | `norm.rs` | [`BatchNorm`] |
//! | `reshape.rs` | [`MaxPool2d`], [`GlobalAvgPool`], [`Flatten`] |
//! | `elementwise.rs` | [`Relu`], [`Dropout`] |
//! | `sequential.rs` | [`Sequential`], [`Residual`] |
//! | `models.rs` | LeNet-300-100, LeNet-5-Caffe, VGG, Wide ResNet; [`Architecture`] |

pub mod builder;
pub mod conv;
pub mod elementwise;
pub mod init;
pub mod linear;
pub mod models;
pub mod norm;
pub mod reshape;
pub mod sequential;

pub use builder::{ParamBuilder, WeightKind};
pub use conv::{Conv2d, ConvShape};
pub use elementwise::{Dropout, Relu};
pub use init::WeightInit;
pub use linear::Linear;
pub use models::{Architecture, LENET_300_100};
pub use norm::BatchNorm;
pub use reshape::{Flatten, GlobalAvgPool, MaxPool2d};
pub use sequential::{Residual, Sequential};

use crate::autograd::{Tape, Var};
use crate::conv::ImageShape;
use crate::error::Result;
use crate::params::ParamId;

/// The shape of one sample's activation; the batch is left out.
///
/// Features are stored `features × batch`, images `channels × (batch ·
/// height · width)` (see [`crate::conv`]): either way the batch is inner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ActivationShape {
    /// A vector of this many features.
    Features(usize),
    /// Images.
    Image(ImageShape),
}

impl ActivationShape {
    /// Values per sample.
    pub fn len(&self) -> usize {
        match self {
            ActivationShape::Features(n) => *n,
            ActivationShape::Image(image) => image.len(),
        }
    }

    /// True if a sample has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ActivationShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationShape::Features(n) => write!(f, "{n} features"),
            ActivationShape::Image(s) => {
                write!(f, "{}×{}×{} images", s.channels, s.height, s.width)
            }
        }
    }
}

/// One step of a network.
pub trait Layer: std::fmt::Debug + Send + Sync {
    /// A short name for messages (`conv2`, `relu`).
    fn name(&self) -> String;

    /// The shape this layer makes from `input`, or why it cannot take it.
    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String>;

    /// Records the forward pass of `x`, whose shape is `input` (checked by
    /// [`Layer::output_shape`] when the network was built).
    fn forward(&self, tape: &mut Tape, x: Var, input: ActivationShape) -> Result<Var>;

    /// The weight matrices, in the order they are applied (biases and
    /// normalisation parameters are not weight matrices).
    fn weights(&self) -> Vec<ParamId> {
        Vec::new()
    }

    /// Whether one sample's output depends on the other samples of the
    /// batch (batch normalisation's statistics). Such a network cannot split
    /// a batch into shards that run apart ([`crate::train::TrainConfig::batch_shards`]).
    fn mixes_samples(&self) -> bool {
        false
    }
}

/// The error a layer gives for an input that is not an image.
fn needs_images(input: ActivationShape) -> String {
    format!("needs images, gets {input}")
}

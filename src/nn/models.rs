//! Networks: LeNet-300-100, LeNet-5-Caffe, VGG-style and Wide ResNets.
//!
//! Each is a function that creates its layers through a [`ParamBuilder`], so
//! the same description serves to measure the weight shapes and to build the
//! network with its weights sparse (see [`crate::nn::builder`]).
//! [`Architecture`] names them in a training configuration.

use super::ActivationShape;
use super::builder::ParamBuilder;
use super::conv::{Conv2d, ConvShape};
use super::elementwise::{Dropout, Relu};
use super::linear::Linear;
use super::norm::BatchNorm;
use super::reshape::{Flatten, GlobalAvgPool, MaxPool2d};
use super::sequential::{Residual, Sequential};
use crate::autograd::Activation;
use crate::conv::ImageShape;
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::sparsity::LayerShape;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// LeNet-300-100's layer widths: 784 inputs, hidden 300 and 100, 10 classes.
pub const LENET_300_100: [usize; 4] = [784, 300, 100, 10];

/// A network to train, by name and size. The input shape and the number of
/// classes come from the data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Fully connected layers with ReLU between them; `widths` run from the
    /// inputs (all pixels of an image) to the classes.
    Mlp {
        /// Layer widths, input first (`[784, 300, 100, 10]` is LeNet-300-100).
        widths: Vec<usize>,
    },
    /// LeNet-5 as in Caffe's MNIST example (see [`lenet5`]).
    #[serde(rename = "lenet5")]
    LeNet5,
    /// A VGG-style network (see [`vgg`]).
    Vgg {
        /// Convolution widths per stage; each stage ends with 2×2 max pooling.
        stages: Vec<Vec<usize>>,
        /// Hidden fully connected widths before the classifier.
        hidden: Vec<usize>,
    },
    /// A Wide ResNet (see [`wide_resnet`]).
    WideResNet {
        /// Convolution layers, `6n + 4`.
        depth: usize,
        /// Width multiplier `k`.
        widen: usize,
        /// Dropout between a block's two convolutions.
        dropout: f32,
    },
}

impl Default for Architecture {
    /// LeNet-300-100.
    fn default() -> Self {
        Architecture::Mlp {
            widths: LENET_300_100.to_vec(),
        }
    }
}

impl Architecture {
    /// The initial learning rate the CLI uses for this network unless told
    /// otherwise: the reference library's 0.1, except 0.05 for LeNet-5. At
    /// 0.1, with the default (sparse fan-in) init, the regrown weights' carried
    /// momentum throws LeNet-5's loss back to ~2 after each early mask update
    /// (see the README); at 0.05 every run measured trained without such jumps.
    pub fn default_lr(&self) -> f32 {
        match self {
            Architecture::LeNet5 => 0.05,
            _ => 0.1,
        }
    }

    /// Creates the network for `input` images and `classes` classes.
    pub fn build(
        &self,
        builder: &mut ParamBuilder,
        input: ImageShape,
        classes: usize,
    ) -> Result<Sequential> {
        match self {
            Architecture::Mlp { widths } => mlp(builder, widths),
            Architecture::LeNet5 => lenet5(builder, input, classes),
            Architecture::Vgg { stages, hidden } => vgg(builder, input, stages, hidden, classes),
            Architecture::WideResNet {
                depth,
                widen,
                dropout,
            } => wide_resnet(builder, input, *depth, *widen, *dropout, classes),
        }
    }

    /// The shape of every weight matrix the network has, in creation order,
    /// found by building it with empty weights into a scratch store.
    pub fn weight_shapes(&self, input: ImageShape, classes: usize) -> Result<Vec<LayerShape>> {
        let mut scratch = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut builder = ParamBuilder::measure(&mut scratch, &mut rng);
        self.build(&mut builder, input, classes)?;
        Ok(builder.into_shapes())
    }

    /// A name for people: `LeNet-300-100 (784-300-100-10)`, `LeNet-5-Caffe`.
    pub fn describe(&self) -> String {
        match self {
            Architecture::Mlp { widths } => {
                let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
                let name = if widths.len() == 4 && widths[1..3] == ["300", "100"] {
                    "LeNet-300-100"
                } else {
                    "MLP"
                };
                format!("{name} ({})", widths.join("-"))
            }
            Architecture::LeNet5 => "LeNet-5-Caffe".into(),
            Architecture::Vgg { stages, hidden } => {
                format!("VGG (stages {stages:?}, fc {hidden:?})")
            }
            Architecture::WideResNet { depth, widen, .. } => format!("WRN-{depth}-{widen}"),
        }
    }
}

/// Names as the CLI's `--model` spells them: `lenet300-100`, `lenet5`,
/// `mlp-784-1000-10` (any widths), `wrn-16-2` (Wide ResNet depth 16, width 2).
impl std::str::FromStr for Architecture {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let numbers = |rest: &str| -> Option<Vec<usize>> {
            rest.split('-').map(|n| n.parse().ok()).collect()
        };
        let parsed = match name {
            "lenet300-100" => Some(Architecture::default()),
            "lenet5" => Some(Architecture::LeNet5),
            _ => {
                if let Some(rest) = name.strip_prefix("mlp-") {
                    numbers(rest).map(|widths| Architecture::Mlp { widths })
                } else if let Some(rest) = name.strip_prefix("wrn-") {
                    match numbers(rest).as_deref() {
                        Some(&[depth, widen]) => Some(Architecture::WideResNet {
                            depth,
                            widen,
                            dropout: 0.0,
                        }),
                        _ => None,
                    }
                } else {
                    None
                }
            }
        };
        parsed.ok_or_else(|| {
            Error::config(
                "model",
                format!("unknown model `{name}` (expected lenet300-100, lenet5, mlp-W1-W2-…, or wrn-DEPTH-WIDTH)"),
            )
        })
    }
}

impl std::fmt::Display for Architecture {
    /// The CLI's name: `lenet300-100`, `lenet5`, `mlp-…` and `wrn-D-K` parse
    /// back (a Wide ResNet's dropout is not part of the name); a VGG prints as
    /// `vgg`, which does not, as its stages have no short name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Architecture::Mlp { widths } if widths[..] == LENET_300_100 => {
                f.write_str("lenet300-100")
            }
            Architecture::Mlp { widths } => {
                let widths: Vec<String> = widths.iter().map(usize::to_string).collect();
                write!(f, "mlp-{}", widths.join("-"))
            }
            Architecture::LeNet5 => f.write_str("lenet5"),
            Architecture::Vgg { .. } => f.write_str("vgg"),
            Architecture::WideResNet { depth, widen, .. } => write!(f, "wrn-{depth}-{widen}"),
        }
    }
}

/// Fully connected layers `fc1, fc2, …` mapping `widths[i]` to
/// `widths[i + 1]`, with ReLU between them (none after the last).
pub fn mlp(builder: &mut ParamBuilder, widths: &[usize]) -> Result<Sequential> {
    if widths.len() < 2 || widths.contains(&0) {
        return Err(Error::config(
            "widths",
            format!("an MLP needs at least two non-zero widths, got {widths:?}"),
        ));
    }
    let mut net = Sequential::new("mlp", ActivationShape::Features(widths[0]), Vec::new())?;
    let layers = widths.len() - 1;
    for (i, pair) in widths.windows(2).enumerate() {
        let layer = Linear::new(builder, &format!("fc{}", i + 1), pair[0], pair[1])?;
        // A ReLU after every layer but the output, in the layer's own op.
        net.push(layer.with_activation(hidden_activation(i + 1 < layers)))?;
    }
    Ok(net)
}

/// ReLU for a hidden layer, nothing for the output layer.
fn hidden_activation(hidden: bool) -> Activation {
    if hidden {
        Activation::Relu
    } else {
        Activation::Identity
    }
}

/// LeNet-5 as Caffe's MNIST example and the sparse-learning library define
/// it: `conv1` 20 filters 5×5, ReLU, 2×2 max pool, `conv2` 50 filters 5×5,
/// ReLU, 2×2 max pool, `fc3` 800→500, ReLU, `fc4` 500→`classes` (800 for
/// 28×28 inputs: 50 channels of 4×4).
pub fn lenet5(builder: &mut ParamBuilder, input: ImageShape, classes: usize) -> Result<Sequential> {
    let pool = MaxPool2d { size: 2, stride: 2 };
    let mut net = Sequential::new("lenet5", ActivationShape::Image(input), Vec::new())?;
    net.push(Conv2d::new(
        builder,
        "conv1",
        ConvShape::new(input.channels, 20, 5),
        true,
    )?)?;
    net.push(Relu)?;
    net.push(pool)?;
    net.push(Conv2d::new(
        builder,
        "conv2",
        ConvShape::new(20, 50, 5),
        true,
    )?)?;
    net.push(Relu)?;
    net.push(pool)?;
    net.push(Flatten)?;
    let fc3 = Linear::new(builder, "fc3", net.final_shape().len(), 500)?;
    net.push(fc3.with_activation(Activation::Relu))?;
    net.push(Linear::new(builder, "fc4", 500, classes)?)?;
    Ok(net)
}

/// A VGG-style network: per stage, 3×3 convolutions (padding 1, no bias)
/// each followed by batch norm and ReLU, then 2×2 max pooling; then
/// flattening, fully connected layers of widths `hidden` with ReLU, and the
/// classifier. Convolutions are `conv{stage}_{i}`, the fully connected
/// layers `fc{i}`.
pub fn vgg(
    builder: &mut ParamBuilder,
    input: ImageShape,
    stages: &[Vec<usize>],
    hidden: &[usize],
    classes: usize,
) -> Result<Sequential> {
    let mut net = Sequential::new("vgg", ActivationShape::Image(input), Vec::new())?;
    let mut channels = input.channels;
    for (s, widths) in stages.iter().enumerate() {
        for (i, &width) in widths.iter().enumerate() {
            let name = format!("conv{}_{}", s + 1, i + 1);
            let shape = ConvShape::new(channels, width, 3).padding(1);
            net.push(Conv2d::new(builder, &name, shape, false)?)?;
            net.push(BatchNorm::new(builder, &format!("{name}.bn"), width))?;
            net.push(Relu)?;
            channels = width;
        }
        net.push(MaxPool2d { size: 2, stride: 2 })?;
    }
    net.push(Flatten)?;
    for (i, &width) in hidden.iter().chain([&classes]).enumerate() {
        let features = net.final_shape().len();
        let layer = Linear::new(builder, &format!("fc{}", i + 1), features, width)?;
        net.push(layer.with_activation(hidden_activation(i < hidden.len())))?;
    }
    Ok(net)
}

/// A Wide ResNet WRN-`depth`-`widen` (Zagoruyko & Komodakis, 2016) as the
/// sparse-learning library defines it: a 3×3 convolution to 16 channels,
/// three groups of `n = (depth − 4) / 6` pre-activation blocks of `16k`,
/// `32k`, `64k` channels (the second and third groups start with stride 2),
/// then batch norm, ReLU, global average pooling and the classifier.
/// Convolutions have no bias; initial values follow the builder's
/// [`super::WeightInit`] rather than the paper's He normal.
pub fn wide_resnet(
    builder: &mut ParamBuilder,
    input: ImageShape,
    depth: usize,
    widen: usize,
    dropout: f32,
    classes: usize,
) -> Result<Sequential> {
    if depth < 10 || !(depth - 4).is_multiple_of(6) || widen == 0 {
        return Err(Error::config(
            "model",
            format!(
                "WRN-{depth}-{widen}: the depth must be 6n + 4 with n ≥ 1, the width at least 1"
            ),
        ));
    }
    let mut net = Sequential::new("wide_resnet", ActivationShape::Image(input), Vec::new())?;
    let stem = ConvShape::new(input.channels, 16, 3).padding(1);
    net.push(Conv2d::new(builder, "conv1", stem, false)?)?;
    let mut channels = 16;
    for (g, (width, first_stride)) in [(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)]
        .into_iter()
        .enumerate()
    {
        for i in 0..(depth - 4) / 6 {
            let stride = if i == 0 { first_stride } else { 1 };
            let name = format!("block{}_{}", g + 1, i + 1);
            let block = wide_block(builder, &name, net.final_shape(), width, stride, dropout)?;
            net.push(block)?;
            channels = width;
        }
    }
    net.push(BatchNorm::new(builder, "bn", channels))?;
    net.push(Relu)?;
    net.push(GlobalAvgPool)?;
    net.push(Linear::new(builder, "fc", channels, classes)?)?;
    Ok(net)
}

/// One pre-activation block: BN, ReLU, conv 3×3 (`stride`), BN, ReLU,
/// dropout, conv 3×3; a 1×1 convolution shortcut when the shape changes.
fn wide_block(
    builder: &mut ParamBuilder,
    name: &str,
    input: ActivationShape,
    width: usize,
    stride: usize,
    dropout: f32,
) -> Result<Residual> {
    let ActivationShape::Image(image) = input else {
        unreachable!("a Wide ResNet's activations are images")
    };
    let channels = image.channels;
    let mut pre = Sequential::new(&format!("{name}.pre"), input, Vec::new())?;
    pre.push(BatchNorm::new(builder, &format!("{name}.bn1"), channels))?;
    pre.push(Relu)?;
    let mut body = Sequential::new(&format!("{name}.body"), input, Vec::new())?;
    let conv1 = ConvShape::new(channels, width, 3).stride(stride).padding(1);
    body.push(Conv2d::new(
        builder,
        &format!("{name}.conv1"),
        conv1,
        false,
    )?)?;
    body.push(BatchNorm::new(builder, &format!("{name}.bn2"), width))?;
    body.push(Relu)?;
    if dropout > 0.0 {
        body.push(Dropout::new(dropout)?)?;
    }
    let conv2 = ConvShape::new(width, width, 3).padding(1);
    body.push(Conv2d::new(
        builder,
        &format!("{name}.conv2"),
        conv2,
        false,
    )?)?;
    let shortcut = if channels != width || stride != 1 {
        let mut shortcut = Sequential::new(&format!("{name}.shortcut"), input, Vec::new())?;
        let conv = ConvShape::new(channels, width, 1).stride(stride);
        shortcut.push(Conv2d::new(
            builder,
            &format!("{name}.shortcut"),
            conv,
            false,
        )?)?;
        Some(shortcut)
    } else {
        None
    };
    Residual::new(name, pre, body, shortcut)
}

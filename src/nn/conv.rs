//! The 2-D convolution layer, with a sparse or a dense weight.

use super::builder::ParamBuilder;
use super::{ActivationShape, Layer, needs_images};
use crate::autograd::{Tape, Var};
use crate::conv::{ConvGeometry, ImageShape};
use crate::error::{Error, Result};
use crate::params::ParamId;

/// The sizes of a convolution: channels in and out, a square kernel, its
/// stride and the zero padding on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Channels of the input.
    pub in_channels: usize,
    /// Channels of the output (filters).
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: usize,
    /// Step between kernel positions.
    pub stride: usize,
    /// Zero rows and columns added on every side.
    pub padding: usize,
}

impl ConvShape {
    /// A `kernel × kernel` convolution with stride 1 and no padding.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        ConvShape {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
        }
    }

    /// The same with another stride.
    pub fn stride(self, stride: usize) -> Self {
        ConvShape { stride, ..self }
    }

    /// The same with another padding.
    pub fn padding(self, padding: usize) -> Self {
        ConvShape { padding, ..self }
    }

    /// The geometry of this convolution over `height × width` inputs.
    fn geometry(&self, height: usize, width: usize) -> ConvGeometry {
        ConvGeometry {
            in_channels: self.in_channels,
            height,
            width,
            kernel: (self.kernel, self.kernel),
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// `y = W ⊛ x (+ b)`: the weight is `out × (in · k · k)`, sparse or dense,
/// applied by im2col and a matrix product ([`Tape::conv2d`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv2d {
    name: String,
    shape: ConvShape,
    /// The filters, `out × (in · k · k)`; row `o` is filter `o`, column
    /// `(c · k + i) · k + j` its weight for channel `c` at offset `(i, j)`.
    pub weight: ParamId,
    /// The bias, an `out × 1` column, if the layer has one (layers followed by
    /// batch normalisation usually do not).
    pub bias: Option<ParamId>,
}

impl Conv2d {
    /// Creates `{name}.weight` (dimensions `[out, in, k, k]`, stored as the
    /// builder decides) and, if `bias`, `{name}.bias`.
    ///
    /// A zero stride or an empty kernel is an error here; a kernel that does
    /// not fit the input is one when the layer is placed in a network.
    pub fn new(
        builder: &mut ParamBuilder,
        name: &str,
        shape: ConvShape,
        bias: bool,
    ) -> Result<Conv2d> {
        if shape.stride == 0 || shape.kernel == 0 || shape.in_channels == 0 {
            return Err(Error::Model {
                layer: name.into(),
                problem: format!(
                    "a {0}×{0} kernel with stride {1} over {2} channels is not a convolution",
                    shape.kernel, shape.stride, shape.in_channels
                ),
            });
        }
        let ConvShape {
            in_channels,
            out_channels,
            kernel,
            ..
        } = shape;
        let weight = builder.weight(
            format!("{name}.weight"),
            &[out_channels, in_channels, kernel, kernel],
        )?;
        let fan_in = in_channels * kernel * kernel;
        let bias = bias.then(|| builder.bias(format!("{name}.bias"), out_channels, fan_in));
        Ok(Conv2d {
            name: name.into(),
            shape,
            weight,
            bias,
        })
    }

    /// The layer's sizes.
    pub fn shape(&self) -> ConvShape {
        self.shape
    }
}

impl Layer for Conv2d {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        let ActivationShape::Image(image) = input else {
            return Err(needs_images(input));
        };
        if image.channels != self.shape.in_channels {
            return Err(format!(
                "takes {} input channels, gets {input}",
                self.shape.in_channels
            ));
        }
        let (height, width) = self
            .shape
            .geometry(image.height, image.width)
            .output_size()
            .map_err(|e| e.to_string())?;
        Ok(ActivationShape::Image(ImageShape {
            channels: self.shape.out_channels,
            height,
            width,
        }))
    }

    fn forward(&self, tape: &mut Tape, x: Var, input: ActivationShape) -> Result<Var> {
        let ActivationShape::Image(image) = input else {
            return Err(Error::shape("Conv2d::forward", needs_images(input)));
        };
        let geometry = self.shape.geometry(image.height, image.width);
        let y = tape.conv2d(self.weight, x, geometry)?;
        match self.bias {
            Some(bias) => tape.add_bias(bias, y),
            None => Ok(y),
        }
    }

    fn weights(&self) -> Vec<ParamId> {
        vec![self.weight]
    }
}

//! Layers that change an activation's shape: pooling and flattening.

use super::{ActivationShape, Layer, needs_images};
use crate::autograd::{Tape, Var};
use crate::conv::ImageShape;
use crate::error::{Error, Result};

/// Max over `size × size` windows every `stride` pixels (no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window height and width.
    pub size: usize,
    /// Step between windows.
    pub stride: usize,
}

/// The mean of every channel over the image: images to `channels` features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalAvgPool;

/// Images to `channels · height · width` features, channel-major (PyTorch's
/// `x.view(batch, -1)`), for the fully connected layers after convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flatten;

/// The image shape of `input`, or an error naming `op`.
fn image_of(op: &'static str, input: ActivationShape) -> Result<ImageShape> {
    match input {
        ActivationShape::Image(image) => Ok(image),
        other => Err(Error::shape(op, needs_images(other))),
    }
}

impl Layer for MaxPool2d {
    fn name(&self) -> String {
        "max_pool".into()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        let ActivationShape::Image(image) = input else {
            return Err(needs_images(input));
        };
        let fits = self.size > 0
            && self.stride > 0
            && self.size <= image.height
            && self.size <= image.width;
        if !fits {
            return Err(format!(
                "a {0}×{0} window with stride {1} does not fit {input}",
                self.size, self.stride
            ));
        }
        Ok(ActivationShape::Image(ImageShape {
            height: (image.height - self.size) / self.stride + 1,
            width: (image.width - self.size) / self.stride + 1,
            ..image
        }))
    }

    fn forward(&self, tape: &mut Tape, x: Var, input: ActivationShape) -> Result<Var> {
        let image = image_of("MaxPool2d::forward", input)?;
        tape.max_pool2d(x, image, self.size, self.stride)
    }
}

impl Layer for GlobalAvgPool {
    fn name(&self) -> String {
        "global_avg_pool".into()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        match input {
            ActivationShape::Image(image) => Ok(ActivationShape::Features(image.channels)),
            other => Err(needs_images(other)),
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var, input: ActivationShape) -> Result<Var> {
        let image = image_of("GlobalAvgPool::forward", input)?;
        tape.global_avg_pool(x, image)
    }
}

impl Layer for Flatten {
    fn name(&self) -> String {
        "flatten".into()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        match input {
            ActivationShape::Image(image) => Ok(ActivationShape::Features(image.len())),
            other => Err(needs_images(other)),
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var, input: ActivationShape) -> Result<Var> {
        let image = image_of("Flatten::forward", input)?;
        tape.flatten(x, image)
    }
}

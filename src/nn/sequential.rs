//! Composing layers: a chain, and a residual block.

use super::{ActivationShape, Layer};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::params::ParamId;

/// Layers applied one after the other, with the shape of every activation
/// checked when the chain is built.
#[derive(Debug)]
pub struct Sequential {
    name: String,
    layers: Vec<Box<dyn Layer>>,
    /// `shapes[i]` is the input of layer `i`; the last one is the output.
    shapes: Vec<ActivationShape>,
}

impl Sequential {
    /// Chains `layers` for inputs of shape `input`.
    ///
    /// Fails, naming the layer, if a layer cannot take what the one before it
    /// makes (a channel count that differs, a kernel larger than the padded
    /// image, features where images are needed).
    ///
    /// ```
    /// use sparsetrain::conv::ImageShape;
    /// use sparsetrain::nn::{ActivationShape, Conv2d, ConvShape, ParamBuilder, Relu, Sequential};
    /// use sparsetrain::params::ParamStore;
    /// use rand::SeedableRng;
    ///
    /// let mut store = ParamStore::new();
    /// let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(0);
    /// let mut b = ParamBuilder::dense(&mut store, Default::default(), &mut rng);
    /// let conv1 = Conv2d::new(&mut b, "conv1", ConvShape::new(1, 8, 3), true).unwrap();
    /// let conv2 = Conv2d::new(&mut b, "conv2", ConvShape::new(4, 8, 3), true).unwrap();
    /// let image = ActivationShape::Image(ImageShape { channels: 1, height: 10, width: 10 });
    /// let err = Sequential::new("net", image, vec![Box::new(conv1), Box::new(Relu), Box::new(conv2)])
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("layer 2 (conv2): takes 4 input channels, gets 8×8×8 images"));
    /// ```
    pub fn new(
        name: &str,
        input: ActivationShape,
        layers: Vec<Box<dyn Layer>>,
    ) -> Result<Sequential> {
        let mut chain = Sequential {
            name: name.into(),
            layers: Vec::with_capacity(layers.len()),
            shapes: vec![input],
        };
        for layer in layers {
            chain.push_boxed(layer)?;
        }
        Ok(chain)
    }

    /// Appends `layer`, checking that it takes what the chain makes so far.
    pub fn push(&mut self, layer: impl Layer + 'static) -> Result<()> {
        self.push_boxed(Box::new(layer))
    }

    fn push_boxed(&mut self, layer: Box<dyn Layer>) -> Result<()> {
        let next = layer
            .output_shape(self.final_shape())
            .map_err(|problem| Error::Model {
                layer: format!("{} ({})", self.layers.len(), layer.name()),
                problem,
            })?;
        self.layers.push(layer);
        self.shapes.push(next);
        Ok(())
    }

    /// The shape of one input sample.
    pub fn input_shape(&self) -> ActivationShape {
        self.shapes[0]
    }

    /// The shape of one output sample.
    pub fn final_shape(&self) -> ActivationShape {
        *self.shapes.last().expect("the input shape is always there")
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// Runs the chain on a batch `x` of [`Sequential::input_shape`] samples.
    pub fn run(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        self.layers
            .iter()
            .zip(&self.shapes)
            .try_fold(x, |x, (layer, &shape)| layer.forward(tape, x, shape))
    }
}

impl Layer for Sequential {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        if input == self.input_shape() {
            Ok(self.final_shape())
        } else {
            Err(format!(
                "was built for {}, gets {input}",
                self.input_shape()
            ))
        }
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        self.run(tape, x)
    }

    fn weights(&self) -> Vec<ParamId> {
        self.layers.iter().flat_map(|l| l.weights()).collect()
    }

    fn mixes_samples(&self) -> bool {
        self.layers.iter().any(|l| l.mixes_samples())
    }
}

/// `y = body(h) + shortcut(h)` with `h = pre(x)`, where a missing shortcut is
/// the identity on `x` itself.
///
/// This is the pre-activation block of Wide ResNets (Zagoruyko & Komodakis):
/// `pre` is batch norm and ReLU, shared by the body and, when the shape
/// changes, a 1×1 convolution shortcut.
#[derive(Debug)]
pub struct Residual {
    name: String,
    pre: Sequential,
    body: Sequential,
    shortcut: Option<Sequential>,
}

impl Residual {
    /// A block; fails if the body's output and the shortcut's differ in shape.
    pub fn new(
        name: &str,
        pre: Sequential,
        body: Sequential,
        shortcut: Option<Sequential>,
    ) -> Result<Residual> {
        let problem = if body.input_shape() != pre.final_shape() {
            Some(format!(
                "the body takes {}, the pre-activation makes {}",
                body.input_shape(),
                pre.final_shape()
            ))
        } else {
            let (through, skipped) = match &shortcut {
                Some(s) => (s.final_shape(), s.input_shape() != pre.final_shape()),
                None => (pre.input_shape(), false),
            };
            if skipped {
                Some("the shortcut does not take the pre-activation's output".to_string())
            } else if through != body.final_shape() {
                Some(format!(
                    "the body makes {}, the shortcut {through}: they cannot be added",
                    body.final_shape()
                ))
            } else {
                None
            }
        };
        match problem {
            Some(problem) => Err(Error::Model {
                layer: name.into(),
                problem,
            }),
            None => Ok(Residual {
                name: name.into(),
                pre,
                body,
                shortcut,
            }),
        }
    }
}

impl Layer for Residual {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn output_shape(&self, input: ActivationShape) -> std::result::Result<ActivationShape, String> {
        self.pre.output_shape(input)?;
        Ok(self.body.final_shape())
    }

    fn forward(&self, tape: &mut Tape, x: Var, _input: ActivationShape) -> Result<Var> {
        let h = self.pre.run(tape, x)?;
        let y = self.body.run(tape, h)?;
        let skip = match &self.shortcut {
            Some(shortcut) => shortcut.run(tape, h)?,
            None => x,
        };
        tape.add(y, skip)
    }

    fn weights(&self) -> Vec<ParamId> {
        let mut weights = self.pre.weights();
        weights.extend(self.body.weights());
        if let Some(shortcut) = &self.shortcut {
            weights.extend(shortcut.weights());
        }
        weights
    }

    fn mixes_samples(&self) -> bool {
        self.pre.mixes_samples()
            || self.body.mixes_samples()
            || self.shortcut.as_ref().is_some_and(|s| s.mixes_samples())
    }
}

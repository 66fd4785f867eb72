//! 2-D convolution on the tape: im2col, then the sparse (or dense) matrix product.

use ndarray::Array2;

use super::tape::{BackwardPass, GradientFactors, Op, Tape, Var};
use super::weight_product::WeightProduct;
use super::workspace::Workspace;
use crate::conv::{ConvGeometry, col2im, im2col};
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamValue};
use crate::sparse::Epilogue;

/// `Y = W · im2col(X)` with `W` of shape `out × (in · kh · kw)`.
#[derive(Debug)]
pub(crate) struct Conv2d {
    weight: ParamId,
    input: Var,
    geometry: ConvGeometry,
    /// The im2col matrix, kept for the weight gradient; from the workspace.
    cols: Array2<f32>,
    /// The rows of `cols` (kernel offsets of input channels) the weight
    /// reads; the others were not built, and get no gradient. From the workspace.
    needed: Vec<bool>,
    /// The weight as stored, or a dense copy of a sparse one.
    product: WeightProduct,
}

impl Tape<'_> {
    /// Convolution of `input` (`in_channels × batch · height · width`) with
    /// `weight` (`out × in_channels · kh · kw`, sparse or dense), giving
    /// `out × batch · out_h · out_w`.
    ///
    /// With a sparse weight, the rows of im2col that no filter reads (whole
    /// input channels, when no filter reads one) are neither built nor
    /// differentiated — unless the step keeps the dense gradient for growth,
    /// which needs every row.
    pub fn conv2d(&mut self, weight: ParamId, input: Var, geometry: ConvGeometry) -> Result<Var> {
        let (out_h, out_w) = geometry.output_size()?;
        let x = self.value(input);
        let batch = crate::conv::ImageShape {
            channels: geometry.in_channels,
            height: geometry.height,
            width: geometry.width,
        }
        .batch_of("conv2d", x.dim())?;
        let param = self.params().get(weight);
        let (out_channels, patch) = param.value.shape();
        if patch != geometry.patch_len() {
            return Err(Error::shape(
                "conv2d",
                format!(
                    "`{}` is {out_channels}×{patch}, the geometry needs {} columns",
                    param.name,
                    geometry.patch_len()
                ),
            ));
        }
        let columns = batch * out_h * out_w;
        let product = self.weight_product(&param.value, columns);
        // Only the sparse kernels skip the rows no filter reads: a dense
        // product reads every row of im2col (zeros in the copy times whatever
        // the row holds), and so does the full gradient growth asks for.
        let mut needed = self.workspace().flags(patch);
        match (&param.value, &product) {
            (ParamValue::Sparse(w), WeightProduct::AsStored) if !self.keeps_factors(weight) => {
                for (c, flag) in needed.iter_mut().enumerate() {
                    *flag = w.column_count(c) > 0;
                }
            }
            _ => needed.fill(true),
        }
        let mut cols = self.alloc(patch, columns);
        let x = self
            .value(input)
            .as_slice()
            .expect("tape values are contiguous");
        im2col(
            &geometry,
            batch,
            x,
            &needed,
            cols.as_slice_mut().expect("contiguous"),
        );
        let mut y = self.alloc(out_channels, columns);
        product.forward(&param.value, cols.view(), Epilogue::default(), y.view_mut());
        let op = Conv2d {
            weight,
            input,
            geometry,
            cols,
            needed,
            product,
        };
        Ok(self.push_op(y, Op::Conv2d(op), &[input], true))
    }
}

impl Conv2d {
    /// `dW = dY · colsᵀ` (at the stored entries for a sparse weight), and
    /// `dX = col2im(Wᵀ · dY)` for the channels the weight reads.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let weight = pass.param(self.weight);
        let grad = self
            .product
            .weight_grad(weight, dy.view(), self.cols.view(), pass);
        let dx = pass.needs_grad(self.input).then(|| {
            let (patch, columns) = self.cols.dim();
            let mut dcols = pass.alloc(patch, columns);
            self.product.input_grad(weight, dy.view(), dcols.view_mut());
            let (rows, cols) = pass.value(self.input).dim();
            let mut dx = pass.alloc(rows, cols);
            let batch = cols / self.geometry.input_plane();
            col2im(
                &self.geometry,
                batch,
                dcols.as_slice().expect("contiguous"),
                &self.needed,
                dx.as_slice_mut().expect("contiguous"),
            );
            pass.recycle(dcols);
            dx
        });
        pass.accumulate_param(self.weight, grad);
        if let Some(dx) = dx {
            pass.accumulate(self.input, dx);
        }
        if pass.wants_factors(self.weight) {
            let mut input = pass.pooled_copy(&self.cols);
            let skipped: Vec<bool> = self.needed.iter().map(|&needed| !needed).collect();
            if skipped.contains(&true) {
                // The factors were asked for after the forward pass skipped
                // rows: the dense gradient needs them all.
                let x = pass.value(self.input);
                let batch = x.ncols() / self.geometry.input_plane();
                let x = x.as_slice().expect("tape values are contiguous");
                let cols = input.as_slice_mut().expect("contiguous");
                im2col(&self.geometry, batch, x, &skipped, cols);
            }
            let factors = GradientFactors {
                output_grad: dy,
                input,
            };
            pass.keep_factors(self.weight, factors);
        } else {
            pass.recycle(dy);
        }
    }

    /// Returns the im2col buffer, the row flags (and a dense weight copy) to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        workspace.give(self.cols);
        workspace.give_flags(self.needed);
        self.product.release(workspace);
    }
}

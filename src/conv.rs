//! Convolution as a matrix product: geometry, im2col and col2im.
//!
//! Image activations are `channels × (batch · height · width)`: row `c` holds
//! channel `c` of every sample, one `height × width` block per sample. A
//! convolution with weights `out × (in · kh · kw)` is then
//! `Y = W · cols`, where `cols` (im2col) is `(in · kh · kw) × (batch · out_h ·
//! out_w)`: row `(c, i, j)` holds, for every output position, the input pixel
//! under kernel offset `(i, j)` of channel `c`. The batch and the spatial
//! positions are the contiguous inner dimension, so every stored weight of a
//! sparse filter drives one long vectorisable loop, as for fully connected
//! layers (see `sparse::kernels`).
//!
//! Input channels that no filter reads need no rows in `cols` and get no
//! gradient: both functions take the set of channels to compute and skip the
//! rest, which is where channel sparsity saves time.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The shape of an image activation, `channels × (batch · height · width)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// Channels (rows of the activation).
    pub channels: usize,
    /// Height of one sample's image.
    pub height: usize,
    /// Width of one sample's image.
    pub width: usize,
}

impl ImageShape {
    /// Pixels of one channel of one sample.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Values of one sample: `channels · height · width`.
    pub fn len(&self) -> usize {
        self.channels * self.plane()
    }

    /// True if the image has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch size of an activation of this shape with `rows × cols`
    /// values, or an error naming `op` if it does not fit.
    pub fn batch_of(&self, op: &'static str, (rows, cols): (usize, usize)) -> Result<usize> {
        if cols == 0 {
            return Err(Error::shape(op, "an empty batch"));
        }
        if rows != self.channels || self.plane() == 0 || cols % self.plane() != 0 {
            return Err(Error::shape(
                op,
                format!(
                    "a {rows}×{cols} activation is not {} channels of {}×{} images",
                    self.channels, self.height, self.width
                ),
            ));
        }
        Ok(cols / self.plane())
    }
}

/// The shape of a 2-D convolution (square stride, symmetric zero padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Step between kernel positions, in both directions.
    pub stride: usize,
    /// Zero rows and columns added on every side.
    pub padding: usize,
}

impl ConvGeometry {
    /// Checks the geometry and returns the output's `(height, width)`.
    pub fn output_size(&self) -> Result<(usize, usize)> {
        let problem = if self.stride == 0 {
            Some("the stride is 0".to_string())
        } else if self.kernel.0 == 0 || self.kernel.1 == 0 || self.in_channels == 0 {
            Some(format!(
                "kernel {:?} over {} channels is empty",
                self.kernel, self.in_channels
            ))
        } else if self.kernel.0 > self.height + 2 * self.padding
            || self.kernel.1 > self.width + 2 * self.padding
        {
            Some(format!(
                "the {}×{} kernel is larger than the {}×{} input with padding {}",
                self.kernel.0, self.kernel.1, self.height, self.width, self.padding
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::shape("convolution", problem));
        }
        Ok((
            (self.height + 2 * self.padding - self.kernel.0) / self.stride + 1,
            (self.width + 2 * self.padding - self.kernel.1) / self.stride + 1,
        ))
    }

    /// Rows of the im2col matrix: `in_channels · kh · kw`.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Pixels of one channel of one input sample.
    pub fn input_plane(&self) -> usize {
        self.height * self.width
    }
}

/// The sizes im2col and col2im work with.
struct Sizes {
    out_w: usize,
    /// Pixels of one input image channel.
    plane: usize,
    /// Pixels of one output image channel.
    out_plane: usize,
    /// Length of a row of `cols`: `batch · out_plane`.
    row_len: usize,
}

impl ConvGeometry {
    /// The sizes for `batch` images, after checking the lengths of the image
    /// buffer, the cols buffer and the needed-rows flags.
    ///
    /// # Panics
    /// If a length is wrong or the geometry impossible (the layers check it
    /// when a network is built).
    fn sizes(&self, batch: usize, (image, cols, needed): (usize, usize, usize)) -> Sizes {
        let (out_h, out_w) = self
            .output_size()
            .expect("checked when the layer was built");
        let sizes = Sizes {
            out_w,
            plane: self.input_plane(),
            out_plane: out_h * out_w,
            row_len: batch * out_h * out_w,
        };
        assert_eq!(image, self.in_channels * batch * sizes.plane, "image size");
        assert_eq!(cols, self.patch_len() * sizes.row_len, "im2col matrix size");
        assert_eq!(needed, self.patch_len(), "one flag per im2col row");
        sizes
    }
}

/// Fills `cols` (`patch_len × batch · out_h · out_w`) from `input`
/// (`in_channels × batch · height · width`): the rows `r` with `needed[r]`;
/// the others are left as they are.
///
/// A row of `cols` is one kernel offset `(c, i, j)`; a sparse filter bank
/// reads only the rows of its non-empty columns, so the rest need not be
/// built (all of an input channel's rows, when no filter reads the channel).
/// Parallel over rows: each is written by one thread.
pub fn im2col(
    geometry: &ConvGeometry,
    batch: usize,
    input: &[f32],
    needed: &[bool],
    cols: &mut [f32],
) {
    let Sizes {
        out_w,
        plane,
        out_plane,
        row_len,
    } = geometry.sizes(batch, (input.len(), cols.len(), needed.len()));
    let (kh, kw) = geometry.kernel;
    let (height, width, stride) = (geometry.height, geometry.width, geometry.stride);
    cols.par_chunks_mut(row_len.max(1))
        .enumerate()
        .filter(|(row, _)| needed[*row])
        .for_each(|(row, out)| {
            let (c, ki, kj) = (row / (kh * kw), (row / kw) % kh, row % kw);
            let columns = ValidColumns::new(out_w, width, stride, kj, geometry.padding);
            let channel = &input[c * batch * plane..][..batch * plane];
            for (image, out) in channel
                .chunks_exact(plane)
                .zip(out.chunks_exact_mut(out_plane))
            {
                for (y, out_row) in out.chunks_exact_mut(out_w).enumerate() {
                    match image_row(y * stride + ki, geometry.padding, height) {
                        Some(iy) => columns.gather(&image[iy * width..][..width], out_row),
                        None => out_row.fill(0.0),
                    }
                }
            }
        });
}

/// The input gradient from the gradient of `cols`: `dx` (`in_channels × batch
/// · height · width`, overwritten) gets every `dcols` value added at the pixel
/// it was read from, for the rows with `needed[r]` (the others are taken as
/// zero: their weights do not exist).
///
/// Parallel over input channels: a channel's gradient depends only on its own
/// `kh · kw` rows of `dcols`, summed in a fixed order, so results do not depend
/// on the number of threads.
pub fn col2im(
    geometry: &ConvGeometry,
    batch: usize,
    dcols: &[f32],
    needed: &[bool],
    dx: &mut [f32],
) {
    let Sizes {
        out_w,
        plane,
        out_plane,
        row_len,
    } = geometry.sizes(batch, (dx.len(), dcols.len(), needed.len()));
    let (kh, kw) = geometry.kernel;
    let (height, width, stride) = (geometry.height, geometry.width, geometry.stride);
    dx.par_chunks_mut((batch * plane).max(1))
        .enumerate()
        .for_each(|(c, channel)| {
            channel.fill(0.0);
            for ki in 0..kh {
                for kj in 0..kw {
                    let row = (c * kh + ki) * kw + kj;
                    if !needed[row] {
                        continue;
                    }
                    let columns = ValidColumns::new(out_w, width, stride, kj, geometry.padding);
                    let grads = &dcols[row * row_len..][..row_len];
                    for (image, grads) in channel
                        .chunks_exact_mut(plane)
                        .zip(grads.chunks_exact(out_plane))
                    {
                        for (y, grad_row) in grads.chunks_exact(out_w).enumerate() {
                            if let Some(iy) = image_row(y * stride + ki, geometry.padding, height) {
                                columns.scatter_add(grad_row, &mut image[iy * width..][..width]);
                            }
                        }
                    }
                }
            }
        });
}

/// The input row under output row `y` at kernel offset `ki` (`y · stride +
/// ki` passed in as `padded`), or `None` where it falls in the padding.
fn image_row(padded: usize, padding: usize, height: usize) -> Option<usize> {
    padded.checked_sub(padding).filter(|&iy| iy < height)
}

/// For one kernel column offset, which output columns read inside the image:
/// output column `x` reads input column `x · stride + offset − padding`,
/// inside the image for `x` in `first..end`.
struct ValidColumns {
    first: usize,
    end: usize,
    /// The input column of output column `first`.
    start: usize,
    stride: usize,
}

impl ValidColumns {
    fn new(out_w: usize, width: usize, stride: usize, offset: usize, padding: usize) -> Self {
        // The smallest x with x·stride + offset ≥ padding, and the first x
        // with x·stride + offset ≥ padding + width.
        let first = padding.saturating_sub(offset).div_ceil(stride).min(out_w);
        let end = (padding + width)
            .saturating_sub(offset)
            .div_ceil(stride)
            .clamp(first, out_w);
        ValidColumns {
            first,
            end,
            start: first * stride + offset - padding.min(first * stride + offset),
            stride,
        }
    }

    /// `out[x] = row[x · stride + offset − padding]`, 0 in the padding.
    fn gather(&self, row: &[f32], out: &mut [f32]) {
        out[..self.first].fill(0.0);
        out[self.end..].fill(0.0);
        if self.first == self.end {
            return;
        }
        let inside = &mut out[self.first..self.end];
        if self.stride == 1 {
            inside.copy_from_slice(&row[self.start..][..inside.len()]);
        } else {
            for (o, &v) in inside
                .iter_mut()
                .zip(row[self.start..].iter().step_by(self.stride))
            {
                *o = v;
            }
        }
    }

    /// `row[x · stride + offset − padding] += grads[x]` inside the image.
    fn scatter_add(&self, grads: &[f32], row: &mut [f32]) {
        if self.first == self.end {
            return;
        }
        let inside = &grads[self.first..self.end];
        if self.stride == 1 {
            for (r, &g) in row[self.start..][..inside.len()].iter_mut().zip(inside) {
                *r += g;
            }
        } else {
            for (r, &g) in row[self.start..]
                .iter_mut()
                .step_by(self.stride)
                .zip(inside)
            {
                *r += g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(stride: usize, padding: usize) -> ConvGeometry {
        ConvGeometry {
            in_channels: 2,
            height: 4,
            width: 5,
            kernel: (3, 2),
            stride,
            padding,
        }
    }

    /// A direct convolution sum for one output value.
    fn direct(
        g: &ConvGeometry,
        batch: usize,
        input: &[f32],
        weights: &[f32],
        b: usize,
        y: usize,
        x: usize,
    ) -> f32 {
        let mut sum = 0.0;
        for c in 0..g.in_channels {
            for i in 0..g.kernel.0 {
                for j in 0..g.kernel.1 {
                    let (iy, ix) = (
                        (y * g.stride + i) as isize - g.padding as isize,
                        (x * g.stride + j) as isize - g.padding as isize,
                    );
                    if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                        let v = input[c * batch * g.input_plane()
                            + b * g.input_plane()
                            + iy as usize * g.width
                            + ix as usize];
                        sum += v * weights[(c * g.kernel.0 + i) * g.kernel.1 + j];
                    }
                }
            }
        }
        sum
    }

    #[test]
    fn im2col_times_a_filter_is_the_convolution() {
        for (stride, padding) in [(1, 0), (1, 1), (2, 1), (3, 2)] {
            let g = geometry(stride, padding);
            let batch = 3;
            let (oh, ow) = g.output_size().unwrap();
            let input: Vec<f32> = (0..g.in_channels * batch * g.input_plane())
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let weights: Vec<f32> = (0..g.patch_len())
                .map(|i| (i % 5) as f32 * 0.5 - 1.0)
                .collect();
            let mut cols = vec![f32::NAN; g.patch_len() * batch * oh * ow];
            im2col(&g, batch, &input, &vec![true; g.patch_len()], &mut cols);
            for b in 0..batch {
                for y in 0..oh {
                    for x in 0..ow {
                        let column = b * oh * ow + y * ow + x;
                        let product: f32 = (0..g.patch_len())
                            .map(|r| weights[r] * cols[r * batch * oh * ow + column])
                            .sum();
                        let expected = direct(&g, batch, &input, &weights, b, y, x);
                        assert!(
                            (product - expected).abs() < 1e-4,
                            "stride {stride} padding {padding}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // ⟨im2col(x), d⟩ = ⟨x, col2im(d)⟩ for any x and d.
        let g = geometry(2, 1);
        let batch = 2;
        let (oh, ow) = g.output_size().unwrap();
        let x: Vec<f32> = (0..g.in_channels * batch * g.input_plane())
            .map(|i| ((i * 13) % 11) as f32 - 5.0)
            .collect();
        let d: Vec<f32> = (0..g.patch_len() * batch * oh * ow)
            .map(|i| ((i * 7) % 9) as f32 - 4.0)
            .collect();
        let mut cols = vec![0.0; d.len()];
        im2col(&g, batch, &x, &vec![true; g.patch_len()], &mut cols);
        let mut dx = vec![f32::NAN; x.len()];
        col2im(&g, batch, &d, &vec![true; g.patch_len()], &mut dx);
        let left: f32 = cols.iter().zip(&d).map(|(a, b)| a * b).sum();
        let right: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((left - right).abs() < 1e-3, "{left} vs {right}");
    }

    #[test]
    fn rows_not_needed_are_skipped() {
        // Channel 0 not read at all, channel 1 only at its first offset.
        let g = geometry(1, 0);
        let (oh, ow) = g.output_size().unwrap();
        let per_channel = g.patch_len() / 2;
        let mut needed = vec![false; g.patch_len()];
        needed[per_channel] = true;
        let input = vec![1.0; g.in_channels * g.input_plane()];
        let mut cols = vec![-7.0; g.patch_len() * oh * ow];
        im2col(&g, 1, &input, &needed, &mut cols);
        for (row, values) in cols.chunks(oh * ow).enumerate() {
            let expected = if needed[row] { 1.0 } else { -7.0 };
            assert!(values.iter().all(|&v| v == expected), "row {row}");
        }
        // col2im ignores the rows not needed, whatever they hold.
        let mut dx = vec![5.0; input.len()];
        col2im(&g, 1, &cols, &needed, &mut dx);
        assert!(dx[..g.input_plane()].iter().all(|&v| v == 0.0));
        let one_offset: f32 = dx[g.input_plane()..].iter().sum();
        assert_eq!(one_offset, (oh * ow) as f32);
    }

    #[test]
    fn windows_cover_exactly_the_pixels_inside_the_image() {
        for (width, stride, padding, kernel) in
            [(5, 1, 0, 3), (5, 2, 1, 3), (4, 3, 2, 2), (1, 1, 3, 7)]
        {
            let out_w = (width + 2 * padding - kernel) / stride + 1;
            for offset in 0..kernel {
                let w = ValidColumns::new(out_w, width, stride, offset, padding);
                for x in 0..out_w {
                    let ix = (x * stride + offset) as isize - padding as isize;
                    let inside = ix >= 0 && ix < width as isize;
                    assert_eq!(
                        inside,
                        (w.first..w.end).contains(&x),
                        "{width} {stride} {padding} {offset} {x}"
                    );
                    if inside {
                        assert_eq!(w.start + (x - w.first) * stride, ix as usize);
                    }
                }
            }
        }
    }

    #[test]
    fn impossible_geometries_are_errors() {
        let mut g = geometry(0, 0);
        assert!(g.output_size().unwrap_err().to_string().contains("stride"));
        g.stride = 1;
        g.kernel = (9, 2);
        assert!(
            g.output_size()
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
        g.padding = 3;
        assert_eq!(g.output_size().unwrap(), (2, 10));
    }
}

//! Pooling and flattening of image activations (`channels × batch · height · width`).

use ndarray::Array2;
use rayon::prelude::*;

use super::elementwise::{slice, slice_mut};
use super::tape::{BackwardPass, Op, Tape, Var};
use super::workspace::Workspace;
use crate::conv::ImageShape;
use crate::error::{Error, Result};

/// Max over `size × size` windows every `stride` pixels.
#[derive(Debug)]
pub(crate) struct MaxPool2d {
    input: Var,
    /// For every output value, where its maximum sits in the input's row
    /// (from the workspace).
    argmax: Vec<u32>,
    input_dim: (usize, usize),
}

/// Mean over each sample's image, per channel: `channels × batch`.
#[derive(Debug)]
pub(crate) struct GlobalAvgPool {
    input: Var,
    shape: ImageShape,
}

/// `channels × batch · height · width` to `(channels · height · width) × batch`,
/// the layout of fully connected layers.
#[derive(Debug)]
pub(crate) struct Flatten {
    input: Var,
    shape: ImageShape,
}

impl Tape<'_> {
    /// Max pooling of `input` (images of `shape`) over `size × size` windows
    /// with `stride`, no padding; the output is `channels × batch · out_h · out_w`.
    pub fn max_pool2d(
        &mut self,
        input: Var,
        shape: ImageShape,
        size: usize,
        stride: usize,
    ) -> Result<Var> {
        let x = self.value(input);
        let batch = shape.batch_of("max_pool2d", x.dim())?;
        let (out_h, out_w) = pooled_size(shape, size, stride)?;
        let (plane, out_plane) = (shape.plane(), out_h * out_w);
        let mut y = self.alloc(shape.channels, batch * out_plane);
        let mut argmax = self.workspace().indices(shape.channels * batch * out_plane);
        let x = self.value(input);
        let rows = slice(x).par_chunks(batch * plane);
        let outputs = y
            .as_slice_mut()
            .expect("contiguous")
            .par_chunks_mut(batch * out_plane);
        rows.zip(outputs)
            .zip(argmax.par_chunks_mut(batch * out_plane))
            .for_each(|((row, out), arg)| {
                let samples = row.chunks_exact(plane);
                let outputs = out
                    .chunks_exact_mut(out_plane)
                    .zip(arg.chunks_exact_mut(out_plane));
                for (b, (image, (out, arg))) in samples.zip(outputs).enumerate() {
                    let window = PoolWindows {
                        width: shape.width,
                        out_w,
                        size,
                        stride,
                    };
                    window.max_pool(image, out, arg, (b * plane) as u32);
                }
            });
        let op = MaxPool2d {
            input,
            argmax,
            input_dim: x.dim(),
        };
        Ok(self.push_op(y, Op::MaxPool2d(op), &[input], false))
    }

    /// The mean of every channel of every sample: `channels × batch`.
    pub fn global_avg_pool(&mut self, input: Var, shape: ImageShape) -> Result<Var> {
        let x = self.value(input);
        let batch = shape.batch_of("global_avg_pool", x.dim())?;
        let plane = shape.plane();
        let mut y = self.alloc(shape.channels, batch);
        let images = slice(self.value(input)).chunks_exact(plane);
        for (mean, image) in slice_mut(&mut y).iter_mut().zip(images) {
            *mean = crate::dense::sum(image) / plane as f32;
        }
        Ok(self.push_op(
            y,
            Op::GlobalAvgPool(GlobalAvgPool { input, shape }),
            &[input],
            false,
        ))
    }

    /// Image activations to the fully connected layout: feature `c · h · w + p`
    /// of sample `b` is pixel `p` of channel `c`.
    pub fn flatten(&mut self, input: Var, shape: ImageShape) -> Result<Var> {
        let x = self.value(input);
        let batch = shape.batch_of("flatten", x.dim())?;
        let plane = shape.plane();
        let mut y = self.alloc(shape.len(), batch);
        let x = self.value(input);
        for (c, row) in slice(x).chunks_exact(batch * plane).enumerate() {
            for (b, image) in row.chunks_exact(plane).enumerate() {
                for (p, &v) in image.iter().enumerate() {
                    y[(c * plane + p, b)] = v;
                }
            }
        }
        Ok(self.push_op(y, Op::Flatten(Flatten { input, shape }), &[input], false))
    }
}

/// The output size of a `size × size`, `stride` pooling of `shape`.
fn pooled_size(shape: ImageShape, size: usize, stride: usize) -> Result<(usize, usize)> {
    if size == 0 || stride == 0 || size > shape.height || size > shape.width {
        return Err(Error::shape(
            "max_pool2d",
            format!(
                "a {size}×{size} window with stride {stride} does not fit {}×{} images",
                shape.height, shape.width
            ),
        ));
    }
    Ok((
        (shape.height - size) / stride + 1,
        (shape.width - size) / stride + 1,
    ))
}

/// The pooling windows over one image.
struct PoolWindows {
    width: usize,
    out_w: usize,
    size: usize,
    stride: usize,
}

impl PoolWindows {
    /// `out` (`out_h × out_w`, row-major) gets the maximum of each window of
    /// `image`, `arg` its position in the channel's row (`base` + pixel).
    /// The window's first pixel starts every maximum; a later one replaces it
    /// if larger or NaN (so a NaN propagates, as in PyTorch).
    fn max_pool(&self, image: &[f32], out: &mut [f32], arg: &mut [u32], base: u32) {
        if self.size == 2 && self.stride == 2 {
            self.max_pool_2x2(image, out, arg, base);
        } else {
            self.max_pool_any(image, out, arg, base);
        }
    }

    /// [`PoolWindows::max_pool`] for the common 2 × 2 windows, stride 2: each
    /// output reads its two pixel pairs directly and picks with branch-free
    /// selects, which the compiler vectorises (2.7× faster than
    /// [`PoolWindows::max_pool_any`] on LeNet-5's first pooling).
    fn max_pool_2x2(&self, image: &[f32], out: &mut [f32], arg: &mut [u32], base: u32) {
        let below = self.width as u32;
        for (oy, (out_row, arg_row)) in out
            .chunks_exact_mut(self.out_w)
            .zip(arg.chunks_exact_mut(self.out_w))
            .enumerate()
        {
            let top = 2 * oy;
            let row = |dy: usize| &image[(top + dy) * self.width..][..2 * self.out_w];
            let pairs = row(0).chunks_exact(2).zip(row(1).chunks_exact(2));
            let first = base + (top * self.width) as u32;
            for (ox, ((o, a), (upper, lower))) in out_row
                .iter_mut()
                .zip(arg_row.iter_mut())
                .zip(pairs)
                .enumerate()
            {
                let at = first + 2 * ox as u32;
                let (mut best, mut best_at) = (upper[0], at);
                for (v, v_at) in [
                    (upper[1], at + 1),
                    (lower[0], at + below),
                    (lower[1], at + below + 1),
                ] {
                    let replace = (v > best) | v.is_nan();
                    best = if replace { v } else { best };
                    best_at = if replace { v_at } else { best_at };
                }
                *o = best;
                *a = best_at;
            }
        }
    }

    /// [`PoolWindows::max_pool`] for any window and stride: one input row and
    /// one window column at a time, so each pass is a strided walk along a
    /// row rather than a 2-D index computation per value.
    fn max_pool_any(&self, image: &[f32], out: &mut [f32], arg: &mut [u32], base: u32) {
        for (oy, (out_row, arg_row)) in out
            .chunks_exact_mut(self.out_w)
            .zip(arg.chunks_exact_mut(self.out_w))
            .enumerate()
        {
            for dy in 0..self.size {
                let iy = oy * self.stride + dy;
                let in_row = &image[iy * self.width..][..self.width];
                for dx in 0..self.size {
                    let columns = in_row[dx..].iter().step_by(self.stride).enumerate();
                    for ((o, a), (ox, &v)) in
                        out_row.iter_mut().zip(arg_row.iter_mut()).zip(columns)
                    {
                        if v > *o || v.is_nan() || (dy == 0 && dx == 0) {
                            *o = v;
                            *a = base + (iy * self.width + ox * self.stride + dx) as u32;
                        }
                    }
                }
            }
        }
    }
}

impl MaxPool2d {
    /// Each output's gradient goes to the input value that was its maximum.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let mut dx = pass.alloc(self.input_dim.0, self.input_dim.1);
        let per_row = (self.argmax.len() / self.input_dim.0.max(1)).max(1);
        slice_mut(&mut dx)
            .par_chunks_mut(self.input_dim.1.max(1))
            .zip(slice(&dy).par_chunks(per_row))
            .zip(self.argmax.par_chunks(per_row))
            .for_each(|((dx_row, grads), args)| {
                dx_row.fill(0.0);
                for (&g, &at) in grads.iter().zip(args) {
                    dx_row[at as usize] += g;
                }
            });
        pass.accumulate(self.input, dx);
        pass.recycle(dy);
    }

    /// Returns the argmax buffer to the pool.
    pub(crate) fn release(self, workspace: &mut Workspace) {
        workspace.give_indices(self.argmax);
    }
}

impl GlobalAvgPool {
    /// Every pixel of a sample's channel gets `1/pixels` of that channel's gradient.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let plane = self.shape.plane();
        let mut dx = pass.alloc(self.shape.channels, dy.ncols() * plane);
        for (image, &g) in slice_mut(&mut dx).chunks_exact_mut(plane).zip(slice(&dy)) {
            image.fill(g / plane as f32);
        }
        pass.accumulate(self.input, dx);
        pass.recycle(dy);
    }
}

impl Flatten {
    /// The inverse rearrangement.
    pub(crate) fn backward(&self, dy: Array2<f32>, pass: &mut BackwardPass) {
        let (batch, plane) = (dy.ncols(), self.shape.plane());
        let mut dx = pass.alloc(self.shape.channels, batch * plane);
        for (c, mut row) in dx.rows_mut().into_iter().enumerate() {
            for b in 0..batch {
                for p in 0..plane {
                    row[b * plane + p] = dy[(c * plane + p, b)];
                }
            }
        }
        pass.accumulate(self.input, dx);
        pass.recycle(dy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn the_2x2_path_picks_as_the_general_one_with_ties_and_nans() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // 5 × 7 images: an odd row and column that no window reads.
        let (height, width) = (5, 7);
        let window = PoolWindows {
            width,
            out_w: 3,
            size: 2,
            stride: 2,
        };
        for _ in 0..200 {
            // Few distinct values, so windows tie; some NaNs.
            let image: Vec<f32> = (0..height * width)
                .map(|_| match rng.random_range(0..8) {
                    0 => f32::NAN,
                    v => v as f32 / 2.0,
                })
                .collect();
            let (mut fast, mut general) = (vec![0.0; 6], vec![0.0; 6]);
            let (mut fast_at, mut general_at) = (vec![0; 6], vec![0; 6]);
            window.max_pool_2x2(&image, &mut fast, &mut fast_at, 100);
            window.max_pool_any(&image, &mut general, &mut general_at, 100);
            assert_eq!(fast_at, general_at, "{image:?}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&general), "{image:?}");
        }
    }
}

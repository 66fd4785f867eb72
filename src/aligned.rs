//! Arrays whose first value starts a cache line.
//!
//! The kernels load 16 floats, 64 bytes, at a time: one cache line if the
//! load starts on a line boundary, two otherwise. A `Vec<f32>` asks for
//! 4-byte alignment and glibc's malloc gives 16 (and serves big buffers from
//! pages it maps, 16 bytes past a page boundary, so *every* such buffer is
//! off by 16).
//! Measured on this project's machine (Zen 4), a 64-byte load that straddles
//! two lines 16 bytes in is that much slower that the sparse kernels lose a
//! quarter to a third of their speed: LeNet-300-100's fc1 forward at batch 48
//! takes 10.3 µs on a batch 16 bytes off and 7.2 µs on an aligned one;
//! `bench kernels` at batch 64 shows 66 → 85 GFLOP/s for fc1's forward at 2 %.
//!
//! So the arrays the kernels read in a training step (activations, their
//! gradients, the gathered batch) start on a 64-byte boundary. A `Vec<f32>`
//! cannot ask the allocator for more alignment (it frees with the alignment
//! of `f32`), so the array instead starts up to 15 floats into an ordinary
//! vector: it still owns that vector, and gives it back whole
//! (`into_raw_vec_and_offset`) for reuse.
//!
//! With a row length that is a multiple of 16 floats (batch 16, 32, 48, 64)
//! every row starts a line; other rows start wherever the row length puts
//! them.

use ndarray::{Array1, Array2, s};

/// Bytes in a cache line, and the alignment given.
pub const LINE_BYTES: usize = 64;

/// Floats in a cache line.
pub const LINE_FLOATS: usize = LINE_BYTES / size_of::<f32>();

/// The most floats skipped at the front of a buffer to reach a line
/// boundary: a buffer needs this many beyond its array's.
pub const SLACK: usize = LINE_FLOATS - 1;

/// A `rows × cols` standard-layout array in `buffer`, its first value
/// 64-byte aligned. The buffer is reused: resized to hold the array and the
/// floats skipped to align it, its old values left in place, so the array's
/// values are unspecified unless `buffer` was empty (then they are zeros).
///
/// ```
/// use sparsetrain::aligned::{LINE_BYTES, array_in};
///
/// let a = array_in(Vec::new(), 3, 5);
/// assert_eq!(a.dim(), (3, 5));
/// assert_eq!(a.as_ptr() as usize % LINE_BYTES, 0);
/// assert!(a.iter().all(|&v| v == 0.0));
/// // The buffer comes back whole and can hold the next array.
/// let (buffer, _) = a.into_raw_vec_and_offset();
/// let b = array_in(buffer, 2, 7);
/// assert_eq!(b.as_ptr() as usize % LINE_BYTES, 0);
/// ```
pub fn array_in(mut buffer: Vec<f32>, rows: usize, cols: usize) -> Array2<f32> {
    let len = rows * cols;
    buffer.resize(len + SLACK, 0.0);
    let skip = floats_to_line(&buffer);
    Array1::from_vec(buffer)
        .slice_move(s![skip..skip + len])
        .into_shape_with_order((rows, cols))
        .expect("a contiguous slice of rows · cols values")
}

/// How many of `buffer`'s first floats to skip so the next starts a cache
/// line: at most [`SLACK`]. (`align_offset` may in principle decline; the
/// data is then merely unaligned, never out of bounds.)
pub(crate) fn floats_to_line(buffer: &[f32]) -> usize {
    buffer.as_ptr().align_offset(LINE_BYTES).min(SLACK)
}

/// A `rows × cols` array of zeros, its first value 64-byte aligned.
pub fn zeros(rows: usize, cols: usize) -> Array2<f32> {
    array_in(Vec::new(), rows, cols)
}

/// A `rows × cols` array of the values `f` returns in row-major order (as
/// ndarray's `from_shape_simple_fn`), its first value 64-byte aligned.
pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut() -> f32) -> Array2<f32> {
    let mut array = zeros(rows, cols);
    array.iter_mut().for_each(|v| *v = f());
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_start_on_a_line_and_reuse_their_buffer() {
        let mut buffer = Vec::new();
        for (rows, cols) in [(0, 0), (1, 1), (3, 48), (784, 52), (7, 0), (100, 300)] {
            let mut a = array_in(buffer, rows, cols);
            assert_eq!(a.dim(), (rows, cols));
            assert!(a.is_standard_layout());
            if rows * cols > 0 {
                assert_eq!(a.as_ptr() as usize % LINE_BYTES, 0, "{rows}×{cols}");
            }
            a.fill(1.0);
            assert_eq!(a.sum(), (rows * cols) as f32);
            let (vec, offset) = a.into_raw_vec_and_offset();
            assert!(offset.unwrap_or(0) <= SLACK);
            buffer = vec;
        }
    }

    #[test]
    fn zeros_are_zero_and_from_fn_fills_in_row_major_order() {
        let a = zeros(5, 17);
        assert_eq!(a.dim(), (5, 17));
        assert!(a.iter().all(|&v| v == 0.0));
        let mut next = 0.0;
        let b = from_fn(2, 3, || {
            next += 1.0;
            next
        });
        assert_eq!(b, ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    }
}

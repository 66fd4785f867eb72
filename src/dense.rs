//! Dense matrix products for dense layers and for comparisons with the sparse path.
//!
//! ndarray's `general_mat_mul` runs matrixmultiply's packed, SIMD sgemm on one
//! thread (its own threading is off so that rayon is the only thread pool).
//! [`gemm`] adds parallelism the same way the sparse kernels do: it splits the
//! output into blocks of rows, one sgemm each. Each output element is still
//! computed by one sgemm call with the same summation order, so the result
//! does not depend on the number of threads.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};

/// Below this many multiply-adds a product runs on one thread.
const MIN_PARALLEL_WORK: usize = 1 << 19;

/// `c = alpha · a · b + beta · c`, in parallel over blocks of `c`.
///
/// `c` is cut into one block per thread along its longer side. Each block is
/// one sgemm, which packs its slice of one operand and *all* of the other, so
/// more blocks than threads would only repeat that packing.
///
/// # Panics
/// If the shapes do not fit: `a` is `m × k`, `b` is `k × n`, `c` is `m × n`.
pub fn gemm(alpha: f32, a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    assert_eq!(
        a.ncols(),
        b.nrows(),
        "gemm: a is {:?}, b is {:?}",
        a.dim(),
        b.dim()
    );
    assert_eq!(
        c.dim(),
        (a.nrows(), b.ncols()),
        "gemm: c has the wrong shape"
    );
    let work = a.nrows() * a.ncols() * b.ncols();
    let blocks = if work < MIN_PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads()
    };
    gemm_in_blocks(alpha, a, b, beta, c, blocks);
}

/// Splits `c` in two (rounded to sgemm's 16-wide tiles), `blocks` shared
/// between the halves, until each part is one block.
fn gemm_in_blocks(
    alpha: f32,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    beta: f32,
    mut c: ArrayViewMut2<f32>,
    blocks: usize,
) {
    let (m, n) = c.dim();
    let longer = m.max(n);
    if blocks < 2 || longer < 32 {
        general_mat_mul(alpha, &a, &b, beta, &mut c);
        return;
    }
    let first_blocks = blocks / 2;
    let split = (longer * first_blocks / blocks)
        .next_multiple_of(16)
        .min(longer - 16);
    let (c_first, c_second) = if m >= n {
        c.split_at(Axis(0), split)
    } else {
        c.split_at(Axis(1), split)
    };
    let ((a_first, a_second), (b_first, b_second)) = if m >= n {
        (a.split_at(Axis(0), split), (b, b))
    } else {
        ((a, a), b.split_at(Axis(1), split))
    };
    rayon::join(
        || gemm_in_blocks(alpha, a_first, b_first, beta, c_first, first_blocks),
        || {
            gemm_in_blocks(
                alpha,
                a_second,
                b_second,
                beta,
                c_second,
                blocks - first_blocks,
            )
        },
    );
}

/// The sum of `values` with 16 independent partial sums (so the loop
/// vectorises), added as a tree: a fixed order, so the result is deterministic.
pub fn sum(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut partial = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += v;
        }
    }
    let eight: [f32; 8] = std::array::from_fn(|i| partial[i] + partial[i + 8]);
    let four: [f32; 4] = std::array::from_fn(|i| eight[i] + eight[i + 4]);
    (four[0] + four[2]) + (four[1] + four[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn sum_adds_every_value() {
        for n in [0, 1, 15, 16, 17, 100, 1000] {
            let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            let expected: f32 = values.iter().sum();
            assert_eq!(sum(&values), expected, "n = {n}");
        }
    }

    #[test]
    fn blocked_gemm_matches_one_call_bit_for_bit() {
        for (m, k, n) in [(300, 200, 90), (90, 200, 300), (33, 7, 40)] {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.3);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.37);
            let mut expected = Array2::from_elem((m, n), 1.0);
            general_mat_mul(0.5, &a, &b, 2.0, &mut expected);
            for blocks in [2, 3, 4] {
                let mut c = Array2::from_elem((m, n), 1.0);
                gemm_in_blocks(0.5, a.view(), b.view(), 2.0, c.view_mut(), blocks);
                assert_eq!(c, expected, "{m}×{k}×{n} in {blocks} blocks");
            }
        }
    }
}

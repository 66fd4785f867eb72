//! The three sparse kernels of a training step, in the batch-inner layout.
//!
//! Activations are `features × batch`, row-major, so each feature's values
//! over the batch are one contiguous row. Then every stored weight drives one
//! contiguous, vectorisable loop over the batch:
//!
//! | kernel | computes | per stored weight |
//! |---|---|---|
//! | [`spmm`] | `Y = W·X` (forward) | AXPY: `Y[r,:] += w · X[c,:]` |
//! | [`spmm_transposed`] | `dX = Wᵀ·dY` (input gradient) | AXPY: `dX[c,:] += w · dY[r,:]` |
//! | [`sddmm`] | `dW[r,c] = dY[r,:] · X[c,:]` at the stored `(r,c)` only | a dot product |
//!
//! Each does `2 · nnz · batch` useful FLOPs and reads one batch row of `4 · batch`
//! bytes per stored weight (plus the weight and its column index, 12 bytes);
//! the output row being accumulated stays in L1. Cost is `O(nnz · batch)`:
//! missing weights cost nothing.
//!
//! Parallelism: the output is split into disjoint row ranges (rows of `Y`,
//! rows of `dX` via the transposed index, rows of `dW`), so threads never write
//! the same memory and need no atomics. Every output element is computed by
//! one thread in a fixed order, so results are bit-identical for any number of
//! threads. Small problems run on the calling thread: a rayon dispatch costs a
//! few microseconds, more than a 100×300 layer at 2 % density takes.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2};

use super::matrix::SparseMatrix;

/// Below this many multiply-adds a range of rows is not split further.
/// Measured: at 2¹⁶ one task runs for ~5 µs, a few times rayon's dispatch cost.
const MIN_TASK_WORK: usize = 1 << 16;

/// `y = w · x`: `x` is `cols × batch`, `y` is `rows × batch` (overwritten).
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn spmm(w: &SparseMatrix, x: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
    let batch = x.ncols();
    assert_eq!(
        x.nrows(),
        w.cols(),
        "spmm: x has {} rows, W has {} columns",
        x.nrows(),
        w.cols()
    );
    assert_eq!(y.dim(), (w.rows(), batch), "spmm: y has the wrong shape");
    let x = x
        .as_slice()
        .expect("spmm: x must be row-major and contiguous");
    let y = y
        .as_slice_mut()
        .expect("spmm: y must be row-major and contiguous");
    let (indptr, indices, values) = (w.indptr(), w.indices(), w.values());
    for_row_ranges(
        0..w.rows(),
        indptr,
        batch,
        RowOutput::Fixed(batch),
        y,
        &|rows, y| {
            for (r, y_row) in rows.zip(y.chunks_exact_mut(batch)) {
                let entries = (indptr[r]..indptr[r + 1]).map(|k| (values[k], indices[k]));
                weighted_sum_of_rows(entries, x, y_row);
            }
        },
    );
}

/// `dx = wᵀ · dy`: `dy` is `rows × batch`, `dx` is `cols × batch` (overwritten).
///
/// Runs over the columns of `w` with the transposed index, so each output row
/// is again a gather owned by one thread.
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn spmm_transposed(w: &SparseMatrix, dy: ArrayView2<f32>, mut dx: ArrayViewMut2<f32>) {
    let batch = dy.ncols();
    assert_eq!(
        dy.nrows(),
        w.rows(),
        "spmm_transposed: dy has {} rows, W has {} rows",
        dy.nrows(),
        w.rows()
    );
    assert_eq!(
        dx.dim(),
        (w.cols(), batch),
        "spmm_transposed: dx has the wrong shape"
    );
    let dy = dy
        .as_slice()
        .expect("spmm_transposed: dy must be row-major and contiguous");
    let dx = dx
        .as_slice_mut()
        .expect("spmm_transposed: dx must be row-major and contiguous");
    let t = w.transpose_index();
    let values = w.values();
    let output = RowOutput::Fixed(batch);
    for_row_ranges(0..w.cols(), &t.col_ptr, batch, output, dx, &|cols, dx| {
        for (c, dx_row) in cols.zip(dx.chunks_exact_mut(batch)) {
            let entries =
                (t.col_ptr[c]..t.col_ptr[c + 1]).map(|k| (values[t.value_pos[k]], t.rows[k]));
            weighted_sum_of_rows(entries, dy, dx_row);
        }
    });
}

/// The weight gradient at the stored entries only ("sampled dense-dense matrix
/// product"): `grad[k] = dy[r,:] · x[c,:]` for the `k`-th stored entry `(r, c)`.
///
/// `dy` is `rows × batch`, `x` is `cols × batch`, `grad` has `nnz` values
/// aligned with `w.values()` (overwritten).
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn sddmm(w: &SparseMatrix, dy: ArrayView2<f32>, x: ArrayView2<f32>, grad: &mut [f32]) {
    let batch = dy.ncols();
    assert_eq!(
        dy.nrows(),
        w.rows(),
        "sddmm: dy has {} rows, W has {} rows",
        dy.nrows(),
        w.rows()
    );
    assert_eq!(x.dim(), (w.cols(), batch), "sddmm: x has the wrong shape");
    assert_eq!(
        grad.len(),
        w.nnz(),
        "sddmm: grad must hold one value per stored entry"
    );
    let dy = dy
        .as_slice()
        .expect("sddmm: dy must be row-major and contiguous");
    let x = x
        .as_slice()
        .expect("sddmm: x must be row-major and contiguous");
    let (indptr, indices) = (w.indptr(), w.indices());
    let output = RowOutput::Ragged(indptr);
    for_row_ranges(0..w.rows(), indptr, batch, output, grad, &|rows, grad| {
        let first = indptr[rows.start];
        for r in rows {
            let dy_row = &dy[r * batch..][..batch];
            let x_row = |k: usize| &x[indices[k] * batch..][..batch];
            // Four entries per pass share each load of `dy_row`.
            let mut k = indptr[r];
            while k + 4 <= indptr[r + 1] {
                let sums = dot4(dy_row, [x_row(k), x_row(k + 1), x_row(k + 2), x_row(k + 3)]);
                grad[k - first..][..4].copy_from_slice(&sums);
                k += 4;
            }
            for k in k..indptr[r + 1] {
                grad[k - first] = dot4(dy_row, [x_row(k); 4])[0];
            }
        }
    });
}

/// Where each row's output lies in the output array.
#[derive(Clone, Copy)]
enum RowOutput<'a> {
    /// Every row owns `n` consecutive values (a batch row of `Y` or `dX`).
    Fixed(usize),
    /// Row `r` owns `prefix[r]..prefix[r + 1]` (one gradient value per entry).
    Ragged(&'a [usize]),
}

impl RowOutput<'_> {
    fn start(self, r: usize) -> usize {
        match self {
            RowOutput::Fixed(n) => r * n,
            RowOutput::Ragged(prefix) => prefix[r],
        }
    }
}

/// Splits `out` (the output of `rows`) into row ranges and runs `kernel` on
/// each, in parallel when big enough. Row `r` costs
/// `(entries_prefix[r + 1] - entries_prefix[r]) · batch` multiply-adds; the
/// split balances that work, not the row count, so rows holding most of the
/// entries do not all land on one thread.
fn for_row_ranges<F>(
    rows: Range<usize>,
    entries_prefix: &[usize],
    batch: usize,
    output: RowOutput,
    out: &mut [f32],
    kernel: &F,
) where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let (first, last) = (entries_prefix[rows.start], entries_prefix[rows.end]);
    if rows.len() < 2 || (last - first) * batch < 2 * MIN_TASK_WORK {
        kernel(rows, out);
        return;
    }
    // The first row whose prefix reaches half the entries, strictly inside the range.
    let half = first + (last - first) / 2;
    let mid = rows.start
        + entries_prefix[rows.clone()]
            .partition_point(|&p| p < half)
            .clamp(1, rows.len() - 1);
    let (low, high) = out.split_at_mut(output.start(mid) - output.start(rows.start));
    rayon::join(
        || for_row_ranges(rows.start..mid, entries_prefix, batch, output, low, kernel),
        || for_row_ranges(mid..rows.end, entries_prefix, batch, output, high, kernel),
    );
}

/// `out = Σ w · source_row(i)` over the `(w, i)` of `entries`, where row `i`
/// of `source` is `source[i * out.len()..][..out.len()]`.
///
/// The batch is cut into blocks of 64, 32 and 16 columns; each block's sums
/// live in a fixed-size array the compiler keeps in vector registers while
/// the entries stream by, so the output is written once per block instead of
/// loaded and stored once per entry. A ragged end is covered by one more
/// 16-column block that overlaps the previous one: a column's sum is the same
/// computation in either block, so the overlap rewrites identical values and
/// no slow scalar tail is needed (batches under 16 take a plain loop).
#[inline(always)]
fn weighted_sum_of_rows(
    entries: impl Iterator<Item = (f32, usize)> + Clone,
    source: &[f32],
    out: &mut [f32],
) {
    let batch = out.len();
    if batch < 16 {
        out.fill(0.0);
        for (w, i) in entries {
            for (o, &v) in out.iter_mut().zip(&source[i * batch..][..batch]) {
                *o = multiply_add(w, v, *o);
            }
        }
        return;
    }
    let mut start = 0;
    while start + 64 <= batch {
        weighted_sum_block::<64>(entries.clone(), source, start, out);
        start += 64;
    }
    if start + 32 <= batch {
        weighted_sum_block::<32>(entries.clone(), source, start, out);
        start += 32;
    }
    if start + 16 <= batch {
        weighted_sum_block::<16>(entries.clone(), source, start, out);
        start += 16;
    }
    if start < batch {
        weighted_sum_block::<16>(entries, source, batch - 16, out);
    }
}

/// One block of [`weighted_sum_of_rows`]: columns `start..start + N`.
///
/// Entries alternate between two sets of sums, added at the end: a set
/// then takes an FMA every other entry, so the FMA latency (4 cycles) no
/// longer limits a narrow block to one entry per 4 cycles.
#[inline(always)]
fn weighted_sum_block<const N: usize>(
    mut entries: impl Iterator<Item = (f32, usize)>,
    source: &[f32],
    start: usize,
    out: &mut [f32],
) {
    let batch = out.len();
    let row = |i: usize| -> &[f32; N] {
        source[i * batch + start..][..N]
            .try_into()
            .expect("N values")
    };
    let (mut even, mut odd) = ([0.0f32; N], [0.0f32; N]);
    while let Some((w, i)) = entries.next() {
        let x = row(i);
        for l in 0..N {
            even[l] = multiply_add(w, x[l], even[l]);
        }
        let Some((w, i)) = entries.next() else { break };
        let x = row(i);
        for l in 0..N {
            odd[l] = multiply_add(w, x[l], odd[l]);
        }
    }
    for ((o, e), d) in out[start..start + N].iter_mut().zip(even).zip(odd) {
        *o = e + d;
    }
}

/// The dot products of `a` with each of four rows `b`, sharing the loads of `a`.
///
/// Each product keeps 16 partial sums so the loop vectorises (one running sum
/// is a serial dependency the compiler may not reorder), then adds them as a
/// tree in a fixed order: the result does not depend on which entries share a call.
#[inline(always)]
fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    const LANES: usize = 16;
    let block = |row: &[f32], start: usize| -> [f32; LANES] {
        row[start..][..LANES].try_into().expect("LANES values")
    };
    let (mut s0, mut s1, mut s2, mut s3) = (
        [0.0f32; LANES],
        [0.0f32; LANES],
        [0.0f32; LANES],
        [0.0f32; LANES],
    );
    let full = a.len() / LANES * LANES;
    for start in (0..full).step_by(LANES) {
        let a_block = block(a, start);
        let (b0, b1, b2, b3) = (
            block(b[0], start),
            block(b[1], start),
            block(b[2], start),
            block(b[3], start),
        );
        for l in 0..LANES {
            s0[l] = multiply_add(a_block[l], b0[l], s0[l]);
            s1[l] = multiply_add(a_block[l], b1[l], s1[l]);
            s2[l] = multiply_add(a_block[l], b2[l], s2[l]);
            s3[l] = multiply_add(a_block[l], b3[l], s3[l]);
        }
    }
    let finish = |sums: [f32; LANES], row: &[f32]| -> f32 {
        let tail: f32 = a[full..].iter().zip(&row[full..]).map(|(x, y)| x * y).sum();
        sum_lanes(sums) + tail
    };
    [
        finish(s0, b[0]),
        finish(s1, b[1]),
        finish(s2, b[2]),
        finish(s3, b[3]),
    ]
}

/// The sum of 16 lanes as a tree (halves added pairwise), a fixed order with
/// 4 dependent adds instead of 15.
#[inline(always)]
fn sum_lanes(lanes: [f32; 16]) -> f32 {
    let eight: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
    let four: [f32; 4] = std::array::from_fn(|i| eight[i] + eight[i + 4]);
    (four[0] + four[2]) + (four[1] + four[3])
}

/// `a · b + c`, fused into one instruction where the target has FMA (then it
/// is also one rounding instead of two). Without FMA, `mul_add` would be a
/// slow library call, so we multiply and add.
#[inline(always)]
fn multiply_add(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn spmm_matches_the_dense_product() {
        let w = array![[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]];
        let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let sparse = SparseMatrix::from_dense(w.view());
        let mut y = Array2::from_elem((3, 2), f32::NAN);
        spmm(&sparse, x.view(), y.view_mut());
        assert_eq!(y, w.dot(&x));

        let mut dx = Array2::from_elem((3, 2), f32::NAN);
        spmm_transposed(&sparse, x.view(), dx.view_mut());
        assert_eq!(dx, w.t().dot(&x));

        let mut grad = vec![f32::NAN; 3];
        sddmm(&sparse, x.view(), x.view(), &mut grad);
        let full = x.dot(&x.t());
        assert_eq!(grad, vec![full[(0, 0)], full[(0, 2)], full[(2, 1)]]);
    }

    #[test]
    fn dot4_handles_tails_longer_and_shorter_than_a_lane_block() {
        for n in [0, 1, 15, 16, 17, 100] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let expected: f32 = a.iter().map(|x| x * x).sum();
            assert_eq!(dot4(&a, [&a; 4]), [expected; 4], "n = {n}");
        }
    }
}

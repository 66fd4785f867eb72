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
//! bytes per stored weight (plus the weight and its column index); the output
//! row being accumulated stays in registers. Cost is `O(nnz · batch)`: missing
//! weights cost nothing. The inner loops are in `sparse::simd`, in explicit
//! AVX-512 or AVX2 where the CPU has them; `*_using` picks one by hand (for
//! tests and benchmarks), the plain names use the best available.
//!
//! Parallelism: the output is split into disjoint blocks (rows of `Y`, rows
//! of `dX` via the transposed index, rows of `dW`; and for a convolution's
//! wide im2col matrix, batch columns too), so threads never write the same
//! memory and need no atomics. Every output element is computed by one
//! thread with the same operations in the same order, so results are
//! bit-identical for any number of threads and any instruction set. Small
//! problems run on the calling thread: a rayon dispatch costs a few
//! microseconds, more than a 100×300 layer at 2 % density takes.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use super::matrix::SparseMatrix;
use super::simd::{
    DotBlock, EpilogueGrads, InstructionSet, SumBlock, dot_products, epilogue_grads, weighted_sums,
};

/// Below this many multiply-adds a block is not split further.
/// Measured: at 2¹⁶ one task runs for ~5 µs, a few times rayon's dispatch cost.
const MIN_TASK_WORK: usize = 1 << 16;

/// A block's columns are split (rather than its rows) only when there are at
/// least twice this many: a convolution's im2col matrix has `batch · H · W`
/// columns and few rows, a linear layer's input just the batch.
const MIN_SPLIT_COLUMNS: usize = 512;

/// What a forward product does to each output value before storing it: add
/// its row's bias, then clamp at zero (ReLU). Done while the sums are still
/// in registers, a layer's `relu(W·x + b)` writes its output once instead of
/// making three passes over it; the arithmetic is the same as the three
/// passes', so the results are identical.
///
/// ```
/// use ndarray::{Array2, array};
/// use sparsetrain::sparse::{Epilogue, SparseMatrix, spmm_then};
///
/// let w = SparseMatrix::from_dense(array![[1.0f32, 0.0], [0.0, -1.0]].view());
/// let x = array![[2.0f32], [3.0]];
/// let mut y = Array2::zeros((2, 1));
/// let bias = [0.5, 1.0];
/// spmm_then(&w, x.view(), Epilogue { bias: Some(&bias), relu: true }, y.view_mut());
/// assert_eq!(y, array![[2.5], [0.0]]); // relu(2 + 0.5), relu(−3 + 1)
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Epilogue<'a> {
    /// One value per output row, added to every column.
    pub bias: Option<&'a [f32]>,
    /// `max(v, 0)` after the bias (`0` for NaN, as x86's `max` gives).
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Applies the epilogue to `y` in place, for products computed elsewhere
    /// (sgemm): the same operations as the fused kernels, in the same order.
    ///
    /// # Panics
    /// If the bias does not have one value per row of `y`.
    pub fn apply(&self, mut y: ArrayViewMut2<f32>) {
        if let Some(bias) = self.bias {
            assert_eq!(bias.len(), y.nrows(), "one bias per output row");
        }
        if *self == Epilogue::default() {
            return;
        }
        for (r, mut row) in y.rows_mut().into_iter().enumerate() {
            let bias = self.bias.map(|b| b[r]);
            for v in row.iter_mut() {
                if let Some(bias) = bias {
                    *v += bias;
                }
                if self.relu {
                    *v = relu(*v);
                }
            }
        }
    }
}

/// The backward pass of an [`Epilogue`], in place: `dy ← dy ⊙ [y > 0]` if
/// the forward applied a ReLU (`relu_output` is its output `y`), then
/// `bias_grad[r] = Σ dy[r, :]` if it added a bias. One pass over `dy`, row by
/// row, in SIMD registers; the sums are [`crate::dense::sum`]'s, to the bit.
///
/// ```
/// use ndarray::array;
/// use sparsetrain::sparse::epilogue_backward;
///
/// let y = array![[2.5f32, 0.0], [0.0, 1.0]]; // a ReLU's output
/// let mut dy = array![[1.0f32, 2.0], [3.0, 4.0]];
/// let mut bias_grad = [0.0; 2];
/// epilogue_backward(dy.view_mut(), Some(y.view()), Some(&mut bias_grad));
/// assert_eq!(dy, array![[1.0, 0.0], [0.0, 4.0]]);
/// assert_eq!(bias_grad, [1.0, 4.0]);
/// ```
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn epilogue_backward(
    dy: ArrayViewMut2<f32>,
    relu_output: Option<ArrayView2<f32>>,
    bias_grad: Option<&mut [f32]>,
) {
    epilogue_backward_using(InstructionSet::best(), dy, relu_output, bias_grad);
}

/// [`epilogue_backward`] with the inner loops of `isa`.
///
/// # Panics
/// As [`epilogue_backward`], and if this CPU lacks `isa`.
pub fn epilogue_backward_using(
    isa: InstructionSet,
    mut dy: ArrayViewMut2<f32>,
    relu_output: Option<ArrayView2<f32>>,
    bias_grad: Option<&mut [f32]>,
) {
    let (rows, cols) = dy.dim();
    if let Some(y) = &relu_output {
        assert_eq!(
            y.dim(),
            (rows, cols),
            "epilogue_backward: y and dy differ in shape"
        );
    }
    if let Some(bias_grad) = &bias_grad {
        assert_eq!(bias_grad.len(), rows, "epilogue_backward: one bias per row");
    }
    let block = EpilogueGrads {
        dy: dy
            .as_slice_mut()
            .expect("epilogue_backward: dy must be row-major and contiguous"),
        relu_output: relu_output.map(|y| {
            y.to_slice()
                .expect("epilogue_backward: y must be row-major and contiguous")
        }),
        bias_grad,
        rows,
        cols,
    };
    epilogue_grads(isa, block);
}

/// `max(v, 0)` as the kernels compute it: `v` if `v > 0`, else `0` (also for NaN).
pub fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// `y = w · x`: `x` is `cols × batch`, `y` is `rows × batch` (overwritten).
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn spmm(w: &SparseMatrix, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) {
    spmm_using(InstructionSet::best(), w, x, y);
}

/// [`spmm`] with the inner loops of `isa`.
///
/// # Panics
/// As [`spmm`], and if this CPU lacks `isa`.
pub fn spmm_using(
    isa: InstructionSet,
    w: &SparseMatrix,
    x: ArrayView2<f32>,
    y: ArrayViewMut2<f32>,
) {
    spmm_then_using(isa, w, x, Epilogue::default(), y);
}

/// `y = epilogue(w · x)`: [`spmm`] with a bias and ReLU applied before the
/// output is stored.
///
/// # Panics
/// As [`spmm`], and if the bias does not have one value per row of `w`.
pub fn spmm_then(w: &SparseMatrix, x: ArrayView2<f32>, epilogue: Epilogue, y: ArrayViewMut2<f32>) {
    spmm_then_using(InstructionSet::best(), w, x, epilogue, y);
}

/// [`spmm_then`] with the inner loops of `isa`.
///
/// # Panics
/// As [`spmm_then`], and if this CPU lacks `isa`.
pub fn spmm_then_using(
    isa: InstructionSet,
    w: &SparseMatrix,
    x: ArrayView2<f32>,
    epilogue: Epilogue,
    y: ArrayViewMut2<f32>,
) {
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), w.rows(), "spmm: one bias per row of W");
    }
    let batch = x.ncols();
    assert_eq!(
        x.nrows(),
        w.cols(),
        "spmm: x has {} rows, W has {} columns",
        x.nrows(),
        w.cols()
    );
    assert_eq!(y.dim(), (w.rows(), batch), "spmm: y has the wrong shape");
    assert!(
        y.is_standard_layout(),
        "spmm: y must be row-major and contiguous"
    );
    let x = x
        .as_slice()
        .expect("spmm: x must be row-major and contiguous");
    let (indptr, indices, values) = (w.indptr(), w.indices(), w.values());
    let entries = |r: usize| (indptr[r]..indptr[r + 1]).map(|k| (values[k], indices[k]));
    for_blocks(0..w.rows(), 0..batch, indptr, y, &|rows, cols, out| {
        let block = SumBlock {
            rows,
            cols,
            source: x,
            stride: batch,
            out,
            accumulate: false,
            epilogue,
        };
        weighted_sums(isa, block, &entries);
    });
}

/// `dx = wᵀ · dy`: `dy` is `rows × batch`, `dx` is `cols × batch` (overwritten).
///
/// Runs over the columns of `w` with the transposed index, so each output row
/// is again a gather owned by one thread.
///
/// # Panics
/// If the shapes disagree or an array is not in standard (row-major) layout.
pub fn spmm_transposed(w: &SparseMatrix, dy: ArrayView2<f32>, dx: ArrayViewMut2<f32>) {
    spmm_transposed_using(InstructionSet::best(), w, dy, dx);
}

/// [`spmm_transposed`] with the inner loops of `isa`.
///
/// # Panics
/// As [`spmm_transposed`], and if this CPU lacks `isa`.
pub fn spmm_transposed_using(
    isa: InstructionSet,
    w: &SparseMatrix,
    dy: ArrayView2<f32>,
    dx: ArrayViewMut2<f32>,
) {
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
    assert!(
        dx.is_standard_layout(),
        "spmm_transposed: dx must be row-major and contiguous"
    );
    let dy = dy
        .as_slice()
        .expect("spmm_transposed: dy must be row-major and contiguous");
    let t = w.transpose_index();
    let values = w.values();
    let entries =
        |c: usize| (t.col_ptr[c]..t.col_ptr[c + 1]).map(|k| (values[t.value_pos[k]], t.rows[k]));
    for_blocks(
        0..w.cols(),
        0..batch,
        &t.col_ptr,
        dx,
        &|cols_of_w, batch_cols, out| {
            let block = SumBlock {
                rows: cols_of_w,
                cols: batch_cols,
                source: dy,
                stride: batch,
                out,
                accumulate: false,
                epilogue: Epilogue::default(),
            };
            weighted_sums(isa, block, &entries);
        },
    );
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
    sddmm_using(InstructionSet::best(), w, dy, x, grad);
}

/// [`sddmm`] with the inner loops of `isa`.
///
/// # Panics
/// As [`sddmm`], and if this CPU lacks `isa`.
pub fn sddmm_using(
    isa: InstructionSet,
    w: &SparseMatrix,
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    grad: &mut [f32],
) {
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
    for_entry_ranges(0..w.rows(), indptr, batch, grad, &|rows, grad| {
        let block = DotBlock {
            rows,
            indptr,
            indices,
            dy,
            x,
            batch,
        };
        dot_products(isa, block, grad);
    });
}

/// `out[j, :] += Σ w · source[i, :]` over the `(w, i)` of `entries(j)`, for
/// every row `j` of `out`, on the calling thread: [`spmm`]'s inner loop,
/// accumulating, for callers that make their entries on the fly (the dense
/// momentum of missing weights, in `crate::sparsity`).
///
/// # Panics
/// If `source` and `out` differ in width, an array is not row-major, or an
/// entry names a row beyond `source`.
pub(crate) fn add_weighted_rows<I>(
    entries: &impl Fn(usize) -> I,
    source: ArrayView2<f32>,
    out: ArrayViewMut2<f32>,
) where
    I: Iterator<Item = (f32, usize)> + Clone,
{
    let width = source.ncols();
    assert_eq!(out.ncols(), width, "add_weighted_rows: widths differ");
    let block = SumBlock {
        rows: 0..out.nrows(),
        cols: 0..width,
        source: source
            .to_slice()
            .expect("add_weighted_rows: source must be row-major and contiguous"),
        stride: width,
        out,
        accumulate: true,
        epilogue: Epilogue::default(),
    };
    weighted_sums(InstructionSet::best(), block, entries);
}

/// Splits `out` (rows `rows`, columns `cols` of the output) into blocks and
/// runs `kernel` on each, in parallel when big enough. Row `r` costs
/// `(entries_prefix[r + 1] − entries_prefix[r]) · columns` multiply-adds.
fn for_blocks<F>(
    rows: Range<usize>,
    cols: Range<usize>,
    entries_prefix: &[usize],
    out: ArrayViewMut2<f32>,
    kernel: &F,
) where
    F: Fn(Range<usize>, Range<usize>, ArrayViewMut2<f32>) + Sync,
{
    let entries = entries_prefix[rows.end] - entries_prefix[rows.start];
    if entries * cols.len() < 2 * MIN_TASK_WORK {
        kernel(rows, cols, out);
    } else if cols.len() >= 2 * MIN_SPLIT_COLUMNS {
        // Halves rounded to 128 columns, a whole chunk of AVX-512 sums.
        let mid = cols.start + cols.len() / 2 / 128 * 128;
        let (left, right) = out.split_at(Axis(1), mid - cols.start);
        rayon::join(
            || for_blocks(rows.clone(), cols.start..mid, entries_prefix, left, kernel),
            || for_blocks(rows.clone(), mid..cols.end, entries_prefix, right, kernel),
        );
    } else if rows.len() >= 2 {
        let mid = middle_by_work(rows.clone(), entries_prefix);
        let (top, bottom) = out.split_at(Axis(0), mid - rows.start);
        rayon::join(
            || for_blocks(rows.start..mid, cols.clone(), entries_prefix, top, kernel),
            || for_blocks(mid..rows.end, cols.clone(), entries_prefix, bottom, kernel),
        );
    } else {
        kernel(rows, cols, out);
    }
}

/// Splits `out` (one value per entry of `rows`) into row ranges and runs
/// `kernel` on each, in parallel when big enough.
fn for_entry_ranges<F>(
    rows: Range<usize>,
    entries_prefix: &[usize],
    batch: usize,
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
    let mid = middle_by_work(rows.clone(), entries_prefix);
    let (low, high) = out.split_at_mut(entries_prefix[mid] - first);
    rayon::join(
        || for_entry_ranges(rows.start..mid, entries_prefix, batch, low, kernel),
        || for_entry_ranges(mid..rows.end, entries_prefix, batch, high, kernel),
    );
}

/// The first row whose prefix reaches half the range's entries, strictly
/// inside the range (which has at least two rows): the split balances work,
/// not row counts, so rows holding most of the entries do not all land on
/// one thread.
fn middle_by_work(rows: Range<usize>, entries_prefix: &[usize]) -> usize {
    let (first, last) = (entries_prefix[rows.start], entries_prefix[rows.end]);
    let half = first + (last - first) / 2;
    rows.start
        + entries_prefix[rows.clone()]
            .partition_point(|&p| p < half)
            .clamp(1, rows.len() - 1)
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

    proptest::proptest! {
        /// `add_weighted_rows` adds to what `out` holds the same sums as a
        /// dense product: rows with no entries, rows that name every source
        /// row (full density), some in between, and widths around the
        /// vectors' and the four-lane tail's.
        #[test]
        fn add_weighted_rows_adds_the_dense_product(
            (sources, outputs, width) in (0usize..9, 0usize..6, 1usize..40),
            density in proptest::prop_oneof![
                proptest::strategy::Just(0.0),
                proptest::strategy::Just(1.0),
                0.0..1.0f64
            ],
            seed in 0u64..1000,
        ) {
            let value = |k: usize| ((k as f64 * 0.731 + seed as f64).sin() * 2.0) as f32;
            let source = Array2::from_shape_fn((sources, width), |(i, c)| value(i * 41 + c));
            let weights = Array2::from_shape_fn((outputs, sources), |(j, i)| {
                let k = 7 * j + 3 * i;
                let kept = ((k as f64 * 0.377 + seed as f64 * 0.61).sin() + 1.0) / 2.0 < density;
                if kept { value(1000 + k) } else { 0.0 }
            });
            let before = Array2::from_shape_fn((outputs, width), |(j, c)| value(5000 + j * 13 + c));
            let lists: Vec<Vec<(f32, usize)>> = (weights.rows().into_iter())
                .map(|row| (0..sources).filter(|&i| row[i] != 0.0).map(|i| (row[i], i)).collect())
                .collect();
            let entries = |j: usize| lists[j].iter().copied();
            let mut out = before.clone();
            add_weighted_rows(&entries, source.view(), out.view_mut());
            let expected = &before + &weights.dot(&source);
            for (got, want) in out.iter().zip(&expected) {
                proptest::prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} vs {}", got, want);
            }
        }
    }
}

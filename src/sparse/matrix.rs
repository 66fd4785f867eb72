//! [`SparseMatrix`]: a CSR weight matrix and the index that lets us multiply by its transpose.
//!
//! The values live in one place, sprs' `CsMat<f32>`, in row-major (CSR) order.
//! Training needs `W·X` (forward, a gather over each row of `W`) and `Wᵀ·dY`
//! (input gradient, a gather over each *column* of `W`). A second copy of the
//! values in column order would have to be kept in sync after every optimizer
//! step; instead [`TransposeIndex`] stores `Wᵀ`'s CSR structure together with,
//! for every entry, the position of its value in `W`'s value array. The input
//! gradient then reads `W`'s values through that permutation.
//!
//! Structure is never mutated in place: pruning and regrowth build a new
//! matrix with [`SparseMatrix::edit_structure`], which also reports where each
//! new value came from so that per-value state (optimizer momentum) can be
//! carried over with [`ValueOrigins::remap`].

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;
use sprs::CsMat;

use crate::error::{Error, Result};

/// The channels of a weight a sparse computation skips: filters with no
/// stored weight produce nothing to compute, input channels no filter reads
/// need no im2col rows and no gradient (for a fully connected layer, neurons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ChannelUsage {
    /// Output channels (rows).
    pub outputs: usize,
    /// Output channels whose filter is entirely empty.
    pub empty_outputs: usize,
    /// Input channels.
    pub inputs: usize,
    /// Input channels no filter reads.
    pub unread_inputs: usize,
}

impl ChannelUsage {
    /// The speed-up over the dense layer from skipping the empty channels
    /// alone, `(C_in · C_out) / ((C_in − unread) · (C_out − empty))`: the
    /// weight side of the estimate the sparse-learning library prints (which
    /// also counts all-zero input activations); infinite for a layer with no
    /// weights left.
    pub fn implied_speedup(&self) -> f64 {
        let used = (self.inputs - self.unread_inputs) * (self.outputs - self.empty_outputs);
        (self.inputs * self.outputs) as f64 / used as f64
    }
}

/// A sparse `rows × cols` matrix of `f32` in CSR form, with a transposed index.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    csr: CsMat<f32>,
    transpose: TransposeIndex,
}

/// `Wᵀ` in CSR form without values: `value_pos` points into `W`'s values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransposeIndex {
    /// `col_ptr[c]..col_ptr[c + 1]` are the entries of column `c` of `W`.
    pub col_ptr: Vec<usize>,
    /// The row of each entry, ascending within a column.
    pub rows: Vec<usize>,
    /// Where each entry's value sits in [`SparseMatrix::values`].
    pub value_pos: Vec<usize>,
}

/// Where each value of an edited matrix came from: `Some(old position)` for a
/// kept entry, `None` for an inserted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueOrigins(pub Vec<Option<usize>>);

impl ValueOrigins {
    /// Carries an array aligned with the old values over to the new structure;
    /// inserted entries get `fill(new position)`.
    pub fn remap(&self, old: &[f32], mut fill: impl FnMut(usize) -> f32) -> Vec<f32> {
        self.0
            .iter()
            .enumerate()
            .map(|(new_pos, origin)| match origin {
                Some(old_pos) => old[*old_pos],
                None => fill(new_pos),
            })
            .collect()
    }
}

impl SparseMatrix {
    /// Builds a matrix from CSR arrays, checking that they describe a valid CSR
    /// matrix: `indptr` has `rows + 1` non-decreasing entries starting at 0,
    /// column indices are in range, sorted and unique within each row.
    pub fn try_from_csr(
        rows: usize,
        cols: usize,
        indptr: Vec<usize>,
        indices: Vec<usize>,
        values: Vec<f32>,
    ) -> Result<Self> {
        // sprs accepts an indptr offset into larger arrays; we index values
        // with raw indptr entries, so they must start at 0.
        if indptr.first() != Some(&0) {
            return Err(Error::InvalidSparse(format!(
                "{rows}×{cols}: indptr must start at 0"
            )));
        }
        let csr = CsMat::try_new((rows, cols), indptr, indices, values)
            .map_err(|(_, _, _, e)| Error::InvalidSparse(format!("{rows}×{cols}: {e}")))?;
        Ok(Self::from_csmat(csr))
    }

    /// An empty (all-zero) matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self::from_csmat(CsMat::zero((rows, cols)))
    }

    /// Exactly `nnz` entries at positions drawn uniformly without replacement,
    /// each valued `value(rng)`.
    ///
    /// This is how sparse layers are born: the dense matrix is never formed,
    /// only the chosen positions.
    pub fn random<R: Rng + ?Sized>(
        rows: usize,
        cols: usize,
        nnz: usize,
        rng: &mut R,
        mut value: impl FnMut(&mut R) -> f32,
    ) -> Result<Self> {
        let total = rows * cols;
        if nnz > total {
            return Err(Error::InvalidSparse(format!(
                "cannot place {nnz} entries in a {rows}×{cols} matrix"
            )));
        }
        let mut positions = rand::seq::index::sample(rng, total, nnz).into_vec();
        positions.sort_unstable();
        let mut indptr = vec![0; rows + 1];
        let mut indices = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        for &p in &positions {
            indptr[p / cols + 1] += 1;
            indices.push(p % cols);
            values.push(value(rng));
        }
        for r in 0..rows {
            indptr[r + 1] += indptr[r];
        }
        Self::try_from_csr(rows, cols, indptr, indices, values)
    }

    /// The non-zero entries of a dense array (tests and small examples).
    pub fn from_dense(dense: ArrayView2<f32>) -> Self {
        let (rows, cols) = dense.dim();
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::new();
        let mut values = Vec::new();
        indptr.push(0);
        for row in dense.rows() {
            for (c, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    indices.push(c);
                    values.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Self::try_from_csr(rows, cols, indptr, indices, values)
            .expect("a dense array's non-zeros form a valid CSR matrix")
    }

    fn from_csmat(csr: CsMat<f32>) -> Self {
        let transpose = TransposeIndex::of(&csr);
        SparseMatrix { csr, transpose }
    }

    /// The dense equivalent, for tests and inspection. Training never calls
    /// it (the dense-kernel path fills a reused buffer with [`Self::scatter_into`]).
    pub fn to_dense(&self) -> Array2<f32> {
        let mut dense = Array2::zeros(self.shape());
        self.scatter_into(dense.view_mut());
        dense
    }

    /// Writes the matrix into `out`: the stored values at their positions,
    /// zero everywhere else.
    ///
    /// # Panics
    /// If `out` is not `rows × cols`.
    pub fn scatter_into(&self, mut out: ArrayViewMut2<f32>) {
        assert_eq!(out.dim(), self.shape(), "scatter_into: wrong shape");
        out.fill(0.0);
        for (r, mut out_row) in out.rows_mut().into_iter().enumerate() {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                out_row[c] = v;
            }
        }
    }

    /// The entries of `dense` at the stored positions, aligned with
    /// [`Self::values`]: the inverse of [`Self::scatter_into`] on the structure.
    ///
    /// # Panics
    /// If `dense` is not `rows × cols` or `out` does not hold `nnz` values.
    pub fn gather_from(&self, dense: ArrayView2<f32>, out: &mut [f32]) {
        assert_eq!(dense.dim(), self.shape(), "gather_from: wrong shape");
        assert_eq!(out.len(), self.nnz(), "gather_from: one value per entry");
        let indptr = self.indptr();
        for (r, dense_row) in dense.rows().into_iter().enumerate() {
            let (first, last) = (indptr[r], indptr[r + 1]);
            for (o, &c) in out[first..last]
                .iter_mut()
                .zip(&self.indices()[first..last])
            {
                *o = dense_row[c];
            }
        }
    }

    /// Number of rows (output features of a layer).
    pub fn rows(&self) -> usize {
        self.csr.rows()
    }

    /// Number of columns (input features of a layer).
    pub fn cols(&self) -> usize {
        self.csr.cols()
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows(), self.cols())
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.csr.nnz()
    }

    /// Stored entries over `rows · cols`.
    pub fn density(&self) -> f64 {
        let total = self.rows() * self.cols();
        if total == 0 {
            0.0
        } else {
            self.nnz() as f64 / total as f64
        }
    }

    /// `indptr[r]..indptr[r + 1]` are row `r`'s entries.
    pub fn indptr(&self) -> &[usize] {
        self.csr.indptr().into_raw_storage()
    }

    /// The column of every entry.
    pub fn indices(&self) -> &[usize] {
        self.csr.indices()
    }

    /// The value of every entry, row by row.
    pub fn values(&self) -> &[f32] {
        self.csr.data()
    }

    /// Mutable values; the structure stays fixed.
    pub fn values_mut(&mut self) -> &mut [f32] {
        self.csr.data_mut()
    }

    /// Row `r`'s column indices and values.
    pub fn row(&self, r: usize) -> (&[usize], &[f32]) {
        let range = self.indptr()[r]..self.indptr()[r + 1];
        (&self.indices()[range.clone()], &self.values()[range])
    }

    /// The value position of entry `(r, c)`, if it is stored (`None` also
    /// outside the matrix).
    pub fn position(&self, r: usize, c: usize) -> Option<usize> {
        if r >= self.rows() {
            return None;
        }
        let start = self.indptr()[r];
        let (columns, _) = self.row(r);
        columns.binary_search(&c).ok().map(|i| start + i)
    }

    /// Rows without any stored entry: output neurons (or channels) cut off from every input.
    pub fn empty_rows(&self) -> usize {
        self.indptr().windows(2).filter(|w| w[0] == w[1]).count()
    }

    /// Columns without any stored entry: inputs no output reads.
    pub fn empty_columns(&self) -> usize {
        self.transpose
            .col_ptr
            .windows(2)
            .filter(|w| w[0] == w[1])
            .count()
    }

    /// Reads the matrix as a filter bank, rows the output channels and
    /// columns `group` (`kh · kw`) per input channel, and counts the channels
    /// a sparse computation skips entirely.
    pub fn channel_usage(&self, group: usize) -> ChannelUsage {
        let group = group.max(1);
        let unread_inputs = self
            .column_counts()
            .chunks(group)
            .filter(|counts| counts.iter().all(|&n| n == 0))
            .count();
        ChannelUsage {
            outputs: self.rows(),
            empty_outputs: self.empty_rows(),
            inputs: self.cols() / group,
            unread_inputs,
        }
    }

    /// The number of stored entries in column `c` (how many outputs read input `c`).
    pub fn column_count(&self, c: usize) -> usize {
        self.transpose.col_ptr[c + 1] - self.transpose.col_ptr[c]
    }

    /// The number of stored entries in each column (how many outputs read each input).
    pub fn column_counts(&self) -> Vec<usize> {
        self.transpose
            .col_ptr
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }

    /// The transposed index used by `Wᵀ·dY`.
    pub fn transpose_index(&self) -> &TransposeIndex {
        &self.transpose
    }

    /// A new matrix without the entries at value positions `remove` and with
    /// zero-valued entries at `insert` (`(row, col)` pairs), plus where each
    /// new value came from.
    ///
    /// `remove` may be in any order; inserting a position that is present and
    /// not removed, inserting twice, or a position outside the matrix is an error.
    pub fn edit_structure(
        &self,
        remove: &[usize],
        insert: &[(usize, usize)],
    ) -> Result<(SparseMatrix, ValueOrigins)> {
        let (rows, cols) = self.shape();
        let mut removed = vec![false; self.nnz()];
        for &pos in remove {
            if pos >= self.nnz() {
                return Err(Error::InvalidSparse(format!(
                    "cannot remove entry {pos} of a matrix with {} entries",
                    self.nnz()
                )));
            }
            removed[pos] = true;
        }
        let mut insert = insert.to_vec();
        insert.sort_unstable();
        if let Some(&(r, c)) = insert.iter().find(|&&(r, c)| r >= rows || c >= cols) {
            return Err(Error::InvalidSparse(format!(
                "cannot insert ({r}, {c}) into a {rows}×{cols} matrix"
            )));
        }

        let new_nnz = self.nnz() + insert.len() - removed.iter().filter(|&&x| x).count();
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::with_capacity(new_nnz);
        let mut origins = Vec::with_capacity(new_nnz);
        indptr.push(0);
        let mut pending = insert.iter().peekable();
        for r in 0..rows {
            let kept = (self.indptr()[r]..self.indptr()[r + 1]).filter(|&k| !removed[k]);
            let mut kept = kept.peekable();
            // Merge the kept entries and the insertions of this row by column.
            loop {
                let next_insert = pending.peek().filter(|(ir, _)| *ir == r).map(|&&(_, c)| c);
                let next_kept = kept.peek().map(|&k| self.indices()[k]);
                match (next_kept, next_insert) {
                    (None, None) => break,
                    (Some(kc), Some(ic)) if kc == ic => {
                        return Err(Error::InvalidSparse(format!(
                            "cannot insert ({r}, {ic}): the entry is already present"
                        )));
                    }
                    (Some(kc), Some(ic)) if ic < kc => {
                        pending.next();
                        indices.push(ic);
                        origins.push(None);
                    }
                    (Some(kc), _) => {
                        indices.push(kc);
                        origins.push(kept.next());
                    }
                    (None, Some(ic)) => {
                        pending.next();
                        indices.push(ic);
                        origins.push(None);
                    }
                }
            }
            indptr.push(indices.len());
        }
        let origins = ValueOrigins(origins);
        let values = origins.remap(self.values(), |_| 0.0);
        // try_from_csr rejects duplicate insertions (unsorted or repeated columns).
        let matrix = Self::try_from_csr(rows, cols, indptr, indices, values)?;
        Ok((matrix, origins))
    }
}

impl TransposeIndex {
    /// Counting sort of the entries by column; rows come out ascending because
    /// we visit the rows in order.
    fn of(csr: &CsMat<f32>) -> Self {
        let indptr = csr.indptr();
        let indptr = indptr.raw_storage();
        let indices = csr.indices();
        let mut col_ptr = vec![0usize; csr.cols() + 1];
        for &c in indices {
            col_ptr[c + 1] += 1;
        }
        for c in 0..csr.cols() {
            col_ptr[c + 1] += col_ptr[c];
        }
        let mut next = col_ptr.clone();
        let mut rows = vec![0; indices.len()];
        let mut value_pos = vec![0; indices.len()];
        for r in 0..csr.rows() {
            for k in indptr[r]..indptr[r + 1] {
                let slot = &mut next[indices[k]];
                rows[*slot] = r;
                value_pos[*slot] = k;
                *slot += 1;
            }
        }
        TransposeIndex {
            col_ptr,
            rows,
            value_pos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;

    #[test]
    fn random_places_exactly_nnz_entries() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let m = SparseMatrix::random(30, 40, 123, &mut rng, |_| 1.0).unwrap();
        assert_eq!(m.nnz(), 123);
        assert_eq!(m.to_dense().iter().filter(|&&v| v != 0.0).count(), 123);
    }

    #[test]
    fn too_many_entries_is_an_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(SparseMatrix::random(2, 2, 5, &mut rng, |_| 1.0).is_err());
    }

    #[test]
    fn position_finds_stored_entries_only() {
        let m = SparseMatrix::from_dense(array![[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]].view());
        assert_eq!(m.position(0, 1), Some(0));
        assert_eq!(m.position(1, 2), Some(2));
        assert_eq!(m.position(0, 0), None);
        assert_eq!(m.position(1, 1), None);
        assert_eq!(m.position(2, 0), None, "a row beyond the matrix");
        assert_eq!(m.position(0, 3), None, "a column beyond the matrix");
    }

    #[test]
    fn transpose_index_points_at_the_right_values() {
        let dense = array![[0.0, 2.0, 0.0], [3.0, 0.0, 4.0], [0.0, 5.0, 6.0]];
        let m = SparseMatrix::from_dense(dense.view());
        let t = m.transpose_index();
        for c in 0..3 {
            for k in t.col_ptr[c]..t.col_ptr[c + 1] {
                assert_eq!(m.values()[t.value_pos[k]], dense[(t.rows[k], c)]);
            }
        }
        assert_eq!(t.col_ptr, vec![0, 1, 3, 5]);
    }

    #[test]
    fn empty_rows_and_columns_are_counted() {
        let m = SparseMatrix::from_dense(
            array![[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 3.0]].view(),
        );
        assert_eq!((m.empty_rows(), m.empty_columns()), (1, 1));
        assert_eq!(m.column_counts(), vec![0, 2, 1]);
    }

    #[test]
    fn edit_removes_inserts_and_tracks_origins() {
        let m = SparseMatrix::from_dense(array![[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]].view());
        let (edited, origins) = m.edit_structure(&[1], &[(0, 1), (1, 0)]).unwrap();
        assert_eq!(edited.to_dense(), array![[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]]);
        assert_eq!(edited.nnz(), 4);
        assert_eq!(origins.0, vec![Some(0), None, None, Some(2)]);
        let momentum = origins.remap(&[10.0, 20.0, 30.0], |_| -1.0);
        assert_eq!(momentum, vec![10.0, -1.0, -1.0, 30.0]);
    }

    #[test]
    fn a_removed_entry_may_be_reinserted() {
        let m = SparseMatrix::from_dense(array![[1.0, 2.0]].view());
        let (edited, origins) = m.edit_structure(&[0], &[(0, 0)]).unwrap();
        assert_eq!(edited.to_dense(), array![[0.0, 2.0]]);
        assert_eq!(origins.0, vec![None, Some(1)]);
    }

    #[test]
    fn inserting_a_present_entry_is_an_error() {
        let m = SparseMatrix::from_dense(array![[1.0, 2.0]].view());
        assert!(m.edit_structure(&[], &[(0, 1)]).is_err());
        assert!(m.edit_structure(&[], &[(1, 0)]).is_err());
        let empty = SparseMatrix::zeros(1, 2);
        assert!(empty.edit_structure(&[], &[(0, 1), (0, 1)]).is_err());
    }

    #[test]
    fn invalid_csr_arrays_are_refused() {
        let unsorted = SparseMatrix::try_from_csr(1, 3, vec![0, 2], vec![2, 0], vec![1.0, 1.0]);
        assert!(unsorted.is_err());
        let out_of_range = SparseMatrix::try_from_csr(1, 3, vec![0, 1], vec![3], vec![1.0]);
        assert!(out_of_range.is_err());
    }
}

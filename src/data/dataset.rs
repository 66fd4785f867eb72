//! An in-memory image classification dataset, its normalisation, and batching.
//!
//! Pixels are kept as the bytes the files hold (`samples × features`, one
//! sample per row), a quarter of the memory of `f32`: copying a batch out of
//! a dataset larger than the CPU caches is bound by memory traffic, so this
//! makes batching ~4× cheaper. A feature's value is `pixel · scale + offset`;
//! normalisation only changes `scale` and `offset`.
//!
//! The network wants a batch with the batch inner, so that every weight's
//! work is a contiguous run over the batch (see `docs/design.md`): fully
//! connected networks take `features × batch` ([`Dataset::gather_batch`]
//! transposes while it converts), convolutional ones `channels × (batch ·
//! height · width)` ([`Dataset::gather_images`]).

use std::ops::Range;

use ndarray::{Array2, ArrayView2, s};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::aligned;
use crate::conv::ImageShape;
use crate::error::{Error, Result};

/// Samples (one per row, as bytes) and their class labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pixels: Array2<u8>,
    labels: Vec<usize>,
    num_classes: usize,
    image: ImageShape,
    scale: f32,
    offset: f32,
}

/// The affine normalisation `x ↦ (x − mean) / std`, computed once on the
/// training split and applied to every split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Mean of all training values.
    pub mean: f32,
    /// Standard deviation of all training values.
    pub std: f32,
}

/// One mini-batch in the network's layout.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `features × batch` (column `j` is sample `j`), or for images
    /// `channels × (batch · height · width)`.
    pub inputs: Array2<f32>,
    /// The class of each column.
    pub labels: Vec<usize>,
}

impl Dataset {
    /// A dataset of `samples × features` pixels (values `pixel / 255`, in
    /// `[0, 1]`) with one label per sample. Each sample is taken as a one-row
    /// image until [`Dataset::with_image_shape`] says otherwise.
    ///
    /// Fails if the counts disagree or a label is not below `num_classes`.
    pub fn new(pixels: Array2<u8>, labels: Vec<usize>, num_classes: usize) -> Result<Self> {
        if pixels.nrows() != labels.len() {
            return Err(Error::shape(
                "Dataset::new",
                format!(
                    "{} samples of pixels but {} labels",
                    pixels.nrows(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= num_classes) {
            return Err(Error::shape(
                "Dataset::new",
                format!(
                    "label {label} of sample {i} is not below the number of classes {num_classes}"
                ),
            ));
        }
        // Batching reads rows as slices: keep the rows contiguous.
        let pixels = if pixels.is_standard_layout() {
            pixels
        } else {
            pixels.as_standard_layout().into_owned()
        };
        let image = ImageShape {
            channels: 1,
            height: 1,
            width: pixels.ncols(),
        };
        Ok(Dataset {
            pixels,
            labels,
            num_classes,
            image,
            scale: 1.0 / 255.0,
            offset: 0.0,
        })
    }

    /// The same samples read as images of `image` (channel-major: a sample's
    /// features are channel 0's rows, then channel 1's, …).
    pub fn with_image_shape(self, image: ImageShape) -> Result<Self> {
        if image.len() != self.num_features() {
            return Err(Error::shape(
                "Dataset::with_image_shape",
                format!(
                    "{}×{}×{} images have {} values, the samples have {}",
                    image.channels,
                    image.height,
                    image.width,
                    image.len(),
                    self.num_features()
                ),
            ));
        }
        Ok(Dataset { image, ..self })
    }

    /// The shape of one sample as an image.
    pub fn image_shape(&self) -> ImageShape {
        self.image
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of features per sample (784 for MNIST).
    pub fn num_features(&self) -> usize {
        self.pixels.ncols()
    }

    /// Number of classes (10 for MNIST).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The raw pixels, one sample per row.
    pub fn pixels(&self) -> ArrayView2<'_, u8> {
        self.pixels.view()
    }

    /// The label of every sample.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The value the network sees for a pixel.
    pub fn value(&self, pixel: u8) -> f32 {
        pixel as f32 * self.scale + self.offset
    }

    /// Splits off the last `fraction` of the samples, as the reference library
    /// does for its validation set: `(first part, last part)`.
    pub fn split_tail(&self, fraction: f64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::config(
                "validation-fraction",
                format!("{fraction} is not in [0, 1)"),
            ));
        }
        let keep = self.len() - (fraction * self.len() as f64).round() as usize;
        Ok((self.rows(0..keep), self.rows(keep..self.len())))
    }

    /// The first `n` samples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Dataset {
        self.rows(0..n.min(self.len()))
    }

    fn rows(&self, range: std::ops::Range<usize>) -> Dataset {
        Dataset {
            pixels: self.pixels.slice(s![range.clone(), ..]).to_owned(),
            labels: self.labels[range].to_vec(),
            ..*self
        }
    }

    /// Mean and standard deviation over all values, for [`Dataset::normalize`].
    /// Computed from a histogram of the 256 pixel values: exact and cheap.
    pub fn normalization(&self) -> Normalization {
        let mut histogram = [0u64; 256];
        for &p in &self.pixels {
            histogram[p as usize] += 1;
        }
        let n = self.pixels.len().max(1) as f64;
        let values = || (0..=255u8).map(|p| (self.value(p) as f64, histogram[p as usize] as f64));
        let mean = values().map(|(v, count)| v * count).sum::<f64>() / n;
        let var = values()
            .map(|(v, count)| (v - mean).powi(2) * count)
            .sum::<f64>()
            / n;
        Normalization {
            mean: mean as f32,
            std: (var.sqrt() as f32).max(f32::EPSILON),
        }
    }

    /// Applies `x ↦ (x − mean) / std` to every value (by folding it into the
    /// pixel-to-value map; the pixels stay as they are).
    pub fn normalize(&mut self, norm: Normalization) {
        self.scale /= norm.std;
        self.offset = (self.offset - norm.mean) / norm.std;
    }

    /// Copies the samples `indices` into `batch` as values, transposed to
    /// `features × batch`.
    ///
    /// The transposition goes by tiles of 16 samples × 16 features: 16 reads
    /// of 16 bytes, a byte transposition in registers (`transpose_16x16`),
    /// then 16 writes of 16 consecutive values. When the samples fill no
    /// whole number of tiles, the last tile overlaps the one before it (its
    /// samples are the last 16), rewriting a few columns with the same
    /// values, as the sparse kernels' last vector does. The features that
    /// fill no whole tile, and batches of fewer than 16 samples, take a plain loop.
    ///
    /// The features are copied in blocks of `GATHER_BLOCK` features, as rayon
    /// tasks: a trainer copies the next batch while the current one trains,
    /// and whichever core finishes its share of the step first takes the
    /// blocks the other has not reached.
    pub fn gather_batch(&self, indices: &[usize], batch: &mut Batch) {
        let (b, d) = (indices.len(), self.num_features());
        let mut inputs = reuse_buffer(batch, d, b);
        let values = inputs
            .as_slice_mut()
            .expect("a fresh standard-layout array");
        values
            .par_chunks_mut(GATHER_BLOCK * b.max(1))
            .enumerate()
            .for_each(|(block, out)| {
                let first = block * GATHER_BLOCK;
                self.gather_features(indices, first..(first + GATHER_BLOCK).min(d), out);
            });
        batch.inputs = inputs;
        self.gather_labels(indices, batch);
    }

    /// Rows `features` of [`Dataset::gather_batch`]'s output into `out`.
    fn gather_features(&self, indices: &[usize], features: Range<usize>, out: &mut [f32]) {
        let (b, d) = (indices.len(), self.num_features());
        let pixels = self
            .pixels
            .as_slice()
            .expect("dataset pixels are contiguous");
        let (scale, offset) = (self.scale, self.offset);
        let first_feature = features.start;
        // Whole tiles cover the features up to here; the rest take a plain loop.
        let tiled_end = if b >= TILE {
            first_feature + features.len() / TILE * TILE
        } else {
            first_feature
        };
        // The first column of every tile: whole tiles, then the overlapping last one.
        let first_columns = (0..b / TILE * TILE)
            .step_by(TILE)
            .chain((b % TILE != 0 && b > TILE).then(|| b - TILE));
        for first_column in first_columns {
            let tile = &indices[first_column..][..TILE];
            let rows: [&[u8]; TILE] = std::array::from_fn(|t| &pixels[tile[t] * d..][..d]);
            for tile_feature in (first_feature..tiled_end).step_by(TILE) {
                let block: [[u8; TILE]; TILE] = std::array::from_fn(|t| {
                    rows[t][tile_feature..][..TILE]
                        .try_into()
                        .expect("TILE bytes")
                });
                for (f, pixels) in transpose_16x16(block).iter().enumerate() {
                    let column: [f32; TILE] =
                        std::array::from_fn(|t| pixels[t] as f32 * scale + offset);
                    out[(tile_feature - first_feature + f) * b + first_column..][..TILE]
                        .copy_from_slice(&column);
                }
            }
        }
        for (column, &sample) in indices.iter().enumerate() {
            let row = &pixels[sample * d..][..d];
            for f in tiled_end..features.end {
                out[(f - first_feature) * b + column] = row[f] as f32 * scale + offset;
            }
        }
    }

    /// Copies the samples `indices` into `batch` as images,
    /// `channels × (batch · height · width)`: row `c` holds channel `c` of
    /// every sample, one after the other.
    pub fn gather_images(&self, indices: &[usize], batch: &mut Batch) {
        let (b, d) = (indices.len(), self.num_features());
        let (channels, plane) = (self.image.channels, self.image.plane());
        let pixels = self
            .pixels
            .as_slice()
            .expect("dataset pixels are contiguous");
        let mut inputs = reuse_buffer(batch, channels, b * plane);
        let values = inputs
            .as_slice_mut()
            .expect("a fresh standard-layout array");
        for (j, &sample) in indices.iter().enumerate() {
            let image = &pixels[sample * d..][..d];
            for (c, channel) in image.chunks_exact(plane).enumerate() {
                let out = &mut values[(c * b + j) * plane..][..plane];
                for (value, &pixel) in out.iter_mut().zip(channel) {
                    *value = pixel as f32 * self.scale + self.offset;
                }
            }
        }
        batch.inputs = inputs;
        self.gather_labels(indices, batch);
    }

    fn gather_labels(&self, indices: &[usize], batch: &mut Batch) {
        batch.labels.clear();
        batch
            .labels
            .extend(indices.iter().map(|&sample| self.labels[sample]));
    }
}

/// The side of the square tiles [`Dataset::gather_batch`] transposes.
const TILE: usize = 16;

/// Features per task of [`Dataset::gather_batch`], a multiple of [`TILE`]:
/// MNIST's 784 make four tasks of 2–3 µs for a 50-sample part.
const GATHER_BLOCK: usize = 13 * TILE;

/// Transposes a 16 × 16 block of bytes: `out[f][t] = block[t][f]`.
///
/// Four rounds of interleaving rows `i` and `i + 8` byte by byte (SSE2's
/// unpack instructions) rotate each byte's 8-bit position `(row, column)` by
/// one bit per round: the byte at row `r₃r₂r₁r₀`, column `c₃c₂c₁c₀` moves to
/// row `r₂r₁r₀c₃`, column `c₂c₁c₀r₃` (output row `2i + c₃` interleaves rows
/// `i` and `i + 8`, low or high halves). After four rounds the row and
/// column bits have swapped.
/// A batch of 100 MNIST samples takes 17 µs with it, 30 µs with the
/// compiler's own code for the index shuffle (9 and 22 µs with the rows
/// already in cache).
#[cfg(target_arch = "x86_64")]
#[inline]
fn transpose_16x16(block: [[u8; TILE]; TILE]) -> [[u8; TILE]; TILE] {
    // SAFETY: `sse2::transpose_16x16` is unsafe to call only because it
    // enables SSE2, which is part of the x86-64 baseline: every x86-64 CPU has it.
    unsafe { sse2::transpose_16x16(block) }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::TILE;
    use std::arch::x86_64::{
        _mm_cvtsi128_si64, _mm_set_epi64x, _mm_setzero_si128, _mm_unpackhi_epi8,
        _mm_unpackhi_epi64, _mm_unpacklo_epi8,
    };

    // Plain loops, no closures: a closure inherits the target feature, and
    // LLVM will not inline it into `array::map`, which lacks it.
    #[target_feature(enable = "sse2")]
    #[inline]
    pub(super) fn transpose_16x16(block: [[u8; TILE]; TILE]) -> [[u8; TILE]; TILE] {
        let mut rows = [_mm_setzero_si128(); TILE];
        for (row, bytes) in rows.iter_mut().zip(&block) {
            let (low, high) = bytes.split_at(8);
            *row = _mm_set_epi64x(word(high), word(low));
        }
        for _round in 0..4 {
            let mut next = rows;
            for i in 0..TILE / 2 {
                next[2 * i] = _mm_unpacklo_epi8(rows[i], rows[i + 8]);
                next[2 * i + 1] = _mm_unpackhi_epi8(rows[i], rows[i + 8]);
            }
            rows = next;
        }
        let mut out = [[0u8; TILE]; TILE];
        for (bytes, &row) in out.iter_mut().zip(&rows) {
            let (low, high) = bytes.split_at_mut(8);
            low.copy_from_slice(&_mm_cvtsi128_si64(row).to_le_bytes());
            high.copy_from_slice(&_mm_cvtsi128_si64(_mm_unpackhi_epi64(row, row)).to_le_bytes());
        }
        out
    }

    fn word(bytes: &[u8]) -> i64 {
        i64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

/// Transposes a 16 × 16 block of bytes: `out[f][t] = block[t][f]`.
#[cfg(not(target_arch = "x86_64"))]
fn transpose_16x16(block: [[u8; TILE]; TILE]) -> [[u8; TILE]; TILE] {
    std::array::from_fn(|f| std::array::from_fn(|t| block[t][f]))
}

/// The batch's input buffer as a `rows × cols` array starting a cache line
/// ([`crate::aligned`]): the gathers overwrite every value, so the buffer is
/// reused without clearing.
fn reuse_buffer(batch: &mut Batch, rows: usize, cols: usize) -> Array2<f32> {
    let (buffer, _) = std::mem::take(&mut batch.inputs).into_raw_vec_and_offset();
    aligned::array_in(buffer, rows, cols)
}

/// Training, validation and test sets, normalised with the training set's statistics.
#[derive(Debug, Clone)]
pub struct Splits {
    /// What the optimizer sees.
    pub train: Dataset,
    /// Held out from the training file, for model selection (may be empty).
    pub validation: Dataset,
    /// The test set.
    pub test: Dataset,
    /// The normalisation applied to all three.
    pub normalization: Normalization,
}

impl Splits {
    /// Holds out the last `validation_fraction` of `train` for validation, as
    /// the reference library does, and normalises every split with the mean
    /// and standard deviation of what remains for training.
    pub fn new(train: &Dataset, test: &Dataset, validation_fraction: f64) -> Result<Splits> {
        if train.image_shape() != test.image_shape() || train.num_classes() != test.num_classes() {
            return Err(Error::shape(
                "Splits::new",
                format!(
                    "training data has {:?} samples and {} classes, test data {:?} and {}",
                    train.image_shape(),
                    train.num_classes(),
                    test.image_shape(),
                    test.num_classes()
                ),
            ));
        }
        let (mut train, mut validation) = train.split_tail(validation_fraction)?;
        let mut test = test.clone();
        let normalization = train.normalization();
        for split in [&mut train, &mut validation, &mut test] {
            split.normalize(normalization);
        }
        Ok(Splits {
            train,
            validation,
            test,
            normalization,
        })
    }
}

/// The order in which an epoch visits the samples: a permutation of `0..len`
/// that depends only on `(seed, epoch)`, so a run can be repeated (or resumed
/// at any epoch) exactly.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // One independent stream per epoch: ChaCha's stream id selects it.
    rng.set_stream(epoch as u64);
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn tiny() -> Dataset {
        Dataset::new(
            array![[0, 51], [102, 153], [204, 255], [0, 0]],
            vec![0, 1, 2, 1],
            3,
        )
        .unwrap()
    }

    #[test]
    fn gathered_batch_is_feature_major_and_scaled() {
        let mut batch = Batch::default();
        tiny().gather_batch(&[2, 0], &mut batch);
        let expected = array![[0.8, 0.0], [1.0, 0.2]];
        let error = (&batch.inputs - &expected)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &e| m.max(e));
        assert!(error < 1e-6, "{}", batch.inputs);
        assert_eq!(batch.labels, vec![2, 0]);
    }

    #[test]
    fn byte_transposition_swaps_rows_and_columns() {
        let block: [[u8; TILE]; TILE] =
            std::array::from_fn(|t| std::array::from_fn(|f| (t * TILE + f) as u8));
        let out = transpose_16x16(block);
        for (f, row) in out.iter().enumerate() {
            for (t, &byte) in row.iter().enumerate() {
                assert_eq!(byte, block[t][f], "out[{f}][{t}]");
            }
        }
    }

    /// Whole and partial tiles of samples and features (the transposition's
    /// fast path and its edges), against the definition.
    #[test]
    fn gathered_tiles_match_a_value_by_value_copy() {
        // Two whole blocks of features, then a third of two tiles and 8 features.
        let (samples, features) = (50, 2 * GATHER_BLOCK + 40);
        let pixels = Array2::from_shape_fn((samples, features), |(i, f)| {
            ((i * 131 + f * 31 + i * f) % 256) as u8
        });
        let mut data = Dataset::new(pixels.clone(), vec![0; samples], 1).unwrap();
        data.normalize(Normalization {
            mean: 0.3,
            std: 0.7,
        });
        // Whole tiles and an overlapping last one; whole tiles only; too few for a tile.
        for size in [37, 32, 5] {
            let indices: Vec<usize> = (0..size).map(|j| (j * 17 + 3) % samples).collect();
            let mut batch = Batch::default();
            data.gather_batch(&indices, &mut batch);
            assert_eq!(batch.inputs.dim(), (features, indices.len()));
            for (j, &sample) in indices.iter().enumerate() {
                for f in 0..features {
                    assert_eq!(
                        batch.inputs[[f, j]],
                        data.value(pixels[[sample, f]]),
                        "feature {f} of column {j} of {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn gathered_images_are_channel_major_with_the_batch_inside() {
        let two_channels = ImageShape {
            channels: 2,
            height: 1,
            width: 2,
        };
        let data = Dataset::new(array![[0, 51, 102, 153], [204, 255, 0, 51]], vec![0, 1], 2)
            .unwrap()
            .with_image_shape(two_channels)
            .unwrap();
        let mut batch = Batch::default();
        data.gather_images(&[1, 0], &mut batch);
        // Row c: channel c of sample 1, then of sample 0.
        let expected = array![[0.8, 1.0, 0.0, 0.2], [0.0, 0.2, 0.4, 0.6]];
        let error = (&batch.inputs - &expected)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &e| m.max(e));
        assert!(error < 1e-6, "{}", batch.inputs);
        assert_eq!(batch.labels, vec![1, 0]);
        let wrong = ImageShape {
            channels: 3,
            ..two_channels
        };
        assert!(data.with_image_shape(wrong).is_err());
    }

    #[test]
    fn split_tail_keeps_order() {
        let (head, tail) = tiny().split_tail(0.25).unwrap();
        assert_eq!(head.len(), 3);
        assert_eq!(tail.labels(), &[1]);
        assert_eq!(tail.pixels(), array![[0, 0]]);
    }

    #[test]
    fn labels_beyond_the_classes_are_refused() {
        let err = Dataset::new(array![[1]], vec![5], 3).unwrap_err();
        assert!(err.to_string().contains("label 5"), "{err}");
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 3);
        assert_eq!(a, epoch_order(100, 7, 3));
        assert_ne!(a, epoch_order(100, 7, 4));
        assert_ne!(a, epoch_order(100, 8, 3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn normalized_values_have_zero_mean_unit_std() {
        let mut data = tiny();
        let norm = data.normalization();
        data.normalize(norm);
        let mut batch = Batch::default();
        data.gather_batch(&[0, 1, 2, 3], &mut batch);
        let n = batch.inputs.len() as f32;
        let mean = batch.inputs.sum() / n;
        let var = batch.inputs.mapv(|v| (v - mean).powi(2)).sum() / n;
        assert!(mean.abs() < 1e-6, "{mean}");
        assert!((var.sqrt() - 1.0).abs() < 1e-5, "{var}");
    }
}

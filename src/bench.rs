//! Timings for the CLI's `bench` command: epochs sparse vs dense, and kernel throughput.
//!
//! The machine this runs on may be shared and its speed drifts, so every
//! comparison is made *within one run*, with the configurations interleaved
//! (dense, 1 %, 2 %, 5 %, dense, 1 %, …), and reported as medians and ratios.

use std::time::Instant;

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::aligned;
use crate::conv::{ConvGeometry, col2im, im2col};
use crate::data::Dataset;
use crate::dense::gemm;
use crate::error::Result;
use crate::sparse::{InstructionSet, SparseMatrix, sddmm_using, spmm_transposed_using, spmm_using};
use crate::train::{EpochPhases, LayerInfo, SparseSettings, TrainConfig, Trainer};

/// Time per training epoch of one configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochTiming {
    /// Density of the sparse layers, `None` for the dense model.
    pub density: Option<f64>,
    /// Every measured epoch, in seconds.
    pub seconds: Vec<f64>,
    /// Median of `seconds`.
    pub median_seconds: f64,
    /// Median over rounds of (dense epoch time / this epoch time), pairing
    /// epochs measured next to each other; 1 for the dense model.
    pub speedup_vs_dense: f64,
    /// Where the time went: the median over rounds of each phase.
    pub phases: EpochPhases,
    /// Every weight matrix at the end: stored entries, empty channels.
    pub layers: Vec<LayerInfo>,
}

/// Times `rounds` training epochs of the dense model and of each density,
/// interleaved. A measured epoch is everything training does in an epoch:
/// batching, forward, backward, optimizer and — for sparse models with mask
/// updates — the dense-momentum window and the update at its end (evaluation
/// excluded). Everything else (the model, `train_samples`, whether masks
/// change) comes from `base`.
pub fn time_epochs(
    base: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    densities: &[f64],
    rounds: usize,
) -> Result<Vec<EpochTiming>> {
    let configs: Vec<Option<f64>> = std::iter::once(None)
        .chain(densities.iter().map(|&d| Some(d)))
        .collect();
    let mut trainers = configs
        .iter()
        .map(|density| {
            let config = TrainConfig {
                // One epoch more than measured, so every measured epoch ends in a mask update.
                epochs: rounds + 1,
                sparse: density.map(|density| SparseSettings {
                    density,
                    ..base.sparse.clone().unwrap_or_default()
                }),
                ..base.clone()
            };
            Trainer::new(config, train, test)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut seconds = vec![Vec::with_capacity(rounds); configs.len()];
    let mut phases = vec![Vec::with_capacity(rounds); configs.len()];
    for _ in 0..rounds {
        for ((trainer, times), round_phases) in
            trainers.iter_mut().zip(&mut seconds).zip(&mut phases)
        {
            let start = Instant::now();
            round_phases.push(trainer.train_epoch_unevaluated(&mut ())?);
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let dense = seconds[0].clone();
    Ok(configs
        .into_iter()
        .zip(seconds.into_iter().zip(phases))
        .zip(&trainers)
        .map(|((density, (times, phases)), trainer)| {
            let ratios: Vec<f64> = dense.iter().zip(&times).map(|(d, t)| d / t).collect();
            let phase = |part: fn(&EpochPhases) -> f64| {
                median(&phases.iter().map(part).collect::<Vec<_>>())
            };
            EpochTiming {
                density,
                median_seconds: median(&times),
                speedup_vs_dense: median(&ratios),
                phases: EpochPhases {
                    forward_backward: phase(|p| p.forward_backward),
                    optimizer: phase(|p| p.optimizer),
                    mask_updates: phase(|p| p.mask_updates),
                },
                seconds: times,
                layers: trainer.layers(),
            }
        })
        .collect())
}

/// Which of the three training kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// `Y = W·X`.
    Forward,
    /// `dX = Wᵀ·dY`.
    InputGradient,
    /// `dW = dY·Xᵀ` at the stored entries.
    WeightGradient,
}

impl Kernel {
    /// All three, in the order a training step runs them.
    pub const ALL: [Kernel; 3] = [
        Kernel::Forward,
        Kernel::InputGradient,
        Kernel::WeightGradient,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Forward => "forward W·X",
            Kernel::InputGradient => "input grad Wᵀ·dY",
            Kernel::WeightGradient => "weight grad (SDDMM)",
        }
    }
}

/// Throughput of one sparse kernel against the dense product of the same shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelTiming {
    /// `(rows, cols)` of the weight.
    pub shape: (usize, usize),
    /// Batch size.
    pub batch: usize,
    /// Stored fraction of the weight.
    pub density: f64,
    /// The kernel.
    pub kernel: Kernel,
    /// The instruction set of the sparse kernel's inner loops.
    pub isa: InstructionSet,
    /// Median seconds per call of the sparse kernel.
    pub sparse_seconds: f64,
    /// Median seconds per call of the dense product (sgemm) of the same shape.
    pub dense_seconds: f64,
    /// Useful GFLOP/s of the sparse kernel: `2 · nnz · batch` per call.
    pub sparse_gflops: f64,
    /// GFLOP/s of the dense product: `2 · rows · cols · batch` per call.
    pub dense_gflops: f64,
    /// `dense_seconds / sparse_seconds`.
    pub speedup: f64,
}

/// Times every kernel on every weight shape and density with each of `isas`,
/// sparse and dense calls interleaved, `samples` medians each.
///
/// # Panics
/// If an instruction set is not available on this CPU.
pub fn time_kernels(
    shapes: &[(usize, usize)],
    densities: &[f64],
    batch: usize,
    samples: usize,
    isas: &[InstructionSet],
) -> Vec<KernelTiming> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut results = Vec::new();
    for &(rows, cols) in shapes {
        // Aligned as in training (see `crate::aligned`).
        let x = aligned::from_fn(cols, batch, || rng.random_range(-1.0f32..1.0));
        let dy = aligned::from_fn(rows, batch, || rng.random_range(-1.0f32..1.0));
        let dense_w = Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0f32..1.0));
        // Separate outputs for the sparse and the dense call, so both may write.
        let (mut y, mut y_dense) = (aligned::zeros(rows, batch), aligned::zeros(rows, batch));
        let (mut dx, mut dx_dense) = (aligned::zeros(cols, batch), aligned::zeros(cols, batch));
        let mut dw_dense = Array2::zeros((rows, cols));
        for &density in densities {
            let nnz = ((rows * cols) as f64 * density).round() as usize;
            let w =
                SparseMatrix::random(rows, cols, nnz, &mut rng, |r| r.random_range(-1.0f32..1.0))
                    .expect("nnz never exceeds rows · cols");
            let mut grad = vec![0.0; w.nnz()];
            for (kernel, &isa) in Kernel::ALL
                .into_iter()
                .flat_map(|k| isas.iter().map(move |i| (k, i)))
            {
                let (sparse_seconds, dense_seconds) = match kernel {
                    Kernel::Forward => time_pair(
                        samples,
                        || spmm_using(isa, &w, x.view(), y.view_mut()),
                        || gemm(1.0, dense_w.view(), x.view(), 0.0, y_dense.view_mut()),
                    ),
                    Kernel::InputGradient => time_pair(
                        samples,
                        || spmm_transposed_using(isa, &w, dy.view(), dx.view_mut()),
                        || gemm(1.0, dense_w.t(), dy.view(), 0.0, dx_dense.view_mut()),
                    ),
                    Kernel::WeightGradient => time_pair(
                        samples,
                        || sddmm_using(isa, &w, dy.view(), x.view(), &mut grad),
                        || gemm(1.0, dy.view(), x.t(), 0.0, dw_dense.view_mut()),
                    ),
                };
                let flops = |multiply_adds: usize| 2.0 * multiply_adds as f64 * batch as f64 / 1e9;
                results.push(KernelTiming {
                    shape: (rows, cols),
                    batch,
                    density,
                    kernel,
                    isa,
                    sparse_seconds,
                    dense_seconds,
                    sparse_gflops: flops(w.nnz()) / sparse_seconds,
                    dense_gflops: flops(rows * cols) / dense_seconds,
                    speedup: dense_seconds / sparse_seconds,
                });
            }
        }
    }
    results
}

/// Where a sparse kernel stops beating the dense product of its shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Crossover {
    /// `(rows, cols)` of the weight.
    pub shape: (usize, usize),
    /// Batch size.
    pub batch: usize,
    /// The kernel.
    pub kernel: Kernel,
    /// The instruction set of the sparse kernel.
    pub isa: InstructionSet,
    /// The density where sparse and dense take equal time, interpolated
    /// between the measured densities on a log scale; `None` when sparse
    /// never loses in the measured range.
    pub density: Option<f64>,
    /// The density range measured.
    pub measured: (f64, f64),
}

/// The cross-over density of every `(shape, batch, kernel, isa)` in `timings`:
/// the first measured density where the sparse kernel is no faster than
/// dense, interpolated with the density before it (log density against log
/// speed-up). When even the lowest density loses, that density is returned.
pub fn crossovers(timings: &[KernelTiming]) -> Vec<Crossover> {
    let mut groups: Vec<Vec<&KernelTiming>> = Vec::new();
    for t in timings {
        let same = |g: &Vec<&KernelTiming>| {
            let first = g[0];
            (first.shape, first.batch, first.kernel, first.isa)
                == (t.shape, t.batch, t.kernel, t.isa)
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(group) => group.push(t),
            None => groups.push(vec![t]),
        }
    }
    groups
        .into_iter()
        .map(|mut group| {
            group.sort_by(|a, b| a.density.total_cmp(&b.density));
            let first = group[0];
            let measured = (first.density, group[group.len() - 1].density);
            let losing = group.iter().position(|t| t.speedup <= 1.0);
            let density = losing.map(|i| match i {
                0 => group[0].density,
                _ => {
                    let (a, b) = (group[i - 1], group[i]);
                    // ln(speed-up) falls from > 0 at `a` to ≤ 0 at `b`: where it is 0.
                    let (sa, sb) = (a.speedup.ln(), b.speedup.ln());
                    let fraction = sa / (sa - sb);
                    (a.density.ln() + fraction * (b.density.ln() - a.density.ln())).exp()
                }
            });
            Crossover {
                shape: first.shape,
                batch: first.batch,
                kernel: first.kernel,
                isa: first.isa,
                density,
                measured,
            }
        })
        .collect()
}

/// The engine's dense product against one plain matrixmultiply sgemm call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DenseCheck {
    /// `(rows, cols)` of the weight.
    pub shape: (usize, usize),
    /// Batch size.
    pub batch: usize,
    /// Median seconds of the engine's forward product ([`gemm`], its threads).
    pub engine_seconds: f64,
    /// Median seconds of one matrixmultiply sgemm call (one thread).
    pub sgemm_seconds: f64,
    /// `engine_seconds / sgemm_seconds`: above 1 the engine is slower.
    pub ratio: f64,
}

/// Times the engine's dense forward product `W·X` against a plain
/// single-threaded matrixmultiply sgemm of the same shape: the dense
/// baseline every sparse speed-up is quoted against must be an honest one.
pub fn time_dense_path(shapes: &[(usize, usize)], batch: usize, samples: usize) -> Vec<DenseCheck> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    shapes
        .iter()
        .map(|&(rows, cols)| {
            let w = Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0f32..1.0));
            let x = Array2::from_shape_simple_fn((cols, batch), || rng.random_range(-1.0f32..1.0));
            let (mut y, mut y_plain) = (Array2::zeros((rows, batch)), Array2::zeros((rows, batch)));
            let (engine_seconds, sgemm_seconds) = time_pair(
                samples,
                || gemm(1.0, w.view(), x.view(), 0.0, y.view_mut()),
                || plain_sgemm(&w, &x, &mut y_plain),
            );
            DenseCheck {
                shape: (rows, cols),
                batch,
                engine_seconds,
                sgemm_seconds,
                ratio: engine_seconds / sgemm_seconds,
            }
        })
        .collect()
}

/// `y = w · x` as one matrixmultiply sgemm call on the calling thread:
/// ndarray's `general_mat_mul` hands row-major `f32` arrays straight to it.
fn plain_sgemm(w: &Array2<f32>, x: &Array2<f32>, y: &mut Array2<f32>) {
    ndarray::linalg::general_mat_mul(1.0, w, x, 0.0, y);
}

/// Median seconds of one im2col and one col2im of `batch` images through
/// `geometry`, every row built (the dense convolution's cost; a sparse one
/// skips the rows no filter reads).
pub fn time_im2col(geometry: &ConvGeometry, batch: usize, samples: usize) -> Result<(f64, f64)> {
    let (out_h, out_w) = geometry.output_size()?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let input: Vec<f32> = (0..geometry.in_channels * batch * geometry.input_plane())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut cols = vec![0.0; geometry.patch_len() * batch * out_h * out_w];
    let mut dx = vec![0.0; input.len()];
    let all_rows = vec![true; geometry.patch_len()];
    let dcols = cols.clone();
    Ok(time_pair(
        samples,
        || im2col(geometry, batch, &input, &all_rows, &mut cols),
        || col2im(geometry, batch, &dcols, &all_rows, &mut dx),
    ))
}

/// Median seconds per call of `a` and of `b`, measured alternately. Each
/// sample repeats the call enough times to last about a millisecond, so that
/// microsecond kernels are not lost in timer resolution.
fn time_pair(samples: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let reps_a = calls_per_millisecond(&mut a);
    let reps_b = calls_per_millisecond(&mut b);
    let (mut times_a, mut times_b) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for _ in 0..samples.max(1) {
        times_a.push(time_calls(&mut a, reps_a));
        times_b.push(time_calls(&mut b, reps_b));
    }
    (median(&times_a), median(&times_b))
}

fn calls_per_millisecond(f: &mut impl FnMut()) -> usize {
    let once = time_calls(f, 1).max(1e-7);
    ((1e-3 / once).ceil() as usize).clamp(1, 100_000)
}

/// Mean seconds per call over `reps` calls.
fn time_calls(f: &mut impl FnMut(), reps: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

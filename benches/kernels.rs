//! Criterion benchmarks of the three sparse kernels against the dense product
//! of the same shape, on LeNet-300-100's weight shapes and a large square
//! layer, at 1, 2 and 5 % density, batch 64 and 100: the grid of
//! `sparsetrain bench kernels` (which adds the cross-over densities).
//!
//! `cargo bench --bench kernels`; `sparsetrain bench kernels` reports the same grid
//! (and epoch times) as a table in one interleaved run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::aligned;
use sparsetrain::dense::gemm;
use sparsetrain::sparse::{SparseMatrix, sddmm, spmm, spmm_transposed};

const BATCHES: [usize; 2] = [64, 100];
const SHAPES: [(usize, usize); 4] = [(300, 784), (100, 300), (10, 100), (4096, 4096)];
const DENSITIES: [f64; 3] = [0.01, 0.02, 0.05];

/// Values uniform in [-1, 1), starting a cache line as in training.
fn random(rng: &mut ChaCha8Rng, (rows, cols): (usize, usize)) -> Array2<f32> {
    aligned::from_fn(rows, cols, || rng.random_range(-1.0f32..1.0))
}

fn kernels(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for ((rows, cols), batch) in SHAPES
        .into_iter()
        .flat_map(|shape| BATCHES.map(|batch| (shape, batch)))
    {
        let x = random(&mut rng, (cols, batch));
        let dy = random(&mut rng, (rows, batch));
        let (mut y, mut dx) = (aligned::zeros(rows, batch), aligned::zeros(cols, batch));
        let mut group = c.benchmark_group(format!("{rows}x{cols}/batch{batch}"));
        group.sample_size(20);
        for density in DENSITIES {
            let nnz = ((rows * cols) as f64 * density).round() as usize;
            let w =
                SparseMatrix::random(rows, cols, nnz, &mut rng, |r| r.random_range(-1.0f32..1.0))
                    .unwrap();
            let mut grad = vec![0.0; nnz];
            // Useful FLOPs: 2 per stored weight per sample.
            group.throughput(Throughput::Elements((2 * nnz * batch) as u64));
            let label = format!("{:.0}%", density * 100.0);
            group.bench_function(BenchmarkId::new("forward", &label), |b| {
                b.iter(|| spmm(&w, x.view(), y.view_mut()))
            });
            group.bench_function(BenchmarkId::new("input_gradient", &label), |b| {
                b.iter(|| spmm_transposed(&w, dy.view(), dx.view_mut()))
            });
            group.bench_function(BenchmarkId::new("weight_gradient", &label), |b| {
                b.iter(|| sddmm(&w, dy.view(), x.view(), &mut grad))
            });
        }
        if rows * cols <= 300 * 784 {
            let w = random(&mut rng, (rows, cols));
            group.throughput(Throughput::Elements((2 * rows * cols * batch) as u64));
            group.bench_function("dense_forward", |b| {
                b.iter(|| gemm(1.0, w.view(), x.view(), 0.0, y.view_mut()))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);

//! `sparsetrain bench kernels` and `sparsetrain bench train`: the tables, the
//! cross-over densities and the JSON. The timing itself is in
//! `sparsetrain::bench`; every comparison is made within one run.

use sparsetrain::autograd::{DEFAULT_DENSE_KERNELS_ABOVE, DenseKernels};
use sparsetrain::bench::{
    Crossover, EpochTiming, KernelTiming, crossovers, time_dense_path, time_epochs, time_im2col,
    time_kernels,
};
use sparsetrain::conv::ConvGeometry;
use sparsetrain::sparse::InstructionSet;
use sparsetrain::train::TrainConfig;

use crate::args::{BenchArgs, BenchCommand, KernelBenchArgs, TrainBenchArgs};
use crate::report::describe_channels;
use crate::{CliResult, load_mnist, set_threads};

pub fn bench(args: BenchArgs) -> CliResult {
    match args.what {
        BenchCommand::Kernels(args) => bench_kernels(args),
        BenchCommand::Train(args) => bench_train(args),
    }
}

fn check_densities(densities: &[f64]) -> CliResult {
    for &d in densities {
        sparsetrain::sparsity::check_density(d)?;
    }
    Ok(())
}

/// The instruction sets named by `--isa`.
fn instruction_sets(name: &str) -> Result<Vec<InstructionSet>, String> {
    let isas = match name {
        "best" => vec![InstructionSet::best()],
        "all" => InstructionSet::available(),
        _ => {
            let isa = InstructionSet::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    format!(
                        "invalid setting `isa`: `{name}` is not best, all, portable, avx2 or avx512"
                    )
                })?;
            if !isa.is_available() {
                return Err(format!("invalid setting `isa`: this CPU has no {isa}"));
            }
            vec![isa]
        }
    };
    Ok(isas)
}

fn bench_kernels(args: KernelBenchArgs) -> CliResult {
    set_threads(args.common.threads)?;
    check_densities(&args.densities)?;
    let isas = instruction_sets(&args.isa)?;
    let threads = rayon::current_num_threads();
    let mut json = serde_json::json!({ "threads": threads });
    // Everything runs on a pool thread: a rayon join from outside the pool
    // pays a cross-thread hand-off per kernel call, which training never does.
    let (kernels, dense) = rayon::scope(|_| {
        let kernels: Vec<KernelTiming> = args
            .batches
            .iter()
            .flat_map(|&batch| {
                time_kernels(&args.shapes, &args.densities, batch, args.samples, &isas)
            })
            .collect();
        let dense: Vec<_> = args
            .batches
            .iter()
            .flat_map(|&batch| time_dense_path(&args.shapes, batch, args.samples))
            .collect();
        (kernels, dense)
    });
    say!(
        "Sparse kernels vs the dense product of the same shape, {threads} threads (GFLOP/s = 2·nnz·batch / time; dense: 2·rows·cols·batch / time):"
    );
    print_kernel_header();
    for k in &kernels {
        print_kernel(k, &format!("{}×{}", k.shape.0, k.shape.1));
    }
    let crossover = crossovers(&kernels);
    say!("Cross-over: the density above which the dense product is faster:");
    for c in &crossover {
        say!("  {}", describe_crossover(c));
    }
    let policy = DenseKernels::above(DEFAULT_DENSE_KERNELS_ABOVE);
    say!(
        "Training multiplies a sparse layer with the dense kernels above {:.0}% density \
         (--dense-kernels-above), if its product has at least {} multiply-adds.",
        100.0 * policy.above_density,
        policy.min_work
    );
    say!(
        "The engine's dense product ({threads} threads) vs one plain matrixmultiply sgemm (1 thread):"
    );
    say!(
        "  {:<12} {:>5} {:>11} {:>10} {:>6}",
        "shape",
        "batch",
        "engine µs",
        "sgemm µs",
        "ratio"
    );
    for d in &dense {
        say!(
            "  {:<12} {:>5} {:>11.1} {:>10.1} {:>6.2}",
            format!("{}×{}", d.shape.0, d.shape.1),
            d.batch,
            1e6 * d.engine_seconds,
            1e6 * d.sgemm_seconds,
            d.ratio
        );
    }
    json["kernels"] = serde_json::to_value(&kernels)?;
    json["crossovers"] = serde_json::to_value(&crossover)?;
    json["dense_path"] = serde_json::to_value(&dense)?;
    json["conv_kernels"] = bench_lenet5_convolutions(&args, &isas)?;
    if args.common.json {
        say!("{json}");
    }
    Ok(())
}

/// LeNet-5-Caffe's two convolutions as products with their im2col matrices
/// (`batch · out_h · out_w` columns), at the densities up to 5 %.
fn bench_lenet5_convolutions(
    args: &KernelBenchArgs,
    isas: &[InstructionSet],
) -> Result<serde_json::Value, crate::CliError> {
    let geometry = |in_channels, size| ConvGeometry {
        in_channels,
        height: size,
        width: size,
        kernel: (5, 5),
        stride: 1,
        padding: 0,
    };
    let layers = [
        ("conv1", 20, geometry(1, 28)),
        ("conv2", 50, geometry(20, 12)),
    ];
    let densities: Vec<f64> = args
        .densities
        .iter()
        .copied()
        .filter(|&d| d <= 0.05)
        .collect();
    let batch = args.batches.iter().copied().max().unwrap_or(100);
    say!(
        "Convolution kernels, LeNet-5-Caffe layers as products with the im2col matrix, batch {batch}:"
    );
    print_kernel_header();
    let mut layers_json = Vec::new();
    for (name, out_channels, geometry) in layers {
        let (out_h, out_w) = geometry.output_size()?;
        let shape = (out_channels, geometry.patch_len());
        let columns = batch * out_h * out_w;
        let timings =
            rayon::scope(|_| time_kernels(&[shape], &densities, columns, args.samples, isas));
        for k in &timings {
            print_kernel(k, &format!("{name} {}×{}", shape.0, shape.1));
        }
        let (im2col, col2im) = time_im2col(&geometry, batch, args.samples)?;
        say!(
            "  {name}: im2col {:.1} µs, col2im {:.1} µs with every row (a sparse layer builds only the rows its filters read)",
            1e6 * im2col,
            1e6 * col2im
        );
        layers_json.push(serde_json::json!({
            "layer": name, "kernels": timings, "im2col_seconds": im2col, "col2im_seconds": col2im,
        }));
    }
    Ok(serde_json::Value::Array(layers_json))
}

fn describe_crossover(c: &Crossover) -> String {
    let what = format!(
        "{:<11} batch {:>4} {:<20} {:<8}",
        format!("{}×{}", c.shape.0, c.shape.1),
        c.batch,
        c.kernel.name(),
        c.isa.name()
    );
    match c.density {
        Some(d) if d <= c.measured.0 => {
            format!(
                "{what} at or below {:.1}% (dense already wins there)",
                100.0 * d
            )
        }
        Some(d) => format!("{what} {:.1}%", 100.0 * d),
        None => format!(
            "{what} above {:.0}% (sparse wins over the whole range)",
            100.0 * c.measured.1
        ),
    }
}

fn print_kernel_header() {
    say!(
        "  {:<16} {:>5} {:>7} {:<20} {:<8} {:>10} {:>8} {:>10} {:>8} {:>8}",
        "shape",
        "batch",
        "density",
        "kernel",
        "isa",
        "sparse µs",
        "GFLOP/s",
        "dense µs",
        "GFLOP/s",
        "speed-up"
    );
}

fn print_kernel(k: &KernelTiming, label: &str) {
    say!(
        "  {:<16} {:>5} {:>6.0}% {:<20} {:<8} {:>10.1} {:>8.1} {:>10.1} {:>8.1} {:>7.1}×",
        label,
        k.batch,
        100.0 * k.density,
        k.kernel.name(),
        k.isa.name(),
        1e6 * k.sparse_seconds,
        k.sparse_gflops,
        1e6 * k.dense_seconds,
        k.dense_gflops,
        k.speedup
    );
}

fn bench_train(args: TrainBenchArgs) -> CliResult {
    set_threads(args.common.threads)?;
    check_densities(&args.densities)?;
    let mnist = load_mnist(&args.common.data)?;
    let mut json = serde_json::json!({ "threads": rayon::current_num_threads() });
    let mut models_json = Vec::new();
    for model in &args.models {
        let base = TrainConfig {
            model: model.clone(),
            batch_size: args.batch_size,
            batch_shards: args.batch_shards,
            threads: args.common.threads,
            train_samples: args.train_samples,
            dense_kernels_above: args.dense_kernels_above.0,
            ..TrainConfig::default()
        };
        let samples = args.train_samples.unwrap_or_else(|| {
            mnist.train.len()
                - (base.validation_fraction * mnist.train.len() as f64).round() as usize
        });
        let steps = samples.div_ceil(args.batch_size);
        say!(
            "{} on MNIST, sparse momentum with a mask update at each epoch end: {samples} training samples, batch {}, {steps} steps per epoch, {} interleaved rounds, {} threads:",
            model.describe(),
            args.batch_size,
            args.rounds,
            rayon::current_num_threads()
        );
        let timings = time_epochs(
            &base,
            &mnist.train,
            &mnist.test,
            &args.densities,
            args.rounds,
        )?;
        print_timings(&timings, steps);
        print_channels(&timings);
        models_json.push(serde_json::json!({
            "model": model.to_string(), "steps_per_epoch": steps, "epochs": timings,
        }));
    }
    json["models"] = serde_json::Value::Array(models_json);
    if args.common.json {
        say!("{json}");
    }
    Ok(())
}

/// One line per configuration: median time per epoch and per step, the
/// speed-up over dense (the median of the ratios of neighbouring epochs),
/// and the median milliseconds of each phase of the epoch.
fn print_timings(timings: &[EpochTiming], steps: usize) {
    say!(
        "  {:<10} {:>12} {:>12} {:>18}   {:>8} {:>9} {:>12}",
        "weights",
        "median epoch",
        "per step",
        "speed-up vs dense",
        "fwd+bwd",
        "optimizer",
        "mask updates"
    );
    for t in timings {
        let label = t
            .density
            .map_or("dense".to_string(), |d| format!("{:.0}% sparse", 100.0 * d));
        let ms = |seconds: f64| format!("{:.1} ms", 1e3 * seconds);
        say!(
            "  {:<10} {:>10.3} s {:>9.2} ms {:>17.1}×   {:>8} {:>9} {:>12}",
            label,
            t.median_seconds,
            1e3 * t.median_seconds / steps.max(1) as f64,
            t.speedup_vs_dense,
            ms(t.phases.forward_backward),
            ms(t.phases.optimizer),
            if t.density.is_some() {
                ms(t.phases.mask_updates)
            } else {
                "—".to_string()
            }
        );
    }
}

/// The channels each sparse convolution skips at the end of the timing.
fn print_channels(timings: &[EpochTiming]) {
    let convolutions: Vec<_> = timings
        .iter()
        .filter_map(|t| t.density.map(|d| (d, t)))
        .flat_map(|(d, t)| t.layers.iter().map(move |l| (d, l)))
        .filter(|(_, l)| l.name.starts_with("conv"))
        .collect();
    if convolutions.is_empty() {
        return;
    }
    say!("  channels the sparse convolutions skip at the end (empty filters, unread inputs):");
    for (density, layer) in convolutions {
        say!(
            "    {:>3.0}% {:<13} {}",
            100.0 * density,
            layer.name,
            describe_channels(&layer.channels)
        );
    }
}

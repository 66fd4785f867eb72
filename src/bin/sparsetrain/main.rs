//! The `sparsetrain` command: train LeNet-300-100 on MNIST sparse from scratch,
//! resume, evaluate, inspect and plot runs, run several seeds, or benchmark.
//!
//! With no arguments it trains with sparse momentum at 5 % density for 100
//! epochs, the reference library's MNIST setup, into `runs/NAME/`.

/// `println!` that never panics: when stdout is closed (piped into `head`)
/// the program ends quietly, as command-line tools do; any other write error
/// ends it with a message.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

mod args;
mod config_file;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sparsetrain::bench::{EpochTiming, KernelTiming, time_epochs, time_im2col, time_kernels};
use sparsetrain::checkpoint::{Checkpoint, write_atomically};
use sparsetrain::conv::ConvGeometry;
use sparsetrain::data::Mnist;
use sparsetrain::nn::Architecture;
use sparsetrain::plot::plot_run;
use sparsetrain::runlog::RunLog;
use sparsetrain::sparsity::Method;
use sparsetrain::stats::Summary;
use sparsetrain::train::{SparseSettings, TrainConfig, Trainer};

use args::{BenchArgs, CliError, EvalArgs, InspectArgs, PlotArgs, SeedsArgs, TrainArgs};
use report::{ProgressPrinter, print_banner, print_summary, summary_json};

/// Train neural networks that are sparse from the first step to the last.
///
/// Without a subcommand, trains LeNet-300-100 on MNIST with sparse momentum
/// (the `train` subcommand) into a run directory `runs/NAME/` holding the
/// configuration, per-epoch metrics, a checkpoint and plots.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    allow_negative_numbers = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (the default), or continue one with `--resume`.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Train(TrainArgs),
    /// Test accuracy, per-class accuracy and confusion matrix of a checkpoint.
    Eval(EvalArgs),
    /// Per-layer shape, stored weights, density and empty neurons of a checkpoint.
    Inspect(InspectArgs),
    /// Draw a run's loss, accuracy, density and connectivity pictures (PNG and SVG).
    Plot(PlotArgs),
    /// Train several seeds of one configuration and summarise the test error
    /// (mean, standard error, 95 % CI); writes the table as CSV and JSON.
    #[command(allow_negative_numbers = true, args_override_self = true)]
    Seeds(SeedsArgs),
    /// Time training epochs sparse vs dense, and the sparse kernels vs sgemm, in one run.
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    let result =
        config_file::expand(std::env::args().collect()).and_then(|argv| run(Cli::parse_from(argv)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Some(Command::Train(args)) => train(args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Inspect(args)) => inspect(args),
        Some(Command::Plot(args)) => plot(args),
        Some(Command::Seeds(args)) => seeds(args),
        Some(Command::Bench(args)) => bench(args),
        None => train(cli.train),
    }
}

type CliResult = Result<(), CliError>;

fn load_mnist(dir: &Path) -> Result<Mnist, CliError> {
    Mnist::load(dir)
        .map_err(|e| format!("{e}\n(pass --data DIR with the four MNIST files, raw or .gz)").into())
}

/// The checkpoint file a path names: the file itself, or a run directory's.
fn checkpoint_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("checkpoint.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// A run directory `runs_dir/name` that does not exist yet: `name`, or
/// `name-2`, `name-3`, … so an earlier run is never overwritten.
fn fresh_run_dir(runs_dir: &Path, name: &str) -> Result<PathBuf, CliError> {
    let dir = (1..)
        .map(|n| {
            if n == 1 {
                runs_dir.join(name)
            } else {
                runs_dir.join(format!("{name}-{n}"))
            }
        })
        .find(|dir| !dir.exists())
        .expect("some suffix is free");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn train(args: TrainArgs) -> CliResult {
    let mnist = load_mnist(&args.common.data)?;
    let (mut trainer, run_dir, mut log) = match &args.resume {
        Some(path) => {
            let checkpoint = Checkpoint::open(&checkpoint_path(path))?;
            let mut config = checkpoint.config()?;
            config.epochs = args.epochs.unwrap_or(config.epochs);
            config.threads = args.common.threads.or(config.threads);
            let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
            trainer.restore(&checkpoint)?;
            let run_dir = checkpoint
                .path()
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf();
            let log = RunLog::resume(&run_dir.join("metrics.jsonl"), trainer.epochs_done())?;
            (trainer, run_dir, log)
        }
        None => {
            let config = args.config()?;
            let trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
            let name = args
                .run
                .clone()
                .unwrap_or_else(|| args.default_run_name(trainer.config()));
            let run_dir = fresh_run_dir(&args.runs_dir, &name)?;
            write_atomically(&run_dir.join("config.toml"), args.to_toml().as_bytes())?;
            let log = RunLog::create(&run_dir.join("metrics.jsonl"))?;
            (trainer, run_dir, log)
        }
    };
    print_banner(&trainer, &args, &run_dir);
    let checkpoint = run_dir.join("checkpoint.safetensors");
    let mut printer = ProgressPrinter::new(args.verbose, false);
    let summary = trainer.run_with(&mut printer, |trainer, stats| {
        // Checkpoint first: a crash before the log line repeats no epoch on resume.
        trainer.save_checkpoint(&checkpoint)?;
        log.epoch(stats)
    })?;
    printer.finish();
    print_summary(&summary);
    if !args.no_plots {
        let written = plot_run(&run_dir)?;
        say!(
            "plots: {}",
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.common.json {
        say!("{}", summary_json(&summary));
    }
    Ok(())
}

/// A trainer holding a checkpoint's model, ready to evaluate.
fn trainer_from(
    path: &Path,
    data: &Path,
    threads: Option<usize>,
) -> Result<(Trainer, Checkpoint), CliError> {
    let checkpoint = Checkpoint::open(&checkpoint_path(path))?;
    let config = TrainConfig {
        threads: threads.or(checkpoint.config()?.threads),
        ..checkpoint.config()?
    };
    let mnist = load_mnist(data)?;
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
    trainer.restore(&checkpoint)?;
    Ok((trainer, checkpoint))
}

fn eval(args: EvalArgs) -> CliResult {
    let (trainer, checkpoint) =
        trainer_from(&args.checkpoint, &args.common.data, args.common.threads)?;
    let evaluation = trainer.evaluate(&trainer.data().test)?;
    say!(
        "{} · after {} epochs · {} test samples",
        checkpoint.path().display(),
        trainer.epochs_done(),
        evaluation.samples
    );
    say!(
        "test accuracy {:.2}% · error {:.2}% · loss {:.4}",
        100.0 * evaluation.accuracy,
        100.0 * (1.0 - evaluation.accuracy),
        evaluation.loss
    );
    report::print_confusion(&evaluation);
    if args.common.json {
        say!("{}", serde_json::to_string(&evaluation)?);
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> CliResult {
    let checkpoint = Checkpoint::open(&checkpoint_path(&args.checkpoint))?;
    report::print_inspection(&checkpoint)
}

fn plot(args: PlotArgs) -> CliResult {
    for path in plot_run(&args.run)? {
        say!("{}", path.display());
    }
    Ok(())
}

fn seeds(args: SeedsArgs) -> CliResult {
    if args.seeds == 0 {
        return Err("invalid setting `seeds`: must be at least 1".into());
    }
    let base = args.train.config()?;
    let mnist = load_mnist(&args.train.common.data)?;
    let label = match &base.sparse {
        Some(sparse) => format!("{}-{}", args.train.method, sparse.density),
        None => "dense".to_string(),
    };
    say!(
        "{} seeds from {} · {}",
        args.seeds,
        base.seed,
        args.train.describe(&base)
    );
    let mut runs = Vec::with_capacity(args.seeds);
    for seed in (base.seed..).take(args.seeds) {
        let config = TrainConfig {
            seed,
            ..base.clone()
        };
        let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
        let mut printer = ProgressPrinter::new(args.train.verbose, true);
        let summary = trainer.run(&mut printer)?;
        printer.finish();
        say!(
            "  seed {seed}: test error {:.2}% (accuracy {:.2}%) · {:.1} s",
            100.0 * summary.test_error,
            100.0 * summary.test_accuracy,
            summary.seconds
        );
        runs.push(serde_json::json!({
            "seed": seed,
            "test_accuracy": summary.test_accuracy,
            "test_error": summary.test_error,
            "seconds": summary.seconds,
        }));
    }
    let column = |key: &str| -> Vec<f64> {
        runs.iter()
            .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let error = Summary::of(&column("test_error")).expect("at least one seed");
    let seconds = Summary::of(&column("seconds")).expect("at least one seed");
    say!(
        "test error: mean {:.3}% ± {:.3}% (standard error) · median {:.3}% · 95 % CI [{:.3}%, {:.3}%] · {:.1} s per run",
        100.0 * error.mean,
        100.0 * error.standard_error,
        100.0 * error.median,
        100.0 * error.ci95.0,
        100.0 * error.ci95.1,
        seconds.mean
    );
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let csv_path = args.out.join(format!("seeds-{label}.csv"));
    let mut csv = String::from("seed,test_accuracy,test_error,seconds\n");
    for r in &runs {
        csv += &format!(
            "{},{},{},{}\n",
            r["seed"], r["test_accuracy"], r["test_error"], r["seconds"]
        );
    }
    write_atomically(&csv_path, csv.as_bytes())?;
    let json_path = args.out.join(format!("seeds-{label}.json"));
    let table = serde_json::json!({
        "configuration": args.train.describe(&base),
        "epochs": base.epochs,
        "runs": runs,
        "test_error": error,
        "seconds": seconds,
    });
    write_atomically(&json_path, serde_json::to_string_pretty(&table)?.as_bytes())?;
    say!("wrote {} and {}", csv_path.display(), json_path.display());
    if args.train.common.json {
        say!("{table}");
    }
    Ok(())
}

/// Sizes rayon's global pool (used by the kernel timings); trainers get
/// `threads` through their configuration.
fn set_threads(threads: Option<usize>) -> CliResult {
    if let Some(n) = threads {
        if n == 0 {
            return Err("invalid setting `threads`: must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
}

/// Prints one line per configuration: median time per epoch (or per step,
/// dividing by `steps`) and the speed-up over dense.
fn print_timings(unit: &str, timings: &[EpochTiming], steps: usize) {
    say!(
        "  {:<10} {:>14} {:>16}",
        "weights",
        format!("median {unit}"),
        "speed-up vs dense"
    );
    for t in timings {
        let label = t
            .density
            .map_or("dense".to_string(), |d| format!("{:.0}% sparse", 100.0 * d));
        let (value, suffix) = if steps > 1 {
            (1e3 * t.median_seconds / steps as f64, "ms")
        } else {
            (t.median_seconds, "s")
        };
        say!(
            "  {:<10} {:>11.3} {suffix:<2} {:>15.1}×",
            label,
            value,
            t.speedup_vs_dense
        );
    }
}

fn print_kernel_header() {
    say!(
        "  {:<16} {:>7} {:<20} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "shape",
        "density",
        "kernel",
        "sparse µs",
        "GFLOP/s",
        "dense µs",
        "GFLOP/s",
        "speed-up"
    );
}

fn print_kernel(k: &KernelTiming, label: &str) {
    say!(
        "  {:<16} {:>6.0}% {:<20} {:>10.1} {:>9.1} {:>10.1} {:>9.1} {:>7.1}×",
        label,
        100.0 * k.density,
        k.kernel.name(),
        1e6 * k.sparse_seconds,
        k.sparse_gflops,
        1e6 * k.dense_seconds,
        k.dense_gflops,
        k.speedup
    );
}

fn bench(args: BenchArgs) -> CliResult {
    set_threads(args.common.threads)?;
    for &d in &args.densities {
        sparsetrain::sparsity::check_density(d)?;
    }
    let threads = rayon::current_num_threads();
    let mut json = serde_json::json!({ "threads": threads });
    if !args.kernels_only {
        let mnist = load_mnist(&args.common.data)?;
        let base = TrainConfig {
            model: args.model.clone(),
            batch_size: args.batch_size,
            threads: args.common.threads,
            ..TrainConfig::default()
        };
        say!(
            "Epoch time, {} on MNIST ({} training samples, batch {}), {} interleaved rounds, {threads} threads:",
            base.model.describe(),
            mnist.train.len()
                - (base.validation_fraction * mnist.train.len() as f64).round() as usize,
            args.batch_size,
            args.rounds
        );
        let timings = time_epochs(
            &base,
            &mnist.train,
            &mnist.test,
            &args.densities,
            args.rounds,
        )?;
        print_timings("epoch", &timings, 1);
        json["epochs"] = serde_json::to_value(&timings)?;

        // LeNet-5 steps with the masks as drawn: the cost of the convolutions
        // themselves, without mask updates or growth bookkeeping.
        let steps = args.steps.max(1);
        let lenet5 = TrainConfig {
            model: Architecture::LeNet5,
            train_samples: Some(steps * args.batch_size),
            sparse: Some(SparseSettings::method(Method::Static, 0.05)),
            ..base
        };
        say!(
            "Step time, LeNet-5-Caffe, batch {}, masks fixed at their initial uniform density, {} rounds of {steps} steps:",
            args.batch_size,
            args.rounds
        );
        let timings = time_epochs(
            &lenet5,
            &mnist.train,
            &mnist.test,
            &args.densities,
            args.rounds,
        )?;
        print_timings("step", &timings, steps);
        say!("  channels a sparse layer skips at these masks (empty filters, unread inputs):");
        for t in timings.iter().filter(|t| t.density.is_some()) {
            for layer in t.layers.iter().filter(|l| l.name.starts_with("conv")) {
                say!(
                    "    {:>3.0}% {:<13} {}",
                    100.0 * t.density.unwrap_or(1.0),
                    layer.name,
                    report::describe_channels(&layer.channels)
                );
            }
        }
        json["lenet5_steps"] = serde_json::to_value(&timings)?;
    }
    let shapes = [(300, 784), (100, 300), (10, 100)];
    say!(
        "Kernels, LeNet-300-100 weight shapes, batch {}, {threads} threads (GFLOP/s = 2·nnz·batch / time):",
        args.batch_size
    );
    print_kernel_header();
    let kernels =
        rayon::scope(|_| time_kernels(&shapes, &args.densities, args.batch_size, args.samples));
    for k in &kernels {
        print_kernel(k, &format!("{}×{}", k.shape.0, k.shape.1));
    }
    json["kernels"] = serde_json::to_value(&kernels)?;

    // A convolution is the same three products, with the im2col matrix as
    // input: `batch · out_h · out_w` columns instead of `batch`.
    let lenet5_convs = [
        (
            "conv1",
            20,
            ConvGeometry {
                in_channels: 1,
                height: 28,
                width: 28,
                kernel: (5, 5),
                stride: 1,
                padding: 0,
            },
        ),
        (
            "conv2",
            50,
            ConvGeometry {
                in_channels: 20,
                height: 12,
                width: 12,
                kernel: (5, 5),
                stride: 1,
                padding: 0,
            },
        ),
    ];
    say!(
        "Convolution kernels, LeNet-5-Caffe layers as products with the im2col matrix, batch {}, {threads} threads:",
        args.batch_size
    );
    print_kernel_header();
    let mut conv_json = Vec::new();
    for (name, out_channels, geometry) in lenet5_convs {
        let (out_h, out_w) = geometry.output_size()?;
        let columns = args.batch_size * out_h * out_w;
        let shape = (out_channels, geometry.patch_len());
        let timings =
            rayon::scope(|_| time_kernels(&[shape], &args.densities, columns, args.samples));
        for k in &timings {
            print_kernel(k, &format!("{name} {}×{}", shape.0, shape.1));
        }
        let (im2col, col2im) = time_im2col(&geometry, args.batch_size, args.samples)?;
        say!(
            "  {name}: im2col {:.1} µs, col2im {:.1} µs with every row (a sparse layer builds only the rows its filters read)",
            1e6 * im2col,
            1e6 * col2im
        );
        conv_json.push(serde_json::json!({
            "layer": name, "kernels": timings, "im2col_seconds": im2col, "col2im_seconds": col2im,
        }));
    }
    json["conv_kernels"] = serde_json::Value::Array(conv_json);
    if args.common.json {
        say!("{json}");
    }
    Ok(())
}

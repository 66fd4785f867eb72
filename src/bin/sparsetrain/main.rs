//! The `sparsetrain` command: train LeNet-300-100 on MNIST sparse from scratch,
//! run several seeds, or benchmark.
//!
//! With no arguments it trains with sparse momentum at 5 % density for 100
//! epochs, the reference library's MNIST setup.

mod args;
mod report;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sparsetrain::bench::{time_epochs, time_kernels};
use sparsetrain::data::Mnist;
use sparsetrain::stats::Summary;
use sparsetrain::train::{TrainConfig, Trainer};

use args::{BenchArgs, CliError, SeedsArgs, TrainArgs};
use report::{ProgressPrinter, print_banner, print_summary, summary_json};

/// Train neural networks that are sparse from the first step to the last.
///
/// Without a subcommand, trains LeNet-300-100 on MNIST with sparse momentum
/// (the `train` subcommand).
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model (the default).
    #[command(allow_negative_numbers = true)]
    Train(TrainArgs),
    /// Train several seeds of one configuration and summarise the test error
    /// (mean, standard error, 95 % CI); writes the table as CSV and JSON.
    #[command(allow_negative_numbers = true)]
    Seeds(SeedsArgs),
    /// Time training epochs sparse vs dense, and the sparse kernels vs sgemm, in one run.
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Train(args)) => train(args),
        Some(Command::Seeds(args)) => seeds(args),
        Some(Command::Bench(args)) => bench(args),
        None => train(cli.train),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), CliError>;

fn load_mnist(dir: &Path) -> Result<Mnist, CliError> {
    Mnist::load(dir)
        .map_err(|e| format!("{e}\n(pass --data DIR with the four MNIST files, raw or .gz)").into())
}

fn train(args: TrainArgs) -> CliResult {
    let config = args.config()?;
    let mnist = load_mnist(&args.common.data)?;
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
    print_banner(&trainer, &args);
    let mut printer = ProgressPrinter::new(args.verbose, false);
    let summary = trainer.run(&mut printer)?;
    printer.finish();
    print_summary(&summary);
    if args.common.json {
        println!("{}", summary_json(&summary));
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
    println!(
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
        println!(
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
    println!(
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
    write_file(&csv_path, &csv)?;
    let json_path = args.out.join(format!("seeds-{label}.json"));
    let table = serde_json::json!({
        "configuration": args.train.describe(&base),
        "epochs": base.epochs,
        "runs": runs,
        "test_error": error,
        "seconds": seconds,
    });
    write_file(&json_path, &serde_json::to_string_pretty(&table)?)?;
    println!("wrote {} and {}", csv_path.display(), json_path.display());
    if args.train.common.json {
        println!("{table}");
    }
    Ok(())
}

/// Writes `text` to `path` whole: to a temporary file first, then renamed, so
/// an interrupted write never leaves a half-written table behind.
fn write_file(path: &Path, text: &str) -> CliResult {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
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
            batch_size: args.batch_size,
            threads: args.common.threads,
            ..TrainConfig::default()
        };
        println!(
            "Epoch time, LeNet-300-100 on MNIST ({} training samples, batch {}), {} interleaved rounds, {threads} threads:",
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
        println!(
            "  {:<10} {:>14} {:>16}",
            "weights", "median epoch", "speed-up vs dense"
        );
        for t in &timings {
            let label = t
                .density
                .map_or("dense".to_string(), |d| format!("{:.0}% sparse", 100.0 * d));
            println!(
                "  {:<10} {:>12.3} s {:>15.1}×",
                label, t.median_seconds, t.speedup_vs_dense
            );
        }
        json["epochs"] = serde_json::to_value(&timings)?;
    }
    let shapes = [(300, 784), (100, 300), (10, 100)];
    println!(
        "Kernels, LeNet-300-100 weight shapes, batch {}, {threads} threads (GFLOP/s = 2·nnz·batch / time):",
        args.batch_size
    );
    println!(
        "  {:<9} {:>7} {:<20} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "shape", "density", "kernel", "sparse µs", "GFLOP/s", "dense µs", "GFLOP/s", "speed-up"
    );
    let kernels = time_kernels(&shapes, &args.densities, args.batch_size, args.samples);
    for k in &kernels {
        println!(
            "  {:<9} {:>6.0}% {:<20} {:>10.1} {:>9.1} {:>10.1} {:>9.1} {:>7.1}×",
            format!("{}×{}", k.shape.0, k.shape.1),
            100.0 * k.density,
            k.kernel.name(),
            1e6 * k.sparse_seconds,
            k.sparse_gflops,
            1e6 * k.dense_seconds,
            k.dense_gflops,
            k.speedup
        );
    }
    json["kernels"] = serde_json::to_value(&kernels)?;
    if args.common.json {
        println!("{json}");
    }
    Ok(())
}

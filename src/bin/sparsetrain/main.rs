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
mod bench;
mod config_file;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sparsetrain::checkpoint::{Checkpoint, write_atomically};
use sparsetrain::data::Mnist;
use sparsetrain::plot::plot_run;
use sparsetrain::runlog::RunLog;
use sparsetrain::stats::Summary;
use sparsetrain::train::{TrainConfig, Trainer};

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
        Some(Command::Bench(args)) => bench::bench(args),
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
        // The log line first: a crash before the (atomic) checkpoint is
        // written re-runs this epoch on resume, and the resumed log drops the
        // line. The other order lost the epoch's line when a crash fell
        // between the two.
        log.epoch(stats)?;
        trainer.save_checkpoint(&checkpoint)
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

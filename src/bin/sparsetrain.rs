//! The `sparsetrain` command: train LeNet-300-100 on MNIST sparse from scratch, or benchmark.
//!
//! With no arguments it trains with sparse momentum at 5 % density for 100
//! epochs, the reference library's MNIST setup.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sparsetrain::bench::{time_epochs, time_kernels};
use sparsetrain::data::Mnist;
use sparsetrain::nn::WeightInit;
use sparsetrain::sparsity::{MaskUpdate, MomentumWindow, SparseLearningConfig};
use sparsetrain::train::{
    EpochStats, Observer, SparseSettings, StepProgress, TrainConfig, TrainSummary, Trainer,
};

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
    /// Time training epochs sparse vs dense, and the sparse kernels vs sgemm, in one run.
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Directory with the four MNIST-format IDX files (raw or .gz).
    #[arg(long, default_value = "data", value_name = "DIR")]
    data: PathBuf,
    /// Worker threads (default: one per core). Results are identical for any count.
    #[arg(long)]
    threads: Option<usize>,
    /// Also print the result as one JSON object on its own line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TrainArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Passes over the training set.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Fraction of weights kept in every weight matrix, in (0, 1].
    #[arg(long, default_value_t = 0.05)]
    density: f64,
    /// Train every weight dense (no sparsity, no mask updates).
    #[arg(long, conflicts_with = "density")]
    dense: bool,
    /// Keep the initial random masks for the whole run (static sparse training).
    #[arg(long = "static", conflicts_with = "dense")]
    static_masks: bool,
    /// Initial learning rate (multiplied by 0.1 every 25 000 steps).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Samples per step.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Seed for initialisation, shuffling and randomised rules.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Fraction of each layer's weights pruned at the first mask update (decays by cosine).
    #[arg(long, default_value_t = 0.5)]
    prune_rate: f64,
    /// Initial weight scale: `sparse-fan-in` (±1/√(density·fan_in)) or `reference` (±1/√fan_in).
    #[arg(long, default_value_t = WeightInit::default())]
    init: WeightInit,
    /// Steps of dense momentum kept before each mask update, or `exact` for every step.
    #[arg(long, value_name = "STEPS|exact")]
    momentum_window: Option<String>,
    /// Fraction of the training file held out for validation.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    /// Train on the first N training samples only (quick runs).
    #[arg(long, value_name = "N")]
    train_samples: Option<usize>,
    /// Print every layer's counts at each mask update.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Densities to compare with the dense model.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05")]
    densities: Vec<f64>,
    /// Measured epochs per configuration (interleaved).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Batch size for the epochs and the kernels.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Samples per kernel timing (medians are reported).
    #[arg(long, default_value_t = 15)]
    samples: usize,
    /// Skip the epoch timings (kernels only).
    #[arg(long)]
    kernels_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Bench(args)) => bench(args),
        Some(Command::Train(args)) => train(args),
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

type CliResult = Result<(), Box<dyn std::error::Error>>;

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

fn load_mnist(dir: &std::path::Path) -> Result<Mnist, Box<dyn std::error::Error>> {
    Mnist::load(dir)
        .map_err(|e| format!("{e}\n(pass --data DIR with the four MNIST files, raw or .gz)").into())
}

fn train_config(args: &TrainArgs) -> Result<TrainConfig, Box<dyn std::error::Error>> {
    let window = match args.momentum_window.as_deref() {
        None => None,
        Some("exact") => Some(MomentumWindow::EveryStep),
        Some(steps) => Some(MomentumWindow::LastSteps(steps.parse().map_err(|_| {
            format!("invalid setting `momentum-window`: `{steps}` is neither a number of steps nor `exact`")
        })?)),
    };
    Ok(TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        validation_fraction: args.validation_fraction,
        train_samples: args.train_samples,
        init: args.init,
        threads: args.common.threads,
        sparse: (!args.dense).then_some(SparseSettings {
            density: args.density,
            learning: SparseLearningConfig {
                prune_rate: args.prune_rate,
                ..SparseLearningConfig::default()
            },
            window,
            update_masks: !args.static_masks,
        }),
        ..TrainConfig::default()
    })
}

fn train(args: TrainArgs) -> CliResult {
    set_threads(args.common.threads)?;
    let config = train_config(&args)?;
    config.validate()?;
    let mnist = load_mnist(&args.common.data)?;
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
    print_banner(&trainer, &args);
    let mut printer = ProgressPrinter::new(args.verbose);
    let summary = trainer.run(&mut printer)?;
    printer.finish();
    print_summary(&summary);
    if args.common.json {
        println!("{}", summary_json(&summary));
    }
    Ok(())
}

fn method_name(args: &TrainArgs) -> &'static str {
    match (args.dense, args.static_masks) {
        (true, _) => "dense",
        (false, true) => "static sparse",
        (false, false) => "sparse momentum",
    }
}

fn print_banner(trainer: &Trainer, args: &TrainArgs) {
    let config = trainer.config();
    let data = trainer.data();
    let widths: Vec<String> = config.widths.iter().map(usize::to_string).collect();
    println!(
        "sparsetrain {} · LeNet-300-100 ({}) · {} · data {}",
        env!("CARGO_PKG_VERSION"),
        widths.join("-"),
        method_name(args),
        args.common.data.display()
    );
    println!(
        "  {:<12} {:>9} {:>9} {:>8}",
        "layer", "shape", "nnz", "density"
    );
    let (mut nnz, mut total) = (0, 0);
    for layer in trainer.layers() {
        let size = layer.shape.0 * layer.shape.1;
        nnz += layer.nnz;
        total += size;
        println!(
            "  {:<12} {:>9} {:>9} {:>7.2}%",
            layer.name,
            format!("{}×{}", layer.shape.0, layer.shape.1),
            layer.nnz,
            100.0 * layer.nnz as f64 / size as f64
        );
    }
    println!(
        "  {:<12} {:>9} {:>9} {:>7.2}%  (biases dense)",
        "total",
        total,
        nnz,
        100.0 * nnz as f64 / total as f64
    );
    println!(
        "  samples: train {} · validation {} · test {}; batch {}, {} epochs, lr {} (×{} every {} steps), seed {}, threads {}",
        data.train.len(),
        data.validation.len(),
        data.test.len(),
        config.batch_size,
        config.epochs,
        config.lr,
        config.lr_decay_factor,
        config.lr_decay_steps,
        config.seed,
        trainer.threads()
    );
}

/// Shows progress: a bar on a terminal, a line per quarter epoch otherwise
/// (so CI logs stay readable), one line per epoch either way.
struct ProgressPrinter {
    bar: Option<ProgressBar>,
    verbose: bool,
}

impl ProgressPrinter {
    fn new(verbose: bool) -> Self {
        ProgressPrinter { bar: None, verbose }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for ProgressPrinter {
    fn on_step(&mut self, p: &StepProgress) {
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(p.steps_in_epoch as u64);
                bar.set_style(
                    ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps · {msg} · {per_sec} · eta {eta}")
                        .expect("the template is valid")
                        .progress_chars("=> "),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            if p.step == 1 {
                bar.reset();
                bar.set_length(p.steps_in_epoch as u64);
                bar.set_prefix(p.epoch.to_string());
            }
            bar.set_position(p.step as u64);
            bar.set_message(format!("loss {:.4}", p.loss));
        } else {
            let quarter = p.steps_in_epoch.div_ceil(4);
            if p.step.is_multiple_of(quarter) && p.step < p.steps_in_epoch {
                println!(
                    "  epoch {} · step {}/{} · loss {:.4}",
                    p.epoch, p.step, p.steps_in_epoch, p.loss
                );
            }
        }
    }

    fn on_mask_update(&mut self, update: &MaskUpdate) {
        if !self.verbose {
            return;
        }
        self.println(format!(
            "  mask update after step {} · prune rate {:.4}",
            update.step, update.prune_rate
        ));
        for l in &update.layers {
            self.println(format!(
                "    {:<12} nnz {:>7} → {:>7} ({:>6.2}%) · removed {:>6} · regrown {:>6} · share {:.3}",
                l.name,
                l.nnz_before,
                l.nnz_after,
                100.0 * l.nnz_after as f64 / l.size as f64,
                l.removed,
                l.regrown,
                l.share
            ));
        }
    }

    fn on_epoch(&mut self, s: &EpochStats) {
        let validation = s
            .validation_accuracy
            .map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
        self.println(format!(
            "epoch {:>3} · loss {:.4} · train {:.2}% · val {} · test {:.2}% · density {:.2}% · {:.0} samples/s · {:.2} s",
            s.epoch,
            s.train_loss,
            100.0 * s.train_accuracy,
            validation,
            100.0 * s.test_accuracy,
            100.0 * s.density,
            s.samples_per_second,
            s.seconds
        ));
    }
}

fn print_summary(s: &TrainSummary) {
    println!(
        "done · test accuracy {:.2}% · test error {:.2}% · {} epochs · density {:.2}% · {:.1} s",
        100.0 * s.test_accuracy,
        100.0 * s.test_error,
        s.epochs,
        100.0 * s.density,
        s.seconds
    );
}

fn summary_json(s: &TrainSummary) -> serde_json::Value {
    let layer_nnz: serde_json::Map<String, serde_json::Value> = s
        .layers
        .iter()
        .map(|l| (l.name.clone(), l.nnz.into()))
        .collect();
    serde_json::json!({
        "test_accuracy": s.test_accuracy,
        "test_error": s.test_error,
        "epochs": s.epochs,
        "seconds": s.seconds,
        "density": s.density,
        "layer_nnz": layer_nnz,
    })
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

//! What the CLI prints: the banner, progress, epoch lines, summaries.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sparsetrain::checkpoint::Checkpoint;
use sparsetrain::sparse::ChannelUsage;
use sparsetrain::sparsity::MaskUpdate;
use sparsetrain::train::{EpochStats, Evaluation, Observer, StepProgress, TrainSummary, Trainer};

use crate::args::{CliError, TrainArgs};

/// Prints the model, its layers and the run's settings.
pub fn print_banner(trainer: &Trainer, args: &TrainArgs, run_dir: &Path) {
    let config = trainer.config();
    let data = trainer.data();
    say!(
        "sparsetrain {} · {} · data {}",
        env!("CARGO_PKG_VERSION"),
        config.model.describe(),
        args.common.data.display()
    );
    say!("  {}", args.describe(config));
    if trainer.epochs_done() > 0 {
        say!(
            "  resumed after epoch {} (step {})",
            trainer.epochs_done(),
            trainer.steps_done()
        );
    }
    say!("  run directory {}", run_dir.display());
    say!(
        "  {:<12} {:>9} {:>9} {:>8}",
        "layer",
        "shape",
        "nnz",
        "density"
    );
    let (mut nnz, mut total) = (0, 0);
    for layer in trainer.layers() {
        let size = layer.shape.0 * layer.shape.1;
        nnz += layer.nnz;
        total += size;
        say!(
            "  {:<12} {:>9} {:>9} {:>7.2}%{}",
            layer.name,
            format!("{}×{}", layer.shape.0, layer.shape.1),
            layer.nnz,
            100.0 * layer.nnz as f64 / size as f64,
            if layer.sparse { "" } else { "  (stored dense)" }
        );
    }
    say!(
        "  {:<12} {:>9} {:>9} {:>7.2}%  (biases dense)",
        "total",
        total,
        nnz,
        100.0 * nnz as f64 / total as f64
    );
    say!(
        "  samples: train {} · validation {} · test {}; batch {} in {} shard{}, {} epochs, lr {} (×{} every {} steps), seed {}, threads {}",
        data.train.len(),
        data.validation.len(),
        data.test.len(),
        config.batch_size,
        trainer.batch_shards(),
        if trainer.batch_shards() == 1 { "" } else { "s" },
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
pub struct ProgressPrinter {
    bar: Option<ProgressBar>,
    verbose: bool,
    quiet: bool,
}

impl ProgressPrinter {
    /// `verbose`: per-layer lines at each mask update; `quiet`: no per-epoch lines.
    pub fn new(verbose: bool, quiet: bool) -> Self {
        ProgressPrinter {
            bar: None,
            verbose,
            quiet,
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => say!("{line}"),
        }
    }

    /// Removes the progress bar.
    pub fn finish(&mut self) {
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
                    ProgressStyle::with_template(
                        "epoch {prefix} [{bar:30}] {pos}/{len} steps · {msg} · eta {eta}",
                    )
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
        } else if !self.quiet {
            let quarter = p.steps_in_epoch.div_ceil(4);
            if p.step.is_multiple_of(quarter) && p.step < p.steps_in_epoch {
                say!(
                    "  epoch {} · step {}/{} · loss {:.4}",
                    p.epoch,
                    p.step,
                    p.steps_in_epoch,
                    p.loss
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
                "    {:<12} nnz {:>7} → {:>7} ({:>6.2}%) · removed {:>6} · regrown {:>6} (revived {}) · share {:.3} · {}",
                l.name,
                l.nnz_before,
                l.nnz_after,
                100.0 * l.nnz_after as f64 / l.size as f64,
                l.removed,
                l.regrown,
                l.revived,
                l.share,
                describe_channels(&l.channels)
            ));
        }
    }

    fn on_epoch(&mut self, s: &EpochStats) {
        if self.quiet {
            return;
        }
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

/// Empty output and unread input channels, and the speed-up skipping them
/// implies (see [`ChannelUsage::implied_speedup`]).
pub fn describe_channels(c: &ChannelUsage) -> String {
    format!(
        "empty outputs {}/{} · unread inputs {}/{} · channel speed-up {}",
        c.empty_outputs,
        c.outputs,
        c.unread_inputs,
        c.inputs,
        speedup_text(c)
    )
}

/// `×1.25`, or `no weights left` for a layer that has none.
fn speedup_text(c: &ChannelUsage) -> String {
    let speedup = c.implied_speedup();
    if speedup.is_finite() {
        format!("×{speedup:.2}")
    } else {
        "no weights left".into()
    }
}

/// The one-line result of a run.
pub fn print_summary(s: &TrainSummary) {
    say!(
        "done · test accuracy {:.2}% · test error {:.2}% · {} epochs · density {:.2}% · {:.1} s",
        100.0 * s.test_accuracy,
        100.0 * s.test_error,
        s.epochs,
        100.0 * s.density,
        s.seconds
    );
}

/// The run's result as one JSON object (what `--json` prints).
pub fn summary_json(s: &TrainSummary) -> serde_json::Value {
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

/// Per-class accuracy and the confusion matrix (rows: true class, columns: predicted).
pub fn print_confusion(evaluation: &Evaluation) {
    let classes = evaluation.confusion.len();
    say!("per-class accuracy:");
    for (class, accuracy) in evaluation.class_accuracy().iter().enumerate() {
        let text = accuracy.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        say!("  {class}: {text}");
    }
    say!("confusion matrix (rows: true class, columns: predicted):");
    let header: String = (0..classes).map(|c| format!("{c:>6}")).collect();
    say!("     {header}");
    for (class, row) in evaluation.confusion.iter().enumerate() {
        let cells: String = row.iter().map(|n| format!("{n:>6}")).collect();
        say!("  {class:>2} {cells}");
    }
}

/// What a checkpoint holds: the run's settings and progress, and every weight
/// matrix with its size, stored weights and empty neurons.
pub fn print_inspection(checkpoint: &Checkpoint) -> Result<(), CliError> {
    let config = checkpoint.config()?;
    say!("{}", checkpoint.path().display());
    say!(
        "  after {} epochs of {} ({} steps) · seed {} · batch {} · lr {}",
        checkpoint.epochs_done()?,
        config.epochs,
        checkpoint.metadata("steps_done")?,
        config.seed,
        config.batch_size,
        config.lr
    );
    match &config.sparse {
        Some(sparse) => say!(
            "  density {} · {} distribution",
            sparse.density,
            sparse.distribution
        ),
        None => say!("  dense"),
    }
    say!(
        "  {:<14} {:>6} {:>12} {:>8} {:>8} {:>14} {:>14} {:>9}",
        "layer",
        "format",
        "shape",
        "nnz",
        "density",
        "empty outputs",
        "unread inputs",
        "speed-up"
    );
    let (mut stored, mut total) = (0, 0);
    for name in checkpoint.param_names()? {
        let (rows, cols) = checkpoint.param_shape(&name)?;
        if cols == 1 {
            continue; // a bias
        }
        let dims = checkpoint.param_dims(&name)?;
        let group = dims[2..].iter().product::<usize>();
        let (format, nnz, channels) = if checkpoint.param_is_sparse(&name)? {
            let m = checkpoint.sparse_param(&name)?;
            ("csr", m.nnz(), m.channel_usage(group))
        } else {
            let all_used = ChannelUsage {
                outputs: rows,
                inputs: cols / group.max(1),
                ..ChannelUsage::default()
            };
            ("dense", rows * cols, all_used)
        };
        stored += nnz;
        total += rows * cols;
        let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
        say!(
            "  {:<14} {:>6} {:>12} {:>8} {:>7.2}% {:>14} {:>14} {:>9}",
            name,
            format,
            dims.join("×"),
            nnz,
            100.0 * nnz as f64 / (rows * cols) as f64,
            format!("{} of {}", channels.empty_outputs, channels.outputs),
            format!("{} of {}", channels.unread_inputs, channels.inputs),
            speedup_text(&channels)
        );
    }
    say!(
        "  {:<14} {:>6} {:>12} {:>8} {:>7.2}%",
        "total",
        "",
        total,
        stored,
        100.0 * stored as f64 / total.max(1) as f64
    );
    Ok(())
}

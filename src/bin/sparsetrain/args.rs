//! Command-line flags and how they become a [`TrainConfig`].

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sparsetrain::autograd::DEFAULT_DENSE_KERNELS_ABOVE;
use sparsetrain::nn::{Architecture, WeightInit};
use sparsetrain::sparsity::{
    Distribution, GrowthChoice, MaskUpdates, Method, MomentumWindow, PruneChoice,
    PruneRateSchedule, RedistributionChoice, RegrownMomentum, RegrownWeight,
};
use sparsetrain::train::{SparseSettings, TrainConfig};

/// A CLI error: the message is printed after `error: `.
pub type CliError = Box<dyn std::error::Error>;

/// Epochs when `--epochs` is not given.
pub const DEFAULT_EPOCHS: usize = 100;

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Directory with the four MNIST-format IDX files (raw or .gz).
    #[arg(long, default_value = "data", value_name = "DIR")]
    pub data: PathBuf,
    /// Worker threads (default: one per core). Results are identical for any
    /// count at a fixed `--batch-shards` (whose default follows it).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also print the result as one JSON object on its own line.
    #[arg(long)]
    pub json: bool,
}

/// What to train and how.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Read settings from a TOML file of `flag = value` lines (flag names
    /// without `--`, e.g. `density = 0.02`); flags on the command line win.
    /// Every run directory holds one: `runs/NAME/config.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the run directory under `--runs-dir` [default: METHOD-DENSITY-seedSEED].
    #[arg(long, value_name = "NAME")]
    pub run: Option<String>,
    /// Where run directories go.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    /// Continue the run in this directory (or from this checkpoint file) where
    /// it stopped; its settings come from the checkpoint (`--epochs` and
    /// `--threads` may change).
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// Do not draw the plots at the end of training.
    #[arg(long)]
    pub no_plots: bool,
    /// The network: lenet300-100, lenet5 (LeNet-5-Caffe), mlp-W1-W2-… (any
    /// widths, input first) or wrn-DEPTH-WIDTH (a Wide ResNet).
    #[arg(long, default_value = "lenet300-100")]
    pub model: Architecture,
    /// Passes over the training set [default: 100].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Fraction of all weights kept, in (0, 1].
    #[arg(long, default_value_t = 0.05)]
    pub density: f64,
    /// Train every weight dense (no sparsity, no mask updates).
    #[arg(long, conflicts_with_all = ["density", "method"])]
    pub dense: bool,
    /// Sparse-learning method: sparse-momentum, set, rigl or static; each
    /// brings its published defaults, which the flags below override.
    #[arg(long, default_value_t = Method::SparseMomentum)]
    pub method: Method,
    /// How the density is shared among layers: uniform, er (Erdős–Rényi) or erk
    /// [default: the method's].
    #[arg(long)]
    pub distribution: Option<Distribution>,
    /// Give a layer a density of its own, e.g. `fc1.weight=1` keeps it dense
    /// (repeat for several layers); the others share what is left.
    #[arg(long = "layer-density", value_name = "NAME=D", value_parser = parse_layer_density)]
    pub layer_densities: Vec<(String, f64)>,
    /// Pruning rule: magnitude, global-magnitude or set.
    #[arg(long)]
    pub prune: Option<PruneChoice>,
    /// Growth rule: momentum, gradient or random.
    #[arg(long)]
    pub growth: Option<GrowthChoice>,
    /// Redistribution rule: momentum, magnitude, nonzero or none.
    #[arg(long)]
    pub redistribution: Option<RedistributionChoice>,
    /// Fraction of a layer's weights pruned at the first update.
    #[arg(long)]
    pub prune_rate: Option<f64>,
    /// How the prune rate changes: cosine, linear or constant.
    #[arg(long, value_name = "cosine|linear|constant")]
    pub prune_schedule: Option<String>,
    /// The prune rate at the end of training, for cosine and linear schedules.
    #[arg(long)]
    pub prune_rate_floor: Option<f64>,
    /// Update the masks every N steps, or at the end of every epoch.
    #[arg(long, value_name = "STEPS|epoch")]
    pub update_every: Option<String>,
    /// Freeze the masks after this fraction of training, in (0, 1].
    #[arg(long, value_name = "FRACTION")]
    pub stop_updates_after: Option<f64>,
    /// Value of grown weights: zero, or init (drawn like the initial weights, as original SET).
    #[arg(long, value_name = "zero|init")]
    pub regrow_weights: Option<String>,
    /// Momentum of grown weights: estimate (the momentum that selected them) or zero.
    #[arg(long, value_name = "estimate|zero")]
    pub regrow_momentum: Option<String>,
    /// Steps of dense momentum kept before each update for momentum growth, or
    /// `exact` for every step [default: until the momentum forgets 99 %: 44].
    #[arg(long, value_name = "STEPS|exact")]
    pub momentum_window: Option<String>,
    /// Initial learning rate (multiplied by 0.1 every 25 000 steps)
    /// [default: 0.1; 0.05 for lenet5, which is unstable at 0.1 here].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Samples per step.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Split every batch into N parts trained side by side, their gradients
    /// summed [default: one per thread, at least 32 samples each; 1 for
    /// networks with batch norm]. Results differ in rounding with N.
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub batch_shards: Option<usize>,
    /// Seed for initialisation, shuffling and randomised rules.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Initial weight scale: `sparse-fan-in` (±1/√(density·fan_in)) or `reference` (±1/√fan_in).
    #[arg(long, default_value_t = WeightInit::default())]
    pub init: WeightInit,
    /// Fraction of the training file held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub validation_fraction: f64,
    /// Train on the first N training samples only (quick runs).
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
    /// A sparse layer denser than this computes with dense kernels (faster
    /// above the cross-over that `bench kernels` prints; the weights stay
    /// CSR), or `never`.
    #[arg(long, value_name = "DENSITY|never", default_value_t = DenseKernelsAbove::default())]
    pub dense_kernels_above: DenseKernelsAbove,
    /// Print every layer's counts at each mask update.
    #[arg(long)]
    pub verbose: bool,
}

impl TrainArgs {
    /// The training configuration these flags describe.
    pub fn config(&self) -> Result<TrainConfig, CliError> {
        let sparse = if self.dense {
            None
        } else {
            Some(self.sparse_settings()?)
        };
        let config = TrainConfig {
            model: self.model.clone(),
            epochs: self.epochs.unwrap_or(DEFAULT_EPOCHS),
            batch_size: self.batch_size,
            batch_shards: self.batch_shards,
            lr: self.lr(),
            seed: self.seed,
            validation_fraction: self.validation_fraction,
            train_samples: self.train_samples,
            init: self.init,
            threads: self.common.threads,
            dense_kernels_above: self.dense_kernels_above.0,
            sparse,
            ..TrainConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// `--lr`, or the network's default.
    fn lr(&self) -> f32 {
        self.lr.unwrap_or_else(|| self.model.default_lr())
    }

    fn sparse_settings(&self) -> Result<SparseSettings, CliError> {
        let mut settings = SparseSettings::method(self.method, self.density);
        if let Some(distribution) = self.distribution {
            settings.distribution = distribution;
        }
        settings.layer_densities = self.layer_densities.clone();
        match &mut settings.updates {
            Some(updates) => self.override_updates(updates)?,
            None => {
                if let Some(flag) = self.update_flags().into_iter().find(|(_, given)| *given) {
                    return Err(format!(
                        "--{} has no effect with --method static, whose masks never change",
                        flag.0
                    )
                    .into());
                }
            }
        }
        Ok(settings)
    }

    /// The mask-update flags, and whether each was given.
    fn update_flags(&self) -> [(&'static str, bool); 11] {
        [
            ("prune", self.prune.is_some()),
            ("growth", self.growth.is_some()),
            ("redistribution", self.redistribution.is_some()),
            ("prune-rate", self.prune_rate.is_some()),
            ("prune-schedule", self.prune_schedule.is_some()),
            ("prune-rate-floor", self.prune_rate_floor.is_some()),
            ("update-every", self.update_every.is_some()),
            ("stop-updates-after", self.stop_updates_after.is_some()),
            ("regrow-weights", self.regrow_weights.is_some()),
            ("regrow-momentum", self.regrow_momentum.is_some()),
            ("momentum-window", self.momentum_window.is_some()),
        ]
    }

    fn override_updates(&self, updates: &mut MaskUpdates) -> Result<(), CliError> {
        updates.prune = self.prune.unwrap_or(updates.prune);
        updates.growth = self.growth.unwrap_or(updates.growth);
        updates.redistribution = self.redistribution.unwrap_or(updates.redistribution);
        updates.prune_rate = self.prune_rate.unwrap_or(updates.prune_rate);
        if let Some(schedule) = &self.prune_schedule {
            let floor = match updates.schedule {
                PruneRateSchedule::Cosine { floor } | PruneRateSchedule::Linear { floor } => floor,
                PruneRateSchedule::Constant => 0.0,
            };
            updates.schedule = match schedule.as_str() {
                "cosine" => PruneRateSchedule::Cosine { floor },
                "linear" => PruneRateSchedule::Linear { floor },
                "constant" => PruneRateSchedule::Constant,
                other => {
                    return Err(invalid(
                        "prune-schedule",
                        other,
                        "cosine, linear or constant",
                    ));
                }
            };
        }
        if let Some(new_floor) = self.prune_rate_floor {
            match &mut updates.schedule {
                PruneRateSchedule::Cosine { floor } | PruneRateSchedule::Linear { floor } => {
                    *floor = new_floor
                }
                PruneRateSchedule::Constant => {
                    return Err(
                        "--prune-rate-floor needs a cosine or linear --prune-schedule".into(),
                    );
                }
            }
        }
        if let Some(every) = &self.update_every {
            updates.update_every =
                match every.as_str() {
                    "epoch" => None,
                    steps => Some(steps.parse().map_err(|_| {
                        invalid("update-every", steps, "a number of steps or `epoch`")
                    })?),
                };
        }
        if self.stop_updates_after.is_some() {
            updates.stop_after = self.stop_updates_after;
        }
        if let Some(weights) = &self.regrow_weights {
            updates.regrowth.weight = match weights.as_str() {
                "zero" => RegrownWeight::Zero,
                "init" => RegrownWeight::Init(self.init),
                other => return Err(invalid("regrow-weights", other, "zero or init")),
            };
        }
        if let Some(momentum) = &self.regrow_momentum {
            updates.regrowth.momentum = match momentum.as_str() {
                "estimate" => RegrownMomentum::Estimate,
                "zero" => RegrownMomentum::Zero,
                other => return Err(invalid("regrow-momentum", other, "estimate or zero")),
            };
        }
        if let Some(window) = &self.momentum_window {
            updates.momentum_window = Some(match window.as_str() {
                "exact" => MomentumWindow::EveryStep,
                steps => MomentumWindow::LastSteps(steps.parse().map_err(|_| {
                    invalid("momentum-window", steps, "a number of steps or `exact`")
                })?),
            });
        }
        Ok(())
    }

    /// The run directory's default name.
    pub fn default_run_name(&self, config: &TrainConfig) -> String {
        let model = match &config.model {
            m if *m == Architecture::default() => String::new(),
            m => format!("{m}-"),
        };
        match &config.sparse {
            Some(sparse) => format!(
                "{model}{}-{}-seed{}",
                self.method, sparse.density, config.seed
            ),
            None => format!("{model}dense-seed{}", config.seed),
        }
    }

    /// These settings as a `--config` file: every training setting, explicit.
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::new();
        let mut set = |key: &str, value: toml::Value| {
            table.insert(key.to_string(), value);
        };
        set("data", self.common.data.display().to_string().into());
        set("model", self.model.to_string().into());
        set(
            "epochs",
            (self.epochs.unwrap_or(DEFAULT_EPOCHS) as i64).into(),
        );
        if self.dense {
            set("dense", true.into());
        } else {
            set("density", self.density.into());
            set("method", self.method.to_string().into());
        }
        let optional_text = [
            ("distribution", self.distribution.map(|d| d.to_string())),
            ("prune", self.prune.map(|p| p.to_string())),
            ("growth", self.growth.map(|g| g.to_string())),
            ("redistribution", self.redistribution.map(|r| r.to_string())),
            ("prune-schedule", self.prune_schedule.clone()),
            ("update-every", self.update_every.clone()),
            ("regrow-weights", self.regrow_weights.clone()),
            ("regrow-momentum", self.regrow_momentum.clone()),
            ("momentum-window", self.momentum_window.clone()),
        ];
        for (key, value) in optional_text {
            if let Some(value) = value {
                set(key, value.into());
            }
        }
        for (key, value) in [
            ("prune-rate", self.prune_rate),
            ("prune-rate-floor", self.prune_rate_floor),
            ("stop-updates-after", self.stop_updates_after),
        ] {
            if let Some(value) = value {
                set(key, value.into());
            }
        }
        if !self.layer_densities.is_empty() {
            let overrides = self
                .layer_densities
                .iter()
                .map(|(name, d)| toml::Value::from(format!("{name}={d}")));
            set("layer-density", toml::Value::Array(overrides.collect()));
        }
        // Through its decimal text, so 0.1 stays 0.1 (not 0.10000000149…).
        set(
            "lr",
            self.lr()
                .to_string()
                .parse::<f64>()
                .expect("a float's text parses")
                .into(),
        );
        set("batch-size", (self.batch_size as i64).into());
        set("seed", (self.seed as i64).into());
        set("init", self.init.to_string().into());
        set("validation-fraction", self.validation_fraction.into());
        set(
            "dense-kernels-above",
            self.dense_kernels_above.to_string().into(),
        );
        if let Some(n) = self.train_samples {
            set("train-samples", (n as i64).into());
        }
        if let Some(n) = self.batch_shards {
            set("batch-shards", (n as i64).into());
        }
        toml::to_string(&table).expect("a table of plain values serialises")
    }

    /// A one-line description of the sparse-learning setup, for the banner.
    pub fn describe(&self, config: &TrainConfig) -> String {
        let Some(sparse) = &config.sparse else {
            return "dense".into();
        };
        let mut text = format!("{} · {} distribution", self.method, sparse.distribution);
        if let Some(u) = &sparse.updates {
            let schedule = match u.schedule {
                PruneRateSchedule::Cosine { floor } => format!("cosine to {floor}"),
                PruneRateSchedule::Linear { floor } => format!("linear to {floor}"),
                PruneRateSchedule::Constant => "constant".into(),
            };
            let every = u
                .update_every
                .map_or("every epoch".to_string(), |n| format!("every {n} steps"));
            let stop = u.stop_after.map_or(String::new(), |f| {
                format!(" until {:.0} % of training", 100.0 * f)
            });
            text += &format!(
                " · prune {} · redistribute {} · grow {} · prune rate {} ({schedule}) · updates {every}{stop}",
                u.prune, u.redistribution, u.growth, u.prune_rate
            );
        }
        text
    }
}

fn invalid(setting: &str, value: &str, expected: &str) -> CliError {
    format!("invalid setting `{setting}`: `{value}` is not {expected}").into()
}

/// `--dense-kernels-above`: a density, or `never` (`None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseKernelsAbove(pub Option<f64>);

impl Default for DenseKernelsAbove {
    fn default() -> Self {
        DenseKernelsAbove(Some(DEFAULT_DENSE_KERNELS_ABOVE))
    }
}

impl std::str::FromStr for DenseKernelsAbove {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "never" {
            return Ok(DenseKernelsAbove(None));
        }
        match text.parse::<f64>() {
            Ok(density) if (0.0..=1.0).contains(&density) => Ok(DenseKernelsAbove(Some(density))),
            _ => Err(format!("`{text}` is not a density in [0, 1] or `never`")),
        }
    }
}

impl std::fmt::Display for DenseKernelsAbove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(density) => write!(f, "{density}"),
            None => f.write_str("never"),
        }
    }
}

/// Parses `NAME=DENSITY`.
fn parse_layer_density(text: &str) -> Result<(String, f64), String> {
    let (name, density) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=DENSITY (e.g. fc1.weight=1)"))?;
    let density = density
        .parse()
        .map_err(|_| format!("`{density}` in `{text}` is not a number"))?;
    Ok((name.to_string(), density))
}

/// What to time.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The three sparse kernels against the dense product of the same shape,
    /// over shapes, batches and densities; the cross-over density per shape;
    /// the engine's dense path against plain sgemm; LeNet-5's convolutions.
    #[command(allow_negative_numbers = true)]
    Kernels(KernelBenchArgs),
    /// Time per training epoch (and per step), sparse vs dense, interleaved in
    /// one run, for LeNet-300-100 and LeNet-5-Caffe on MNIST.
    #[command(allow_negative_numbers = true)]
    Train(TrainBenchArgs),
}

/// `bench kernels`.
#[derive(Debug, Args)]
pub struct KernelBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Weight shapes, `ROWSxCOLS`.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape,
          default_value = "300x784,100x300,10x100,4096x4096")]
    pub shapes: Vec<(usize, usize)>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', value_parser = parse_positive, default_value = "64,100")]
    pub batches: Vec<usize>,
    /// Densities; the ones above 5 % locate the cross-over with dense.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.01,0.02,0.05,0.1,0.2,0.35,0.5,1"
    )]
    pub densities: Vec<f64>,
    /// Instruction sets of the sparse kernels: best, all, portable, avx2 or avx512.
    #[arg(long, default_value = "best")]
    pub isa: String,
    /// Samples per timing (medians are reported).
    #[arg(long, default_value_t = 7)]
    pub samples: usize,
}

/// `bench train`.
#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The networks whose epochs are timed.
    #[arg(long, value_delimiter = ',', default_value = "lenet300-100,lenet5")]
    pub models: Vec<Architecture>,
    /// Densities to compare with the dense model.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05")]
    pub densities: Vec<f64>,
    /// Measured epochs per configuration (interleaved).
    #[arg(long, value_parser = parse_positive, default_value = "3")]
    pub rounds: usize,
    /// Batch size.
    #[arg(long, value_parser = parse_positive, default_value = "100")]
    pub batch_size: usize,
    /// As for `train`: parts of a batch trained side by side [default: one per thread].
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub batch_shards: Option<usize>,
    /// Train on the first N training samples only (shorter epochs).
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
    /// As for `train`: sparse layers denser than this use dense kernels, or `never`.
    #[arg(long, value_name = "DENSITY|never", default_value_t = DenseKernelsAbove::default())]
    pub dense_kernels_above: DenseKernelsAbove,
}

fn parse_positive(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a positive integer"))
}

fn parse_shape(text: &str) -> Result<(usize, usize), String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{text}` is not a shape ROWSxCOLS of positive integers"))
    };
    let (rows, cols) = text
        .split_once(['x', '×'])
        .ok_or_else(|| format!("`{text}` is not a shape ROWSxCOLS"))?;
    Ok((parse(rows)?, parse(cols)?))
}

/// Evaluating a checkpoint.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The checkpoint file, or a run directory holding `checkpoint.safetensors`.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A checkpoint or run directory to describe.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The checkpoint file, or a run directory holding `checkpoint.safetensors`.
    pub checkpoint: PathBuf,
}

/// A run directory to draw.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The run directory (`runs/NAME`).
    pub run: PathBuf,
}

/// Several seeds of one configuration.
#[derive(Debug, Args)]
pub struct SeedsArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// How many seeds: `--seed`, `--seed + 1`, …
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Directory for the CSV and JSON tables.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
}

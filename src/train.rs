//! The training loop: batches, forward, backward, optimizer, mask updates, evaluation.
//!
//! [`Trainer`] owns the model, its parameters, the optimizer settings and the
//! sparse-learning controller. It reports through an [`Observer`] and never
//! prints: the CLI decides what to show.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::autograd::{DEFAULT_DENSE_KERNELS_ABOVE, DenseKernels, Gradients, Tape, Workspace};
use crate::checkpoint::{Checkpoint, Contents, restore_params};
use crate::conv::ImageShape;
use crate::data::{Batch, Dataset, Splits, epoch_order};
use crate::error::{Error, Result};
use crate::nn::{
    ActivationShape, Architecture, Layer, ParamBuilder, Sequential, WeightInit, WeightKind,
};
use crate::optim::{Sgd, StepLr};
use crate::params::{ParamStore, ParamValue};
use crate::sparse::ChannelUsage;
use crate::sparsity::{
    Distribution, LayerShape, MaskUpdate, MaskUpdates, Method, RegrownWeight, Rules, RunLength,
    SparseLearning, SparseLearningConfig, check_density, layer_counts,
};

/// Everything that defines a training run. [`Default`] is the reference
/// library's MNIST setup: LeNet-300-100 at 5 % density, 100 epochs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The network (LeNet-300-100 by default).
    pub model: Architecture,
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Initial learning rate (the CLI defaults to [`crate::nn::Architecture::default_lr`]).
    pub lr: f32,
    /// SGD momentum β.
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// The learning rate is multiplied by `lr_decay_factor` every `lr_decay_steps` steps.
    pub lr_decay_steps: usize,
    /// See `lr_decay_steps`.
    pub lr_decay_factor: f32,
    /// Seeds initialisation, shuffling and randomised rules.
    pub seed: u64,
    /// Fraction of the training file held out for validation (its tail).
    pub validation_fraction: f64,
    /// Train on only the first this-many training samples (quick runs, tests).
    pub train_samples: Option<usize>,
    /// Sparse training settings; `None` trains every weight dense.
    pub sparse: Option<SparseSettings>,
    /// Scale of the initial weights.
    pub init: WeightInit,
    /// Worker threads; `None` uses one per core. Results do not depend on it
    /// at a fixed `batch_shards` (whose default does).
    pub threads: Option<usize>,
    /// Parts every batch is split into, each trained on a tape of its own,
    /// side by side on the pool's threads, their gradients then summed: the
    /// gradient of the whole batch, summed in another order, so results
    /// differ in rounding from one shard count to another. On a small network
    /// this is how a second core helps most: each core keeps its part's
    /// activations in its own cache. `None` takes one shard per thread, with
    /// at least [`MIN_SHARD`] samples each, for a network of at most
    /// [`MAX_SHARDED_VALUES`] stored parameters (else one); so with the
    /// default, results depend on the thread count. The trainer records the count it chose
    /// here, so a resumed run keeps it. A model whose layers mix samples
    /// (batch normalisation) trains on one shard whatever this says.
    #[serde(default = "one_shard")]
    pub batch_shards: Option<usize>,
    /// A sparse layer denser than this computes with dense kernels (its
    /// structure stays CSR) if its products are not tiny
    /// ([`DenseKernels::above`]); `None` always uses the sparse kernels.
    pub dense_kernels_above: Option<f64>,
}

/// How a sparse run is sparse: how many weights each layer starts with and
/// how the masks change. [`SparseSettings::method`] builds a published method.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparseSettings {
    /// Overall fraction of weights kept, over all weight matrices, in (0, 1].
    pub density: f64,
    /// How the density is shared among layers.
    pub distribution: Distribution,
    /// Layers (by parameter name, e.g. `fc3.weight`) given a density of their
    /// own; the others share what is left. A layer at density 1 is stored dense
    /// and its mask never changes.
    pub layer_densities: Vec<(String, f64)>,
    /// How masks change during training; `None` keeps them fixed (static).
    pub updates: Option<MaskUpdates>,
}

impl SparseSettings {
    /// A published method at `density`, with the layer distribution it was
    /// published with.
    pub fn method(method: Method, density: f64) -> Self {
        SparseSettings {
            density,
            distribution: method.distribution(),
            layer_densities: Vec::new(),
            updates: method.mask_updates(),
        }
    }
}

impl Default for SparseSettings {
    /// Sparse momentum at 5 % density.
    fn default() -> Self {
        SparseSettings::method(Method::SparseMomentum, 0.05)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: Architecture::default(),
            epochs: 100,
            batch_size: 100,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            lr_decay_steps: 25_000,
            lr_decay_factor: 0.1,
            seed: 17,
            validation_fraction: 0.1,
            train_samples: None,
            sparse: Some(SparseSettings::default()),
            init: WeightInit::default(),
            threads: None,
            batch_shards: None,
            dense_kernels_above: Some(DEFAULT_DENSE_KERNELS_ABOVE),
        }
    }
}

/// The fewest samples an automatically chosen shard gets: below 32, a
/// shard's rows of activations are one or two vectors long and the fixed
/// cost of each kernel call outweighs the work. (Measured on 2 cores only:
/// a batch of 100 in two shards trained ~1.3× faster than on one tape with
/// each kernel split across the cores, docs/performance.md.)
pub const MIN_SHARD: usize = 32;

/// The most stored parameter values for which `batch_shards: None` splits
/// batches. The shards' gradients are summed at every step, moving one
/// shard's gradient from one core's cache to another's: for dense
/// LeNet-300-100 (266 000 values, 1 MB) that cost more than sharding saved
/// (its epoch 0.50–0.54 s on one shard, 0.58–0.60 s on two), while a sparse
/// one at 2 % (5 700 values) gained ~20 %.
pub const MAX_SHARDED_VALUES: usize = 1 << 17;

/// Checkpoints written before shards existed trained on one.
fn one_shard() -> Option<usize> {
    Some(1)
}

impl TrainConfig {
    /// Checks every setting, so a bad one fails before any work starts.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::config("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch-size", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config(
                "lr",
                format!("{} is not a positive number", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config(
                "momentum",
                format!("{} is not in [0, 1)", self.momentum),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config(
                "weight-decay",
                format!("{} is negative", self.weight_decay),
            ));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Error::config(
                "validation-fraction",
                format!("{} is not in [0, 1)", self.validation_fraction),
            ));
        }
        if let Some(sparse) = &self.sparse {
            check_density(sparse.density)?;
            if let Some(updates) = &sparse.updates {
                updates.validate()?;
            }
        }
        if self.threads == Some(0) {
            return Err(Error::config("threads", "must be at least 1"));
        }
        if let Some(shards) = self.batch_shards
            && !(1..=self.batch_size).contains(&shards)
        {
            return Err(Error::config(
                "batch-shards",
                format!(
                    "{shards} is not between 1 and the batch size ({})",
                    self.batch_size
                ),
            ));
        }
        if let Some(threshold) = self.dense_kernels_above
            && !(0.0..=1.0).contains(&threshold)
        {
            return Err(Error::config(
                "dense-kernels-above",
                format!("{threshold} is not a density in [0, 1]"),
            ));
        }
        Ok(())
    }
}

/// Progress within an epoch, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    /// Steps in this epoch.
    pub steps_in_epoch: usize,
    /// This step's loss.
    pub loss: f32,
}

/// Accuracy and loss on one dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Number of samples.
    pub samples: usize,
    /// `confusion[true class][predicted class]`: how many samples.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// Accuracy on the samples of each class (`None` for a class with no samples).
    pub fn class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(class, row)| {
                let total: usize = row.iter().sum();
                (total > 0).then(|| row[class] as f64 / total as f64)
            })
            .collect()
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps done by the end of the epoch.
    pub steps_done: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training accuracy over the epoch (on the fly, as the weights changed).
    pub train_accuracy: f64,
    /// Accuracy on the held-out validation split, if there is one.
    pub validation_accuracy: Option<f64>,
    /// Accuracy on the test set.
    pub test_accuracy: f64,
    /// Stored weights over all weights of the weight matrices (1 for a dense run).
    pub density: f64,
    /// Every weight matrix after the epoch (and its mask update).
    pub layers: Vec<LayerInfo>,
    /// Training samples per second (training steps and mask updates only).
    pub samples_per_second: f64,
    /// Seconds of training and mask updates (evaluation excluded).
    pub seconds: f64,
    /// The main parts of `seconds` (the rest: copying the first batch, the
    /// observer's callbacks).
    #[serde(default)]
    pub phases: EpochPhases,
    /// The mask updates of this epoch (by default one, at its end, after
    /// evaluation); run logs record them as lines of their own.
    #[serde(skip)]
    pub mask_updates: Vec<MaskUpdate>,
}

/// Where an epoch's training time went, in seconds: what a study of the
/// engine's speed needs beside the kernels' own timings (`bench kernels`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochPhases {
    /// Forward and backward passes (the next batch is copied beside them).
    pub forward_backward: f64,
    /// Optimizer steps and the sparse-learning bookkeeping after each
    /// (momentum statistics, the gradient factors of the momentum window).
    pub optimizer: f64,
    /// Mask updates, each with the dense-momentum product it ranks growth by.
    pub mask_updates: f64,
}

/// A weight matrix's size and how much of it is stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    /// Parameter name.
    pub name: String,
    /// `(rows, cols)`.
    pub shape: (usize, usize),
    /// Stored weights.
    pub nnz: usize,
    /// Whether the weight is stored sparse.
    pub sparse: bool,
    /// Its empty filters (neurons) and unread input channels.
    #[serde(default)]
    pub channels: ChannelUsage,
}

/// The outcome of a whole run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSummary {
    /// Final test accuracy.
    pub test_accuracy: f64,
    /// `1 − test_accuracy`.
    pub test_error: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of the whole run, evaluation included.
    pub seconds: f64,
    /// Final density of the weight matrices.
    pub density: f64,
    /// Every weight matrix at the end.
    pub layers: Vec<LayerInfo>,
}

/// Receives progress reports; every method does nothing by default.
pub trait Observer {
    /// After every optimizer step.
    fn on_step(&mut self, _progress: &StepProgress) {}
    /// After every mask update.
    fn on_mask_update(&mut self, _update: &MaskUpdate) {}
    /// After every epoch, evaluation included.
    fn on_epoch(&mut self, _stats: &EpochStats) {}
}

/// An observer that ignores everything.
impl Observer for () {}

/// A model, its parameters, and the machinery to train it.
///
/// A trainer runs its work in its own rayon thread pool, with the training
/// loop itself on one of the pool's threads: on a small machine a loop
/// outside the pool competes for cores with pool threads spinning between
/// kernels, which measured 2× slower at 2 % density.
pub struct Trainer {
    pool: Arc<ThreadPool>,
    config: TrainConfig,
    data: Splits,
    store: ParamStore,
    model: Sequential,
    /// One per part of the batch ([`TrainConfig::batch_shards`]).
    shards: Vec<Shard>,
    /// The shards' gradients of the last step, in shard order.
    shard_grads: Vec<Gradients>,
    sgd: Sgd,
    schedule: StepLr,
    sparse: Option<SparseLearning>,
    steps_done: usize,
    epochs_done: usize,
}

impl Trainer {
    /// Splits off the validation set, builds the model (sparse layers drawn
    /// directly in CSR form) and the optimizer.
    pub fn new(config: TrainConfig, train: &Dataset, test: &Dataset) -> Result<Trainer> {
        Self::build(config, train, test, None)
    }

    /// Like [`Trainer::new`], with your own prune, redistribution and growth
    /// rules instead of the ones `config` names; every other knob (prune rate,
    /// schedule, update interval) still comes from `config.sparse`, which must
    /// have mask updates. See `examples/custom_growth_rule.rs`.
    pub fn with_rules(
        config: TrainConfig,
        train: &Dataset,
        test: &Dataset,
        rules: Rules,
    ) -> Result<Trainer> {
        if config
            .sparse
            .as_ref()
            .and_then(|s| s.updates.as_ref())
            .is_none()
        {
            return Err(Error::config(
                "rules",
                "custom rules need a sparse configuration with mask updates (not dense or static)",
            ));
        }
        Self::build(config, train, test, Some(rules))
    }

    fn build(
        config: TrainConfig,
        train: &Dataset,
        test: &Dataset,
        rules: Option<Rules>,
    ) -> Result<Trainer> {
        config.validate()?;
        let mut data = Splits::new(train, test, config.validation_fraction)?;
        if let Some(n) = config.train_samples {
            data.train = data.train.take(n);
        }
        if data.train.is_empty() {
            return Err(Error::config("train-samples", "the training set is empty"));
        }
        let (store, model) =
            build_model(&config, data.train.image_shape(), data.train.num_classes())?;
        let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
        let length = RunLength {
            steps_per_epoch,
            total_steps: steps_per_epoch * config.epochs,
        };
        let sparse_layers = store.sparse_ids();
        let sparse = match config.sparse.as_ref().and_then(|s| s.updates.as_ref()) {
            Some(updates) if !sparse_layers.is_empty() => {
                let mut regrowth = updates.regrowth;
                if let RegrownWeight::Init(_) = regrowth.weight {
                    regrowth.weight = RegrownWeight::Init(config.init);
                }
                let learning = SparseLearningConfig {
                    prune_rate: updates.prune_rate,
                    schedule: updates.schedule,
                    update_interval: updates.update_every,
                    stop_updates_after: updates
                        .stop_after
                        .map(|fraction| (fraction * length.total_steps as f64).round() as usize),
                    regrowth,
                };
                Some(SparseLearning::new(
                    &store,
                    sparse_layers,
                    rules.unwrap_or_else(|| updates.rules(config.momentum)),
                    learning,
                    length,
                    config.momentum,
                    config.seed,
                )?)
            }
            _ => None,
        };
        let pool = ThreadPoolBuilder::new()
            .num_threads(config.threads.unwrap_or(0))
            .build()
            .map_err(|e| Error::config("threads", format!("cannot start the thread pool: {e}")))?;
        let stored: usize = store.iter().map(|(_, p)| p.value.values().len()).sum();
        let shards = match config.batch_shards {
            _ if model.mixes_samples() => 1,
            Some(shards) => shards,
            None if stored > MAX_SHARDED_VALUES => 1,
            None => (pool.current_num_threads())
                .min(config.batch_size / MIN_SHARD)
                .max(1),
        };
        let config = TrainConfig {
            batch_shards: Some(shards),
            ..config
        };
        Ok(Trainer {
            pool: Arc::new(pool),
            sgd: Sgd {
                momentum: config.momentum,
                nesterov: config.nesterov,
                weight_decay: config.weight_decay,
            },
            schedule: StepLr {
                initial: config.lr,
                gamma: config.lr_decay_factor,
                step_size: config.lr_decay_steps,
            },
            config,
            data,
            store,
            model,
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_grads: (0..shards).map(|_| Gradients::default()).collect(),
            sparse,
            steps_done: 0,
            epochs_done: 0,
        })
    }

    /// Trains the remaining epochs (all of them, unless resumed), evaluating
    /// after each, and returns the final test result.
    pub fn run(&mut self, observer: &mut (impl Observer + Send)) -> Result<TrainSummary> {
        self.run_with(observer, |_, _| Ok(()))
    }

    /// [`Trainer::run`], calling `after_epoch` after every epoch (to save a
    /// checkpoint, log metrics); an error from it stops the run.
    pub fn run_with(
        &mut self,
        observer: &mut (impl Observer + Send),
        mut after_epoch: impl FnMut(&Trainer, &EpochStats) -> Result<()>,
    ) -> Result<TrainSummary> {
        let start = Instant::now();
        let mut test_accuracy = None;
        while self.epochs_done < self.config.epochs {
            let stats = self.train_epoch(observer)?;
            after_epoch(self, &stats)?;
            test_accuracy = Some(stats.test_accuracy);
            observer.on_epoch(&stats);
        }
        let test_accuracy = match test_accuracy {
            Some(accuracy) => accuracy,
            None => self.evaluate(&self.data.test)?.accuracy,
        };
        Ok(TrainSummary {
            test_accuracy,
            test_error: 1.0 - test_accuracy,
            epochs: self.epochs_done,
            seconds: start.elapsed().as_secs_f64(),
            density: self.density(),
            layers: self.layers(),
        })
    }

    /// The next epoch: training steps, evaluation on the validation and test
    /// sets, then the mask update that ends the epoch (if one is due).
    ///
    /// Evaluating *before* the epoch-end update, as the reference library does,
    /// reports the network that was trained; right after an update its new
    /// weights are still zero.
    pub fn train_epoch(&mut self, observer: &mut (impl Observer + Send)) -> Result<EpochStats> {
        let pool = Arc::clone(&self.pool);
        pool.install(|| {
            let epoch = self.epochs_done + 1;
            let start = Instant::now();
            let mut pass = self.train_steps(epoch, observer)?;
            let mut seconds = start.elapsed().as_secs_f64();
            let validation_accuracy = if self.data.validation.is_empty() {
                None
            } else {
                Some(self.evaluate(&self.data.validation)?.accuracy)
            };
            let test_accuracy = self.evaluate(&self.data.test)?.accuracy;
            let update_start = Instant::now();
            self.finish_pass(&mut pass, observer)?;
            seconds += update_start.elapsed().as_secs_f64();
            self.epochs_done = epoch;
            Ok(EpochStats {
                epoch,
                steps_done: self.steps_done,
                train_loss: pass.mean_loss(),
                train_accuracy: pass.accuracy(),
                validation_accuracy,
                test_accuracy,
                density: self.density(),
                layers: self.layers(),
                samples_per_second: pass.samples as f64 / seconds,
                seconds,
                phases: pass.phases,
                mask_updates: pass.mask_updates,
            })
        })
    }

    /// The next epoch without evaluation: what a benchmark times. Returns
    /// where its time went.
    pub fn train_epoch_unevaluated(
        &mut self,
        observer: &mut (impl Observer + Send),
    ) -> Result<EpochPhases> {
        let pool = Arc::clone(&self.pool);
        pool.install(|| {
            let epoch = self.epochs_done + 1;
            let mut pass = self.train_steps(epoch, observer)?;
            self.finish_pass(&mut pass, observer)?;
            self.epochs_done = epoch;
            Ok(pass.phases)
        })
    }

    /// Saves everything needed to continue this run exactly, atomically (see
    /// [`crate::checkpoint`]). Call it between epochs.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut contents = Contents::default();
        contents.add_params(&self.store);
        let config =
            serde_json::to_string(&self.config).expect("the configuration serialises to JSON");
        let norm = self.data.normalization;
        for (key, value) in [
            ("config", config),
            ("epochs_done", self.epochs_done.to_string()),
            ("steps_done", self.steps_done.to_string()),
            ("normalization_mean", norm.mean.to_string()),
            ("normalization_std", norm.std.to_string()),
        ] {
            contents.metadata.insert(key.into(), value);
        }
        if let Some(sparse) = &self.sparse {
            sparse.save_state(&mut contents);
        }
        contents.write(path)
    }

    /// Continues from `checkpoint`: parameters, structure, momentum, progress
    /// and the sparse-learning state. The trainer must have been built for the
    /// same model and data, normally from [`Checkpoint::config`]; the rest of
    /// the run is then bit-identical to one that never stopped.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let norm = self.data.normalization;
        let saved = (
            checkpoint.metadata_number::<f32>("normalization_mean")?,
            checkpoint.metadata_number::<f32>("normalization_std")?,
        );
        if saved != (norm.mean, norm.std) {
            return Err(Error::BadFile {
                path: checkpoint.path().to_path_buf(),
                problem: format!(
                    "the run was trained on other data (normalisation mean {} std {}, this data {} {})",
                    saved.0, saved.1, norm.mean, norm.std
                ),
            });
        }
        restore_params(checkpoint, &mut self.store)?;
        self.epochs_done = checkpoint.metadata_number("epochs_done")?;
        self.steps_done = checkpoint.metadata_number("steps_done")?;
        if let Some(sparse) = &mut self.sparse {
            sparse.restore_state(checkpoint, &self.store)?;
        }
        Ok(())
    }

    /// Applies the mask update due after the pass's last step, if any.
    fn finish_pass(&mut self, pass: &mut Pass, observer: &mut impl Observer) -> Result<()> {
        if pass.update_pending {
            self.update_masks(pass, observer)?;
            pass.update_pending = false;
        }
        Ok(())
    }

    /// Updates the masks now (if the run is sparse), timing it into `pass`.
    fn update_masks(&mut self, pass: &mut Pass, observer: &mut impl Observer) -> Result<()> {
        let Some(sparse) = &mut self.sparse else {
            return Ok(());
        };
        let start = Instant::now();
        let update = sparse.update_masks(&mut self.store, self.steps_done)?;
        pass.phases.mask_updates += start.elapsed().as_secs_f64();
        observer.on_mask_update(&update);
        pass.mask_updates.push(update);
        Ok(())
    }

    /// One pass over the training set, in the trainer's pool. Mask updates due
    /// inside the pass happen at once; one due after its last step is left
    /// pending for [`Trainer::finish_pass`].
    fn train_steps(&mut self, epoch: usize, observer: &mut impl Observer) -> Result<Pass> {
        let order = epoch_order(self.data.train.len(), self.config.seed, epoch);
        let batches: Vec<&[usize]> = order.chunks(self.config.batch_size).collect();
        let mut shards = std::mem::take(&mut self.shards);
        let mut shard_grads = std::mem::take(&mut self.shard_grads);
        let count = shards.len();
        let images = self.takes_images();
        for (s, shard) in shards.iter_mut().enumerate() {
            let part = &batches[0][shard_range(batches[0].len(), count, s)];
            gather(&self.data.train, images, part, &mut shard.batches[0]);
        }
        let mut pass = Pass {
            samples: order.len(),
            ..Pass::default()
        };
        for i in 0..batches.len() {
            let start = Instant::now();
            let whole = batches[i].len();
            let next = batches.get(i + 1);
            shards
                .par_iter_mut()
                .zip(shard_grads.par_iter_mut())
                .enumerate()
                .for_each(|(s, (shard, grads))| {
                    let [current, upcoming] = &mut shard.batches;
                    let share = current.labels.len() as f32 / whole as f32;
                    // Copy the next batch out while this one trains: the copy
                    // is a transposition that would otherwise sit on the
                    // critical path (another thread takes it if one is idle).
                    let stream = (self.steps_done * count + s) as u64;
                    let (result, ()) = rayon::join(
                        || {
                            self.forward_backward(
                                current,
                                &mut shard.workspace,
                                share,
                                stream,
                                grads,
                            )
                        },
                        || {
                            if let Some(next) = next {
                                let part = &next[shard_range(next.len(), count, s)];
                                gather(&self.data.train, images, part, upcoming);
                            }
                        },
                    );
                    shard.batches.swap(0, 1);
                    shard.result = Some(result);
                });
            pass.phases.forward_backward += start.elapsed().as_secs_f64();
            let mut step_result = StepResult::default();
            for shard in &mut shards {
                let part = shard.result.take().transpose()?.unwrap_or_default();
                step_result.loss += part.loss;
                step_result.hits += part.hits;
                step_result.state_updates.extend(part.state_updates);
            }
            let StepResult {
                loss,
                hits,
                state_updates,
            } = step_result;
            if !loss.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss,
                    epoch,
                    step: i + 1,
                });
            }
            let start = Instant::now();
            let step = self.steps_done;
            self.sgd
                .step_summed(&mut self.store, &shard_grads, self.schedule.lr(step))?;
            self.store.apply_state_updates(state_updates);
            self.steps_done += 1;
            let update_due = self.sparse.as_mut().is_some_and(|sparse| {
                sparse.observe(&self.store, &mut shard_grads, step);
                sparse.updates_after(step)
            });
            for (shard, grads) in shards.iter_mut().zip(&mut shard_grads) {
                std::mem::take(grads).recycle(&mut shard.workspace);
            }
            pass.phases.optimizer += start.elapsed().as_secs_f64();
            if update_due {
                if i + 1 < batches.len() {
                    self.update_masks(&mut pass, observer)?;
                } else {
                    pass.update_pending = true;
                }
            }
            pass.loss_sum += loss as f64;
            pass.correct += hits;
            pass.steps += 1;
            observer.on_step(&StepProgress {
                epoch,
                step: i + 1,
                steps_in_epoch: batches.len(),
                loss,
            });
        }
        self.shards = shards;
        self.shard_grads = shard_grads;
        Ok(pass)
    }

    /// One shard's part of a step: its loss (weighted by `share`, its part
    /// of the batch, so the shards' losses add up to the batch's mean), its
    /// correct predictions, and into `grads` the gradients of that weighted
    /// loss; dropout draws from random stream `stream`. The inputs move onto
    /// the tape and back (no copy); the workspace comes back whatever
    /// happened. An empty part (a last batch smaller than the shard count)
    /// computes nothing.
    fn forward_backward(
        &self,
        batch: &mut Batch,
        workspace: &mut Workspace,
        share: f32,
        stream: u64,
        grads: &mut Gradients,
    ) -> Result<StepResult> {
        if batch.labels.is_empty() {
            return Ok(StepResult::default());
        }
        let mut tape = Tape::with_workspace(&self.store, std::mem::take(workspace));
        tape.set_dense_kernels(self.config.dense_kernels_above.map(DenseKernels::above));
        // Dropout's random numbers: one stream per step and shard, so a
        // resumed run draws the same.
        let mut dropout_rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ DROPOUT_SEED);
        dropout_rng.set_stream(stream);
        tape.set_rng(dropout_rng);
        if let Some(sparse) = &self.sparse {
            sparse.prepare(&mut tape, self.steps_done);
        }
        let x = tape.input(std::mem::take(&mut batch.inputs));
        let result = (|| {
            let logits = self.model.run(&mut tape, x)?;
            let hits = (batch.labels.iter().enumerate())
                .filter(|&(j, &label)| predicted_class(tape.value(logits), j) == label)
                .count();
            let loss_var = tape.softmax_cross_entropy(logits, &batch.labels)?;
            let mut seed = tape.workspace().array(1, 1);
            seed[(0, 0)] = share;
            *grads = tape.backward_with_seed(loss_var, seed)?;
            Ok(StepResult {
                loss: tape.value(loss_var)[(0, 0)] * share,
                hits,
                state_updates: tape.take_state_updates(),
            })
        })();
        batch.inputs = tape.take_value(x);
        *workspace = tape.into_workspace();
        result
    }

    /// Whether the model takes images (else feature vectors).
    fn takes_images(&self) -> bool {
        matches!(self.model.input_shape(), ActivationShape::Image(_))
    }

    /// Accuracy and mean loss of the current model on `data`.
    pub fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        self.pool.install(|| self.evaluate_in_pool(data))
    }

    fn evaluate_in_pool(&self, data: &Dataset) -> Result<Evaluation> {
        // Big batches are faster for fully connected networks; a convolutional
        // one keeps its training batch, whose activations already fit in memory.
        let eval_batch = if self.takes_images() {
            self.config.batch_size
        } else {
            self.config.batch_size.max(1000)
        };
        let order: Vec<usize> = (0..data.len()).collect();
        let mut batch = Batch::default();
        let mut confusion = vec![vec![0usize; data.num_classes()]; data.num_classes()];
        let mut loss_sum = 0.0f64;
        let mut workspace = Workspace::new();
        for indices in order.chunks(eval_batch) {
            gather(data, self.takes_images(), indices, &mut batch);
            let mut tape = Tape::with_workspace(&self.store, workspace);
            tape.set_training(false);
            tape.set_dense_kernels(self.config.dense_kernels_above.map(DenseKernels::above));
            let x = tape.input(std::mem::take(&mut batch.inputs));
            let logits = self.model.run(&mut tape, x)?;
            for (j, &label) in batch.labels.iter().enumerate() {
                confusion[label][predicted_class(tape.value(logits), j)] += 1;
            }
            let loss = tape.softmax_cross_entropy(logits, &batch.labels)?;
            loss_sum += tape.value(loss)[(0, 0)] as f64 * indices.len() as f64;
            batch.inputs = tape.take_value(x);
            workspace = tape.into_workspace();
        }
        let correct: usize = (0..confusion.len()).map(|c| confusion[c][c]).sum();
        let samples = data.len().max(1);
        Ok(Evaluation {
            accuracy: correct as f64 / samples as f64,
            loss: loss_sum / samples as f64,
            samples: data.len(),
            confusion,
        })
    }

    /// Stored over total weights of all weight matrices; 1 for a dense model.
    pub fn density(&self) -> f64 {
        let (stored, total) = self
            .layers()
            .iter()
            .fold((0, 0), |(s, t), l| (s + l.nnz, t + l.shape.0 * l.shape.1));
        if total == 0 {
            1.0
        } else {
            stored as f64 / total as f64
        }
    }

    /// Every weight matrix (biases left out): name, shape, stored entries.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.model
            .weights()
            .into_iter()
            .map(|id| {
                let param = self.store.get(id);
                LayerInfo {
                    name: param.name.clone(),
                    shape: param.value.shape(),
                    nnz: param.value.values().len(),
                    sparse: matches!(param.value, ParamValue::Sparse(_)),
                    channels: param.channel_usage(),
                }
            })
            .collect()
    }

    /// The network.
    pub fn model(&self) -> &Sequential {
        &self.model
    }

    /// Parts each batch trains in ([`TrainConfig::batch_shards`], or 1 for a
    /// model that mixes samples).
    pub fn batch_shards(&self) -> usize {
        self.shards.len()
    }

    /// Worker threads of the trainer's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The parameters.
    pub fn params(&self) -> &ParamStore {
        &self.store
    }

    /// The configuration this trainer runs.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// Epochs done so far.
    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// The data splits.
    pub fn data(&self) -> &Splits {
        &self.data
    }
}

/// The network `config` describes, for `image` inputs and `classes` classes,
/// with its parameters: each weight matrix stored as `config.sparse` says
/// (exact counts per layer, sparse ones drawn directly in CSR form), initial
/// values drawn from `config.seed`.
pub fn build_model(
    config: &TrainConfig,
    image: ImageShape,
    classes: usize,
) -> Result<(ParamStore, Sequential)> {
    let shapes = config.model.weight_shapes(image, classes)?;
    let kinds = weight_kinds(&shapes, config.sparse.as_ref())?;
    let mut store = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut builder = ParamBuilder::new(&mut store, kinds, config.init, &mut rng);
    let model = config.model.build(&mut builder, image, classes)?;
    let fits = match model.input_shape() {
        ActivationShape::Features(n) => n == image.len(),
        ActivationShape::Image(shape) => shape == image,
    };
    if !fits || model.final_shape() != ActivationShape::Features(classes) {
        return Err(Error::shape(
            "build_model",
            format!(
                "the model maps {} to {}, the data has {} ({} features) and {classes} classes",
                model.input_shape(),
                model.final_shape(),
                ActivationShape::Image(image),
                image.len()
            ),
        ));
    }
    Ok((store, model))
}

/// How each weight matrix is stored: every one dense for a dense run, else
/// the exact counts of the layer distribution, a full layer dense (there is
/// nothing to prune into).
fn weight_kinds(
    shapes: &[LayerShape],
    sparse: Option<&SparseSettings>,
) -> Result<HashMap<String, WeightKind>> {
    let counts = match sparse {
        None => shapes.iter().map(|s| s.dims.iter().product()).collect(),
        Some(s) => layer_counts(shapes, s.density, s.distribution, &s.layer_densities)?,
    };
    Ok(shapes
        .iter()
        .zip(counts)
        .map(|(shape, nnz)| {
            let kind = if nnz == shape.dims.iter().product::<usize>() {
                WeightKind::Dense
            } else {
                WeightKind::Sparse { nnz }
            };
            (shape.name.clone(), kind)
        })
        .collect())
}

/// Seeds dropout's random numbers apart from shuffling's (same seed, other bits).
const DROPOUT_SEED: u64 = 0xD0_0D;

/// What one training step (or one shard's part of it) computed, besides gradients.
#[derive(Default)]
struct StepResult {
    loss: f32,
    hits: usize,
    state_updates: Vec<(crate::params::ParamId, ndarray::Array2<f32>)>,
}

/// One part of every batch and what it needs to train on a tape of its own
/// (see [`TrainConfig::batch_shards`]).
#[derive(Default)]
struct Shard {
    /// Scratch buffers (activations, gradients, im2col) kept from step to step.
    workspace: Workspace,
    /// This shard's part of the batch being trained and of the next one,
    /// kept from epoch to epoch.
    batches: [Batch; 2],
    /// What its part of the last step computed, until it is collected.
    result: Option<Result<StepResult>>,
}

/// The samples of a batch of `len` that shard `s` of `shards` trains.
///
/// Every part but the last starts at a multiple of 16 samples when the batch
/// is big enough: activations are stored batch-inner, so a part of 16·k
/// samples fills whole 16-float vectors and its rows start on cache lines.
/// The boundaries are the even shares rounded up, so that the last part,
/// whose rows are ragged (a four-lane tail, loads that straddle lines), is
/// the smaller one, unless that would leave it fewer than [`MIN_SHARD`]
/// samples; then they are rounded down. A batch of 100 splits 64 + 36: one
/// thread takes 42.7 and 38.4 µs for the two parts of a 2 % LeNet-300-100
/// step, against 35.3 and 48.1 µs for 48 + 52, and two threads' step 57.5 µs
/// against 62 (docs/performance.md; measured for two shards only).
fn shard_range(len: usize, shards: usize, s: usize) -> std::ops::Range<usize> {
    const VECTOR: usize = 16;
    let boundary = |s: usize, round: fn(usize) -> usize| {
        let even = s * len / shards;
        if s == shards || len < VECTOR * shards {
            even
        } else {
            // At least 16 samples a part: `even ≤ len − 16`, so rounding
            // up stays below `len` and every part keeps a sample.
            round(even)
        }
    };
    let up: fn(usize) -> usize = |even| even.next_multiple_of(VECTOR);
    let down: fn(usize) -> usize = |even| even / VECTOR * VECTOR;
    let round = if len - boundary(shards - 1, up) >= MIN_SHARD {
        up
    } else {
        down
    };
    boundary(s, round)..boundary(s + 1, round)
}

/// Copies samples `indices` of `data` into `batch` in the model's layout.
fn gather(data: &Dataset, images: bool, indices: &[usize], batch: &mut Batch) {
    if images {
        data.gather_images(indices, batch);
    } else {
        data.gather_batch(indices, batch);
    }
}

/// What one pass over the training set accumulated.
#[derive(Debug, Default)]
struct Pass {
    samples: usize,
    steps: usize,
    loss_sum: f64,
    correct: usize,
    mask_updates: Vec<MaskUpdate>,
    /// A mask update is due after the pass's last step.
    update_pending: bool,
    phases: EpochPhases,
}

impl Pass {
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.steps.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.samples.max(1) as f64
    }
}

/// The predicted class of column `j` of `logits` (`classes × batch`): the
/// row where the column is largest, ties to the lower class.
fn predicted_class(logits: &ndarray::Array2<f32>, j: usize) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (class, &v) in logits.column(j).iter().enumerate() {
        if v > best.1 {
            best = (class, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::{MIN_SHARD, shard_range};

    #[test]
    fn shards_cover_the_batch_in_whole_vectors() {
        let parts = |len, shards| {
            (0..shards)
                .map(|s| shard_range(len, shards, s))
                .collect::<Vec<_>>()
        };
        assert_eq!(parts(100, 2), [0..64, 64..100]);
        assert_eq!(parts(200, 2), [0..112, 112..200]);
        // Rounding up would leave the last part fewer than MIN_SHARD samples.
        assert_eq!(parts(100, 3), [0..32, 32..64, 64..100]);
        assert_eq!(parts(66, 2), [0..32, 32..66]);
        assert_eq!(parts(64, 2), [0..32, 32..64]);
        assert_eq!(shard_range(100, 1, 0), 0..100);
        // Small batches split evenly; a shard may be empty.
        assert_eq!(parts(10, 2), [0..5, 5..10]);
        assert_eq!(parts(1, 2), [0..0, 0..1]);
        // Always the whole batch, in order; every part but the last in whole
        // vectors and none empty once the batch has 16 samples a part.
        for len in 0..1100 {
            for shards in 1..17 {
                let parts = parts(len, shards);
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[shards - 1].end, len);
                assert!(parts.windows(2).all(|p| p[0].end == p[1].start));
                if len >= 16 * shards {
                    assert!(parts.iter().all(|p| !p.is_empty()));
                    assert!(parts[..shards - 1].iter().all(|p| p.end % 16 == 0));
                }
                // As many shards as the default picks: none below MIN_SHARD.
                if shards <= len / MIN_SHARD {
                    assert!(parts.iter().all(|p| p.len() >= MIN_SHARD), "{parts:?}");
                }
            }
        }
    }
}

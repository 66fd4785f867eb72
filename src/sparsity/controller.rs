//! The sparse-learning controller: when and how masks change during training.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use super::apportion::apportion;
use super::grow::MomentumGrowth;
use super::prune::MagnitudePrune;
use super::redistribute::MomentumRedistribution;
use super::rules::{
    GrowthRule, GrowthSignal, LayerView, MomentumWindow, PruneRule, Redistribution, Vacancies,
};
use super::schedule::{PruneRateSchedule, UpdateSchedule};
use super::window::DenseMomentum;
use crate::autograd::{GradientFactors, Gradients, Tape};
use crate::checkpoint::{Checkpoint, Contents};
use crate::error::{Error, Result};
use crate::nn::WeightInit;
use crate::params::{ParamId, ParamStore, ParamValue};
use crate::sparse::{ChannelUsage, SparseMatrix};

/// The knobs of a sparse-learning run (the reference library's defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseLearningConfig {
    /// `p₀`, the fraction of each layer's weights removed at the first update.
    pub prune_rate: f64,
    /// How the prune rate decays over training.
    pub schedule: PruneRateSchedule,
    /// Steps between mask updates; `None` updates at the end of every epoch.
    pub update_interval: Option<usize>,
    /// No update after this many steps (the mask is frozen from then on).
    pub stop_updates_after: Option<usize>,
    /// What grown weights and their optimizer state start as.
    pub regrowth: Regrowth,
}

impl Default for SparseLearningConfig {
    fn default() -> Self {
        SparseLearningConfig {
            prune_rate: 0.5,
            schedule: PruneRateSchedule::REFERENCE,
            update_interval: None,
            stop_updates_after: None,
            regrowth: Regrowth::default(),
        }
    }
}

/// How a grown weight starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Regrowth {
    /// Its value.
    pub weight: RegrownWeight,
    /// Its momentum buffer.
    pub momentum: RegrownMomentum,
}

/// The value of a grown weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegrownWeight {
    /// Exactly zero: the network's function does not change at the update
    /// (the reference library, RigL).
    #[default]
    Zero,
    /// Drawn like the layer's initial weights (`WeightInit` at the layer's
    /// current density), as in the original SET.
    Init(WeightInit),
}

/// The momentum buffer of a grown weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegrownMomentum {
    /// The momentum estimate that selected it (momentum growth; what the
    /// reference's dense momentum buffer carries over), 0 if the rule has none.
    #[default]
    Estimate,
    /// Zero: the weight starts with no history (RigL).
    Zero,
}

/// One rule per decision: together they are a sparse-learning method.
pub struct Rules {
    /// Which weights die.
    pub prune: Box<dyn PruneRule>,
    /// How many weights each layer regrows.
    pub redistribution: Box<dyn Redistribution>,
    /// Where they regrow.
    pub growth: Box<dyn GrowthRule>,
}

impl Rules {
    /// Dettmers & Zettlemoyer's sparse momentum: magnitude pruning, momentum
    /// redistribution, momentum growth with the given window.
    pub fn sparse_momentum(window: MomentumWindow) -> Rules {
        Rules {
            prune: Box::new(MagnitudePrune),
            redistribution: Box::new(MomentumRedistribution),
            growth: Box::new(MomentumGrowth { window }),
        }
    }
}

/// The length of the run, which schedules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLength {
    /// Optimizer steps in one epoch.
    pub steps_per_epoch: usize,
    /// Optimizer steps in the whole run.
    pub total_steps: usize,
}

/// What one mask update did to one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerUpdate {
    /// The weight's name.
    pub name: String,
    /// Stored weights before the update.
    pub nnz_before: usize,
    /// Weights pruned (including the revived ones).
    pub removed: usize,
    /// Weights grown (including the revived ones).
    pub regrown: usize,
    /// Weights pruned and regrown at once: they keep their value and momentum.
    #[serde(default)]
    pub revived: usize,
    /// Stored weights after the update.
    pub nnz_after: usize,
    /// The layer's share of the regrowth (its normalised redistribution score).
    pub share: f64,
    /// Rows × columns of the full matrix.
    pub size: usize,
    /// Its empty filters and unread input channels after the update.
    #[serde(default)]
    pub channels: ChannelUsage,
}

/// What one mask update did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaskUpdate {
    /// Optimizer steps done before the update.
    pub step: usize,
    /// The prune rate used.
    pub prune_rate: f64,
    /// Per sparse layer, in model order.
    pub layers: Vec<LayerUpdate>,
}

/// Drives prune–redistribute–grow on the sparse layers of a model.
///
/// Each step, the training loop calls [`SparseLearning::prepare`] on the new
/// tape (so the backward pass keeps what growth needs) and, after the optimizer
/// step, [`SparseLearning::observe`]; when [`SparseLearning::updates_after`]
/// says so, it calls [`SparseLearning::update_masks`].
pub struct SparseLearning {
    layers: Vec<ParamId>,
    rules: Rules,
    config: SparseLearningConfig,
    updates: UpdateSchedule,
    total_steps: usize,
    signal: GrowthSignal,
    /// Present iff the growth rule reads dense momentum.
    dense_momentum: Option<DenseMomentum>,
    /// The last step's gradient factors per layer, for [`GrowthSignal::Gradient`].
    last_gradient: Vec<Vec<GradientFactors>>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for SparseLearning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseLearning")
            .field("layers", &self.layers)
            .field("config", &self.config)
            .field("updates", &self.updates)
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

impl SparseLearning {
    /// A controller for the sparse parameters `layers` of `store`.
    ///
    /// `momentum_decay` is the optimizer's β, which the dense momentum of
    /// missing weights must follow; `seed` drives randomised rules.
    pub fn new(
        store: &ParamStore,
        layers: Vec<ParamId>,
        rules: Rules,
        config: SparseLearningConfig,
        length: RunLength,
        momentum_decay: f32,
        seed: u64,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.prune_rate) {
            return Err(Error::config(
                "prune-rate",
                format!("{} is not in [0, 1]", config.prune_rate),
            ));
        }
        if config.update_interval == Some(0) {
            return Err(Error::config("update-every", "must be at least 1 step"));
        }
        if let Some(&id) = layers
            .iter()
            .find(|&&id| store.get(id).value.as_sparse().is_none())
        {
            return Err(Error::config(
                "sparse layers",
                format!(
                    "`{}` is dense; only sparse weights can be pruned and regrown",
                    store.get(id).name
                ),
            ));
        }
        let signal = rules.growth.signal();
        if signal == GrowthSignal::DenseMomentum(MomentumWindow::LastSteps(0)) {
            return Err(Error::config("momentum-window", "must be at least 1 step"));
        }
        let updates = UpdateSchedule {
            interval: config.update_interval.unwrap_or(length.steps_per_epoch),
            stop_at: config
                .stop_updates_after
                .map_or(length.total_steps, |s| s.min(length.total_steps)),
        };
        let dense_momentum = match signal {
            GrowthSignal::DenseMomentum(window) => {
                Some(DenseMomentum::new(window, momentum_decay, layers.len()))
            }
            _ => None,
        };
        Ok(SparseLearning {
            last_gradient: vec![Vec::new(); layers.len()],
            layers,
            rules,
            config,
            updates,
            total_steps: length.total_steps,
            signal,
            dense_momentum,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The sparse layers this controller manages.
    pub fn layers(&self) -> &[ParamId] {
        &self.layers
    }

    /// Whether step `step` (0-based) must keep gradient factors for growth.
    pub fn collects_gradients(&self, step: usize) -> bool {
        let until_update = self.updates.steps_until_update(step);
        match self.signal {
            GrowthSignal::None => false,
            GrowthSignal::DenseMomentum(MomentumWindow::EveryStep) => true,
            GrowthSignal::DenseMomentum(MomentumWindow::LastSteps(w)) => {
                until_update.is_some_and(|n| n <= w)
            }
            GrowthSignal::Gradient => until_update == Some(1),
        }
    }

    /// Asks `tape` to keep what this step's growth bookkeeping needs.
    pub fn prepare(&self, tape: &mut Tape, step: usize) {
        if self.collects_gradients(step) {
            for &id in &self.layers {
                tape.keep_gradient_factors(id);
            }
        }
    }

    /// Call after optimizer step `step` (0-based) with the step's gradients,
    /// one per shard of its batch (a slice of one for a batch on one tape):
    /// takes their gradient factors if growth needs them.
    pub fn observe(&mut self, store: &ParamStore, shards: &mut [Gradients], step: usize) {
        if !self.collects_gradients(step) {
            return;
        }
        match &mut self.dense_momentum {
            Some(dense) => dense.accumulate(&self.layers, store, shards),
            None => {
                for (last, &id) in self.last_gradient.iter_mut().zip(&self.layers) {
                    *last = shards.iter_mut().flat_map(|g| g.take_factors(id)).collect();
                }
            }
        }
    }

    /// Adds the controller's state to a checkpoint: where its random numbers
    /// are, and any dense momentum it holds between steps.
    pub(crate) fn save_state(&self, contents: &mut Contents) {
        let seed: String = self
            .rng
            .get_seed()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        contents
            .metadata
            .insert("sparse_learning.rng_seed".into(), seed);
        contents.metadata.insert(
            "sparse_learning.rng_stream".into(),
            self.rng.get_stream().to_string(),
        );
        contents.metadata.insert(
            "sparse_learning.rng_word_pos".into(),
            self.rng.get_word_pos().to_string(),
        );
        if let Some(dense) = &self.dense_momentum {
            dense.save(contents);
        }
    }

    /// Restores what [`SparseLearning::save_state`] stored, for the layers of
    /// `store` (already restored).
    pub(crate) fn restore_state(
        &mut self,
        checkpoint: &Checkpoint,
        store: &ParamStore,
    ) -> Result<()> {
        let seed_hex = checkpoint.metadata("sparse_learning.rng_seed")?;
        let mut seed = [0u8; 32];
        let valid = seed_hex.len() == 64
            && seed_hex.is_ascii()
            && seed.iter_mut().enumerate().all(|(i, byte)| {
                u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16)
                    .map(|b| *byte = b)
                    .is_ok()
            });
        if !valid {
            return Err(Error::BadFile {
                path: checkpoint.path().to_path_buf(),
                problem: format!("`sparse_learning.rng_seed` = `{seed_hex}` is not 32 hex bytes"),
            });
        }
        self.rng = ChaCha8Rng::from_seed(seed);
        self.rng
            .set_stream(checkpoint.metadata_number("sparse_learning.rng_stream")?);
        self.rng
            .set_word_pos(checkpoint.metadata_number("sparse_learning.rng_word_pos")?);
        if let Some(dense) = &mut self.dense_momentum {
            let shapes: Vec<_> = self
                .layers
                .iter()
                .map(|&id| store.get(id).value.shape())
                .collect();
            dense.restore(checkpoint, &shapes)?;
        }
        Ok(())
    }

    /// Whether a mask update ([`SparseLearning::update_masks`]) is due after step `step`.
    pub fn updates_after(&self, step: usize) -> bool {
        self.updates.updates_after(step)
    }

    /// One prune–redistribute–grow round after `steps_done` steps.
    pub fn update_masks(
        &mut self,
        store: &mut ParamStore,
        steps_done: usize,
    ) -> Result<MaskUpdate> {
        let prune_rate =
            self.config
                .schedule
                .rate(self.config.prune_rate, steps_done, self.total_steps);
        if let Some(dense) = &mut self.dense_momentum {
            let shapes: Vec<_> = self
                .layers
                .iter()
                .map(|&id| store.get(id).value.shape())
                .collect();
            dense.materialize(&shapes);
        }
        let plans = self.plan_update(store, prune_rate)?;
        let mut layers = Vec::with_capacity(plans.len());
        for (i, (&id, plan)) in self.layers.iter().zip(plans).enumerate() {
            let param = store.get_mut(id);
            let ParamValue::Sparse(weights) = &param.value else {
                unreachable!("checked in SparseLearning::new")
            };
            let nnz_before = weights.nnz();
            let (mut edited, origins) = weights
                .edit_structure(&plan.removals, &plan.growth)
                .map_err(|e| Error::SparseLearning {
                    layer: param.name.clone(),
                    problem: format!("the rules chose an invalid edit: {e}"),
                })?;
            // Kept weights keep their values and momentum; new ones start as
            // the regrowth policy says.
            let estimate = self.dense_momentum.as_ref().and_then(|d| d.get(i));
            let rows = row_of_each_entry(edited.indptr());
            param.momentum = origins.remap(&param.momentum, |k| {
                match (self.config.regrowth.momentum, estimate) {
                    (RegrownMomentum::Estimate, Some(m)) => m[(rows[k], edited.indices()[k])],
                    _ => 0.0,
                }
            });
            if let RegrownWeight::Init(init) = self.config.regrowth.weight {
                let bound = init.bound(edited.cols(), edited.density());
                let fresh: Vec<usize> = (0..origins.0.len())
                    .filter(|&k| origins.0[k].is_none())
                    .collect();
                for k in fresh {
                    edited.values_mut()[k] = self.rng.random_range(-bound..=bound);
                }
            }
            let (nnz_after, size) = (edited.nnz(), edited.rows() * edited.cols());
            param.value = ParamValue::Sparse(edited);
            layers.push(LayerUpdate {
                name: param.name.clone(),
                nnz_before,
                removed: plan.removals.len() + plan.revived,
                regrown: plan.growth.len() + plan.revived,
                revived: plan.revived,
                nnz_after,
                share: plan.share,
                size,
                channels: param.channel_usage(),
            });
        }
        if let Some(dense) = &mut self.dense_momentum {
            dense.end_window();
        }
        self.last_gradient.iter_mut().for_each(Vec::clear);
        let before: usize = layers.iter().map(|l| l.nnz_before).sum();
        let after: usize = layers.iter().map(|l| l.nnz_after).sum();
        assert_eq!(
            before, after,
            "apportion and the count checks conserve the total nnz"
        );
        Ok(MaskUpdate {
            step: steps_done,
            prune_rate,
            layers,
        })
    }

    /// Decides every layer's removals and growth without changing anything.
    fn plan_update(&mut self, store: &ParamStore, prune_rate: f64) -> Result<Vec<LayerPlan>> {
        let views: Vec<LayerView> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let param = store.get(id);
                LayerView {
                    name: &param.name,
                    weights: param
                        .value
                        .as_sparse()
                        .expect("checked in SparseLearning::new"),
                    momentum: &param.momentum,
                    dense_momentum: self.dense_momentum.as_ref().and_then(|d| d.get(i)),
                    gradient: &self.last_gradient[i],
                }
            })
            .collect();
        let missing = match self.signal {
            GrowthSignal::DenseMomentum(_) => views.iter().find(|v| v.dense_momentum.is_none()),
            GrowthSignal::Gradient => views
                .iter()
                .find(|v| v.gradient.is_empty() && v.weights.rows() > 0),
            GrowthSignal::None => None,
        };
        if let Some(view) = missing {
            return Err(Error::SparseLearning {
                layer: view.name.into(),
                problem:
                    "the growth rule's signal was not collected (was prepare() called on the tape?)"
                        .into(),
            });
        }

        // 1. Statistics: each layer's share of the regrowth.
        let mut scores = Vec::with_capacity(views.len());
        for view in &views {
            let score = self.rules.redistribution.score(view);
            if !(score.is_finite() && score >= 0.0) {
                return Err(Error::SparseLearning {
                    layer: view.name.into(),
                    problem: format!(
                        "redistribution score {score} is not a finite non-negative number"
                    ),
                });
            }
            scores.push(score);
        }
        let total_score: f64 = scores.iter().sum();
        let mut shares = normalized(&scores);

        // 2. Prune.
        let counts: Vec<usize> = views
            .iter()
            .zip(&shares)
            .map(|(view, &share)| {
                let rate = layer_prune_rate(prune_rate, view.weights, share, views.len());
                ((rate * view.weights.nnz() as f64).ceil() as usize).min(view.weights.nnz())
            })
            .collect();
        let removals = self.rules.prune.select_all(&views, &counts);
        check_removals(&views, &removals, counts.iter().sum())?;

        // 3. Redistribute exactly what was removed, within each layer's room.
        let removed_counts: Vec<usize> = removals.iter().map(Vec::len).collect();
        if total_score == 0.0 || self.rules.redistribution.keeps_layer_counts() {
            // No signal (e.g. all momentum zero) or no redistribution: every
            // layer regrows its own losses.
            shares = normalized(&removed_counts.iter().map(|&r| r as f64).collect::<Vec<_>>());
        }
        let capacity: Vec<usize> = views
            .iter()
            .zip(&removed_counts)
            .map(|(v, &r)| v.weights.rows() * v.weights.cols() - v.weights.nnz() + r)
            .collect();
        let regrowth = apportion(&shares, removed_counts.iter().sum(), &capacity)
            .expect("the removed weights always fit back: each layer has room for its own");

        // 4. Grow.
        let mut plans = Vec::with_capacity(views.len());
        for ((view, removal), (count, &share)) in views
            .iter()
            .zip(removals)
            .zip(regrowth.into_iter().zip(&shares))
        {
            let mut removed = vec![false; view.weights.nnz()];
            removal.iter().for_each(|&k| removed[k] = true);
            let vacancies = Vacancies::new(view.weights, &removed);
            let growth = self
                .rules
                .growth
                .select(view, &vacancies, count, &mut self.rng);
            if growth.len() != count {
                return Err(Error::SparseLearning {
                    layer: view.name.into(),
                    problem: format!(
                        "the growth rule returned {} positions, {count} were asked for",
                        growth.len()
                    ),
                });
            }
            plans.push(LayerPlan::new(view.weights, removed, growth, share));
        }
        Ok(plans)
    }
}

/// `values` scaled to sum to 1 (all zeros stay zeros).
fn normalized(values: &[f64]) -> Vec<f64> {
    let total: f64 = values.iter().sum();
    values
        .iter()
        .map(|v| v / total.max(f64::MIN_POSITIVE))
        .collect()
}

/// One layer's part of an update.
struct LayerPlan {
    /// Value positions removed (not regrown).
    removals: Vec<usize>,
    /// Positions inserted (not just pruned).
    growth: Vec<(usize, usize)>,
    /// Weights the prune rule removed and the growth rule chose again.
    revived: usize,
    share: f64,
}

impl LayerPlan {
    /// The edit that the rules' choices amount to. A weight pruned and
    /// regrown in the same update keeps its value and momentum: the reference
    /// library applies its mask only after growth, so such a weight never
    /// leaves. (Restarting it at zero instead cut LeNet-5's 25-weight conv1
    /// in half at the first update.) `removed` flags the pruned entries.
    fn new(
        weights: &SparseMatrix,
        mut removed: Vec<bool>,
        mut growth: Vec<(usize, usize)>,
        share: f64,
    ) -> Self {
        let before = growth.len();
        growth.retain(|&(r, c)| match weights.position(r, c) {
            Some(k) if removed[k] => {
                removed[k] = false;
                false
            }
            _ => true,
        });
        LayerPlan {
            removals: (0..removed.len()).filter(|&k| removed[k]).collect(),
            revived: before - growth.len(),
            growth,
            share,
        }
    }
}

/// The reference library's guard for nearly dense layers: a layer with less
/// than 20 % of its positions missing whose share of the regrowth is above
/// average is pruned at most at its missing fraction, so a layer the network
/// wants dense stays (nearly) dense instead of churning half its weights.
fn layer_prune_rate(rate: f64, weights: &SparseMatrix, share: f64, layers: usize) -> f64 {
    let size = (weights.rows() * weights.cols()).max(1);
    let missing = 1.0 - weights.nnz() as f64 / size as f64;
    if missing < 0.2 && share > 1.0 / layers as f64 {
        rate.min(missing)
    } else {
        rate
    }
}

/// Fails unless every layer's removals are distinct stored positions and
/// they add up to `total`.
fn check_removals(views: &[LayerView], removals: &[Vec<usize>], total: usize) -> Result<()> {
    if removals.len() != views.len() || removals.iter().map(Vec::len).sum::<usize>() != total {
        return Err(Error::SparseLearning {
            layer: views.first().map_or("", |v| v.name).into(),
            problem: format!(
                "the prune rule must remove {total} weights over {} layers, it chose {:?}",
                views.len(),
                removals.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        });
    }
    for (view, chosen) in views.iter().zip(removals) {
        let mut sorted = chosen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != chosen.len() || sorted.last().is_some_and(|&k| k >= view.weights.nnz()) {
            return Err(Error::SparseLearning {
                layer: view.name.into(),
                problem: format!(
                    "the prune rule must return distinct stored positions, it returned {:?}…",
                    &chosen[..chosen.len().min(8)]
                ),
            });
        }
    }
    Ok(())
}

/// The row of every stored entry, from a CSR `indptr`.
fn row_of_each_entry(indptr: &[usize]) -> Vec<usize> {
    let mut rows = Vec::with_capacity(indptr.last().copied().unwrap_or(0));
    for (r, pair) in indptr.windows(2).enumerate() {
        rows.extend(std::iter::repeat_n(r, pair[1] - pair[0]));
    }
    rows
}

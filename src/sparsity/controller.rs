//! The sparse-learning controller: when and how masks change during training.

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use super::apportion::apportion;
use super::grow::MomentumGrowth;
use super::prune::MagnitudePrune;
use super::redistribute::MomentumRedistribution;
use super::rules::{GrowthRule, LayerView, MomentumWindow, PruneRule, Redistribution, Vacancies};
use super::schedule::{PruneRateSchedule, UpdateSchedule};
use super::window::DenseMomentum;
use crate::autograd::{Gradients, Tape};
use crate::error::{Error, Result};
use crate::params::{ParamId, ParamStore, ParamValue};

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
}

impl Default for SparseLearningConfig {
    fn default() -> Self {
        SparseLearningConfig {
            prune_rate: 0.5,
            schedule: PruneRateSchedule::REFERENCE,
            update_interval: None,
            stop_updates_after: None,
        }
    }
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerUpdate {
    /// The weight's name.
    pub name: String,
    /// Stored weights before the update.
    pub nnz_before: usize,
    /// Weights pruned.
    pub removed: usize,
    /// Weights grown.
    pub regrown: usize,
    /// Stored weights after the update.
    pub nnz_after: usize,
    /// The layer's share of the regrowth (its normalised redistribution score).
    pub share: f64,
    /// Rows × columns of the full matrix.
    pub size: usize,
}

/// What one mask update did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    window: Option<MomentumWindow>,
    /// Present iff the growth rule reads dense momentum.
    dense_momentum: Option<DenseMomentum>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for SparseLearning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseLearning")
            .field("layers", &self.layers)
            .field("config", &self.config)
            .field("updates", &self.updates)
            .field("window", &self.window)
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
            return Err(Error::config("update-interval", "must be at least 1 step"));
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
        let window = rules.growth.momentum_window();
        if window == Some(MomentumWindow::LastSteps(0)) {
            return Err(Error::config("momentum-window", "must be at least 1 step"));
        }
        let updates = UpdateSchedule {
            interval: config.update_interval.unwrap_or(length.steps_per_epoch),
            stop_at: config
                .stop_updates_after
                .map_or(length.total_steps, |s| s.min(length.total_steps)),
        };
        let dense_momentum = window.map(|w| DenseMomentum::new(w, momentum_decay, layers.len()));
        Ok(SparseLearning {
            layers,
            rules,
            config,
            updates,
            total_steps: length.total_steps,
            window,
            dense_momentum,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The sparse layers this controller manages.
    pub fn layers(&self) -> &[ParamId] {
        &self.layers
    }

    /// Whether step `step` (0-based) feeds the dense momentum of missing weights.
    pub fn collects_dense_momentum(&self, step: usize) -> bool {
        match self.window {
            None => false,
            Some(MomentumWindow::EveryStep) => true,
            Some(MomentumWindow::LastSteps(w)) => self
                .updates
                .steps_until_update(step)
                .is_some_and(|n| n <= w),
        }
    }

    /// Asks `tape` to keep what this step's growth bookkeeping needs.
    pub fn prepare(&self, tape: &mut Tape, step: usize) {
        if self.collects_dense_momentum(step) {
            for &id in &self.layers {
                tape.keep_gradient_factors(id);
            }
        }
    }

    /// Call after optimizer step `step` (0-based): takes the step's gradient
    /// factors if the step is in the window before an update.
    pub fn observe(&mut self, store: &ParamStore, grads: &mut Gradients, step: usize) {
        if self.collects_dense_momentum(step)
            && let Some(dense) = &mut self.dense_momentum
        {
            for (i, &id) in self.layers.iter().enumerate() {
                let shape = store.get(id).value.shape();
                dense.accumulate(i, shape, grads.take_factors(id));
            }
        }
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
            let (edited, origins) = weights
                .edit_structure(&plan.removals, &plan.growth)
                .map_err(|e| Error::SparseLearning {
                    layer: param.name.clone(),
                    problem: format!("the rules chose an invalid edit: {e}"),
                })?;
            // Kept weights keep their momentum; a new weight starts with the
            // momentum estimate that selected it (as in the reference, whose
            // dense momentum buffer simply carries over), or 0 without one.
            let dense_momentum = self.dense_momentum.as_ref().and_then(|d| d.get(i));
            let rows = row_of_each_entry(edited.indptr());
            param.momentum = origins.remap(&param.momentum, |k| {
                dense_momentum.map_or(0.0, |m| m[(rows[k], edited.indices()[k])])
            });
            layers.push(LayerUpdate {
                name: param.name.clone(),
                nnz_before,
                removed: plan.removals.len(),
                regrown: plan.growth.len(),
                nnz_after: edited.nnz(),
                share: plan.share,
                size: edited.rows() * edited.cols(),
            });
            param.value = ParamValue::Sparse(edited);
        }
        if let Some(dense) = &mut self.dense_momentum {
            dense.end_window();
        }
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
                }
            })
            .collect();
        if self.window.is_some() && views.iter().any(|v| v.dense_momentum.is_none()) {
            return Err(Error::SparseLearning {
                layer: views[0].name.into(),
                problem: "the growth rule needs the dense momentum, but none was collected (was prepare() called?)".into(),
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
        let mut removals = Vec::with_capacity(views.len());
        for (view, &share) in views.iter().zip(&shares) {
            let rate = layer_prune_rate(prune_rate, view.weights, share, views.len());
            let count =
                ((rate * view.weights.nnz() as f64).ceil() as usize).min(view.weights.nnz());
            let chosen = self.rules.prune.select(view, count);
            check_removals(view, &chosen, count)?;
            removals.push(chosen);
        }

        // 3. Redistribute exactly what was removed, within each layer's room.
        let removed_counts: Vec<usize> = removals.iter().map(Vec::len).collect();
        if total_score == 0.0 {
            // No signal (e.g. all momentum zero): every layer regrows its own losses.
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
        for ((view, removal), (count, share)) in views
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
            plans.push(LayerPlan {
                removals: removal,
                growth,
                share: *share,
            });
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
    removals: Vec<usize>,
    growth: Vec<(usize, usize)>,
    share: f64,
}

/// The reference library's guard for nearly dense layers: a layer with less
/// than 20 % of its positions missing whose share of the regrowth is above
/// average is pruned at most at its missing fraction, so a layer the network
/// wants dense stays (nearly) dense instead of churning half its weights.
fn layer_prune_rate(
    rate: f64,
    weights: &crate::sparse::SparseMatrix,
    share: f64,
    layers: usize,
) -> f64 {
    let size = (weights.rows() * weights.cols()).max(1);
    let missing = 1.0 - weights.nnz() as f64 / size as f64;
    if missing < 0.2 && share > 1.0 / layers as f64 {
        rate.min(missing)
    } else {
        rate
    }
}

/// Fails unless `chosen` is `count` distinct stored positions.
fn check_removals(view: &LayerView, chosen: &[usize], count: usize) -> Result<()> {
    let mut sorted = chosen.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if chosen.len() != count
        || sorted.len() != count
        || sorted.last().is_some_and(|&k| k >= view.weights.nnz())
    {
        return Err(Error::SparseLearning {
            layer: view.name.into(),
            problem: format!(
                "the prune rule must return {count} distinct stored positions, it returned {:?}…",
                &chosen[..chosen.len().min(8)]
            ),
        });
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

//! Sparse learning: invariants after every mask update, growth by windowed
//! momentum against the exact dense-momentum reference, exact apportionment,
//! and configuration errors.

use ndarray::Array2;
use proptest::prelude::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::conv::ImageShape;
use sparsetrain::prelude::*;
use sparsetrain::sparsity::{
    Distribution, GrowthChoice, GrowthRule, LayerView, MagnitudePrune, MaskUpdate, MaskUpdates,
    Method, MomentumRedistribution, MomentumWindow, PruneChoice, RedistributionChoice,
    RegrownWeight, Regrowth, RunLength, Vacancies, apportion,
};
use sparsetrain::train::build_model;

const WIDTHS: [usize; 4] = [20, 16, 12, 4];
const BATCH: usize = 32;

/// A small sparse MLP (30 % of each weight matrix) and its parameters.
fn small_mlp(seed: u64) -> (ParamStore, Sequential) {
    mlp_with(seed, Distribution::Uniform)
}

/// A small MLP at 30 % overall density, shared among layers by `distribution`.
fn mlp_with(seed: u64, distribution: Distribution) -> (ParamStore, Sequential) {
    let config = TrainConfig {
        model: Architecture::Mlp {
            widths: WIDTHS.to_vec(),
        },
        sparse: Some(SparseSettings {
            density: 0.3,
            distribution,
            ..SparseSettings::default()
        }),
        seed,
        ..TrainConfig::default()
    };
    let features = ImageShape {
        channels: 1,
        height: 1,
        width: WIDTHS[0],
    };
    build_model(&config, features, WIDTHS[3]).unwrap()
}

/// A random batch of step `step` (the same for every caller).
fn batch(step: usize) -> (Array2<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + step as u64);
    let x = Array2::from_shape_simple_fn((WIDTHS[0], BATCH), || rng.random_range(-1.0f32..1.0));
    // Labels depend on the input, so there is something to learn.
    let labels = (0..BATCH)
        .map(|j| if x[(0, j)] > 0.0 { 1 } else { (j % 2) * 2 })
        .collect();
    (x, labels)
}

/// One SGD step with the controller observing; true if a mask update is due.
fn sgd_step(
    store: &mut ParamStore,
    mlp: &Sequential,
    controller: &mut SparseLearning,
    step: usize,
) -> bool {
    let (x, labels) = batch(step);
    let mut grads = {
        let mut tape = Tape::new(store);
        controller.prepare(&mut tape, step);
        let x = tape.input(x);
        let logits = mlp.run(&mut tape, x).unwrap();
        let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
        tape.backward(loss).unwrap()
    };
    let sgd = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    sgd.step(store, &grads, 0.05).unwrap();
    controller.observe(store, std::slice::from_mut(&mut grads), step);
    controller.updates_after(step)
}

/// [`sgd_step`], then the mask update if one is due.
fn train_step(
    store: &mut ParamStore,
    mlp: &Sequential,
    controller: &mut SparseLearning,
    step: usize,
) -> Option<MaskUpdate> {
    sgd_step(store, mlp, controller, step)
        .then(|| controller.update_masks(store, step + 1).unwrap())
}

fn controller(store: &ParamStore, rules: Rules, length: RunLength) -> SparseLearning {
    SparseLearning::new(
        store,
        store.sparse_ids(),
        rules,
        SparseLearningConfig::default(),
        length,
        0.9,
        7,
    )
    .unwrap()
}

fn structure(store: &ParamStore) -> Vec<(Vec<usize>, Vec<usize>)> {
    store
        .sparse_ids()
        .into_iter()
        .map(|id| {
            let w = store.get(id).value.as_sparse().unwrap();
            (w.indptr().to_vec(), w.indices().to_vec())
        })
        .collect()
}

/// Trains 200 steps with `updates` (masks updated every 20 steps) and checks,
/// after every update: valid CSR, each layer's planned count, the total
/// conserved, momentum aligned, surviving weights unchanged and grown ones
/// starting as the policy says. Returns how many weights were revived
/// (pruned and regrown in the same update).
fn check_invariants(updates: MaskUpdates, distribution: Distribution) -> usize {
    let what = format!("{updates:?} with {distribution}");
    let (mut store, mlp) = mlp_with(1, distribution);
    let length = RunLength {
        steps_per_epoch: 20,
        total_steps: 200,
    };
    let config = SparseLearningConfig {
        prune_rate: updates.prune_rate,
        schedule: updates.schedule,
        update_interval: updates.update_every.map(|_| 20),
        stop_updates_after: None,
        regrowth: updates.regrowth,
    };
    let mut controller = SparseLearning::new(
        &store,
        store.sparse_ids(),
        updates.rules(0.9),
        config,
        length,
        0.9,
        7,
    )
    .unwrap();
    let total_nnz = |s: &ParamStore| {
        s.sparse_ids()
            .iter()
            .map(|&id| s.get(id).value.values().len())
            .sum::<usize>()
    };
    let initial_total = total_nnz(&store);
    let (mut updates_seen, mut revived) = (0, 0);
    for step in 0..length.total_steps {
        if !sgd_step(&mut store, &mlp, &mut controller, step) {
            continue;
        }
        let before = store.clone();
        let update = controller.update_masks(&mut store, step + 1).unwrap();
        updates_seen += 1;
        assert_eq!(
            total_nnz(&store),
            initial_total,
            "{what}: total nnz is conserved exactly"
        );
        let shares: f64 = update.layers.iter().map(|l| l.share).sum();
        assert!(
            (shares - 1.0).abs() < 1e-9,
            "{what}: shares sum to 1, got {shares}"
        );
        for (layer, id) in update.layers.iter().zip(store.sparse_ids()) {
            let param = store.get(id);
            let w = param.value.as_sparse().unwrap();
            // A valid CSR (sorted, unique, in range) by sprs' own checks.
            SparseMatrix::try_from_csr(
                w.rows(),
                w.cols(),
                w.indptr().to_vec(),
                w.indices().to_vec(),
                w.values().to_vec(),
            )
            .expect("the rebuilt matrix is valid CSR");
            assert_eq!(
                w.nnz(),
                layer.nnz_before - layer.removed + layer.regrown,
                "{what} {}: planned count",
                layer.name
            );
            assert_eq!(w.nnz(), layer.nnz_after);
            assert_eq!(
                param.momentum.len(),
                w.nnz(),
                "{what} {}: momentum stays aligned",
                layer.name
            );
            if updates.redistribution == RedistributionChoice::None {
                assert_eq!(
                    layer.removed, layer.regrown,
                    "{what} {}: no redistribution",
                    layer.name
                );
            }
            revived += layer.revived;
            // Weights present before and after keep their value and momentum
            // (a pruned weight grown back at once never left); new ones start
            // at zero unless drawn fresh.
            let old = before.get(id);
            let old_w = old.value.as_sparse().unwrap();
            let mut kept = 0;
            for r in 0..w.rows() {
                let (cols, values) = w.row(r);
                for ((&c, &v), k) in cols.iter().zip(values).zip(w.indptr()[r]..) {
                    match old_w.position(r, c) {
                        Some(old_k) => {
                            kept += 1;
                            assert_eq!(
                                (v, param.momentum[k]),
                                (old_w.values()[old_k], old.momentum[old_k]),
                                "{what} {}: ({r}, {c}) changed",
                                layer.name
                            )
                        }
                        None if updates.regrowth.weight == RegrownWeight::Zero => {
                            assert_eq!(
                                v, 0.0,
                                "{what} {}: grown ({r}, {c}) is not zero",
                                layer.name
                            )
                        }
                        None => assert!(
                            v != 0.0,
                            "{what} {}: grown ({r}, {c}) was not drawn",
                            layer.name
                        ),
                    }
                }
            }
            assert_eq!(
                kept,
                layer.nnz_before - layer.removed + layer.revived,
                "{what} {}: the weights that stayed are the unpruned and the revived",
                layer.name
            );
        }
    }
    assert_eq!(
        updates_seen, 9,
        "{what}: an update every 20 steps but after the last"
    );
    revived
}

#[test]
fn every_method_keeps_the_invariants() {
    let mut revived = 0;
    for method in [Method::SparseMomentum, Method::Set, Method::Rigl] {
        revived += check_invariants(method.mask_updates().unwrap(), method.distribution());
    }
    assert!(revived > 0, "some pruned weights were regrown at once");
}

#[test]
fn every_rule_and_distribution_keeps_the_invariants() {
    let base = Method::SparseMomentum.mask_updates().unwrap();
    let variants = [
        MaskUpdates {
            prune: PruneChoice::GlobalMagnitude,
            ..base
        },
        MaskUpdates {
            redistribution: RedistributionChoice::Magnitude,
            growth: GrowthChoice::Gradient,
            ..base
        },
        MaskUpdates {
            redistribution: RedistributionChoice::Nonzero,
            growth: GrowthChoice::Random,
            ..base
        },
        MaskUpdates {
            regrowth: Regrowth {
                weight: RegrownWeight::Init(WeightInit::SparseFanIn),
                ..base.regrowth
            },
            ..base
        },
    ];
    for distribution in [
        Distribution::Uniform,
        Distribution::ErdosRenyi,
        Distribution::ErdosRenyiKernel,
    ] {
        for updates in variants {
            check_invariants(updates, distribution);
        }
    }
}

#[test]
fn windowed_growth_matches_exact_dense_momentum() {
    // Two identical runs, one keeping the dense momentum of every position at
    // every step (the reference), one only over the last 100 steps before the
    // update (0.9¹⁰⁰ ≈ 3·10⁻⁵). They must regrow the same positions.
    let length = RunLength {
        steps_per_epoch: 150,
        total_steps: 300,
    };
    let (mut exact_store, mlp) = small_mlp(2);
    let mut windowed_store = exact_store.clone();
    let mut exact = controller(
        &exact_store,
        Rules::sparse_momentum(MomentumWindow::EveryStep),
        length,
    );
    let mut windowed = controller(
        &windowed_store,
        Rules::sparse_momentum(MomentumWindow::LastSteps(100)),
        length,
    );
    let mut short = controller(
        &windowed_store.clone(),
        Rules::sparse_momentum(MomentumWindow::LastSteps(1)),
        length,
    );
    let mut short_store = windowed_store.clone();
    for step in 0..150 {
        let a = train_step(&mut exact_store, &mlp, &mut exact, step);
        let b = train_step(&mut windowed_store, &mlp, &mut windowed, step);
        let c = train_step(&mut short_store, &mlp, &mut short, step);
        assert_eq!(a.is_some(), b.is_some());
        assert_eq!(a.is_some(), c.is_some());
    }
    let reference = structure(&exact_store);
    assert_eq!(
        structure(&windowed_store),
        reference,
        "a 100-step window grows where exact momentum does"
    );
    // The test can fail: a one-step window (the last gradient only) picks differently.
    assert_ne!(
        structure(&short_store),
        reference,
        "a 1-step window should not match exact momentum"
    );
}

/// A growth rule that breaks its contract by growing one weight too many.
struct Greedy;

impl GrowthRule for Greedy {
    fn select(
        &self,
        _: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        _: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let mut free = Vec::new();
        vacancies.for_each(|r, c| free.push((r, c)));
        free.truncate(count + 1);
        free
    }
}

/// A growth rule that breaks its contract by growing outside the matrix.
struct Outside;

impl GrowthRule for Outside {
    fn select(
        &self,
        view: &LayerView,
        _: &Vacancies,
        count: usize,
        _: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        (0..count).map(|i| (view.weights.rows() + i, 0)).collect()
    }
}

#[test]
fn a_rule_that_breaks_its_contract_is_an_error_not_a_corruption() {
    let rules: [(Box<dyn GrowthRule>, &str); 2] = [
        (Box::new(Greedy), "growth rule returned"),
        (Box::new(Outside), "invalid edit"),
    ];
    for (growth, expected) in rules {
        let (mut store, mlp) = small_mlp(3);
        let rules = Rules {
            prune: Box::new(MagnitudePrune),
            redistribution: Box::new(MomentumRedistribution),
            growth,
        };
        let length = RunLength {
            steps_per_epoch: 5,
            total_steps: 10,
        };
        let mut controller = controller(&store, rules, length);
        let before = store.clone();
        for step in 0..4 {
            train_step(&mut store, &mlp, &mut controller, step);
        }
        let mut grads = {
            let mut tape = Tape::new(&store);
            let (x, labels) = batch(4);
            let x = tape.input(x);
            let logits = mlp.run(&mut tape, x).unwrap();
            let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
            tape.backward(loss).unwrap()
        };
        controller.observe(&store, std::slice::from_mut(&mut grads), 4);
        assert!(controller.updates_after(4));
        let err = controller.update_masks(&mut store, 5).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(structure(&store), structure(&before), "nothing was changed");
    }
}

#[test]
fn bad_settings_are_refused() {
    let (store, _) = small_mlp(4);
    let length = RunLength {
        steps_per_epoch: 5,
        total_steps: 10,
    };
    let make = |config: SparseLearningConfig, window| {
        SparseLearning::new(
            &store,
            store.sparse_ids(),
            Rules::sparse_momentum(window),
            config,
            length,
            0.9,
            0,
        )
    };
    let negative = SparseLearningConfig {
        prune_rate: -0.1,
        ..SparseLearningConfig::default()
    };
    assert!(
        make(negative, MomentumWindow::EveryStep)
            .unwrap_err()
            .to_string()
            .contains("prune-rate")
    );
    let zero_interval = SparseLearningConfig {
        update_interval: Some(0),
        ..SparseLearningConfig::default()
    };
    assert!(make(zero_interval, MomentumWindow::EveryStep).is_err());
    assert!(
        make(
            SparseLearningConfig::default(),
            MomentumWindow::LastSteps(0)
        )
        .is_err()
    );
    // A dense parameter cannot be managed.
    let bias = store
        .iter()
        .find(|(_, p)| p.name.ends_with("bias"))
        .unwrap()
        .0;
    let err = SparseLearning::new(
        &store,
        vec![bias],
        Rules::sparse_momentum(MomentumWindow::EveryStep),
        SparseLearningConfig::default(),
        length,
        0.9,
        0,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("dense"), "{err}");
}

proptest! {
    #[test]
    fn apportion_is_exact_capped_and_proportional(
        parts in prop::collection::vec((0.0f64..10.0, 0usize..500), 1..8),
        fraction in 0.0f64..=1.0,
    ) {
        let shares: Vec<f64> = parts.iter().map(|p| p.0).collect();
        let capacity: Vec<usize> = parts.iter().map(|p| p.1).collect();
        let total = (capacity.iter().sum::<usize>() as f64 * fraction) as usize;
        let result = apportion(&shares, total, &capacity).unwrap();
        prop_assert_eq!(result.iter().sum::<usize>(), total);
        for ((&r, &c), &s) in result.iter().zip(&capacity).zip(&shares) {
            prop_assert!(r <= c);
            // Nobody below its capped proportional quota minus rounding.
            let sum: f64 = shares.iter().sum();
            if sum > 0.0 {
                let quota = (s / sum * total as f64).floor() as usize;
                prop_assert!(r >= quota.min(c).saturating_sub(1));
            }
        }
        prop_assert!(apportion(&shares, capacity.iter().sum::<usize>() + 1, &capacity).is_none());
    }
}

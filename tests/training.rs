//! Training end to end on MNIST subsets: real accuracy, determinism, divergence.

use std::path::Path;
use std::sync::OnceLock;

use sparsetrain::prelude::*;
use sparsetrain::sparsity::{GrowthRule, LayerView, Vacancies};

fn mnist() -> &'static Mnist {
    static MNIST: OnceLock<Mnist> = OnceLock::new();
    MNIST.get_or_init(|| Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap())
}

fn quick(density: Option<f64>, train_samples: usize, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        train_samples: Some(train_samples),
        sparse: density.map(|density| SparseSettings {
            density,
            ..SparseSettings::default()
        }),
        ..TrainConfig::default()
    }
}

fn train(config: TrainConfig) -> (TrainSummary, Trainer) {
    let mut trainer = Trainer::new(config, &mnist().train, &mnist().test).unwrap();
    let summary = trainer.run(&mut ()).unwrap();
    (summary, trainer)
}

#[test]
fn sparse_momentum_learns_mnist_at_five_percent() {
    // 10 000 samples, 3 epochs (300 steps, two mask updates).
    let (summary, trainer) = train(quick(Some(0.05), 10_000, 3));
    assert!(
        summary.test_accuracy > 0.90,
        "test accuracy {}",
        summary.test_accuracy
    );
    assert!(
        (summary.density - 0.05).abs() < 1e-4,
        "density stays at 5 %: {}",
        summary.density
    );
    assert_eq!(
        trainer.layers().iter().map(|l| l.nnz).sum::<usize>(),
        13_310
    );
}

#[test]
fn an_epoch_reports_where_its_time_went() {
    let config = quick(Some(0.05), 2_000, 2);
    let mut trainer = Trainer::new(config, &mnist().train, &mnist().test).unwrap();
    let first = trainer.train_epoch(&mut ()).unwrap();
    let p = first.phases;
    assert!(
        p.forward_backward > 0.0 && p.optimizer > 0.0 && p.mask_updates > 0.0,
        "{p:?}"
    );
    assert!(
        p.forward_backward + p.optimizer + p.mask_updates <= first.seconds,
        "{p:?} within {} s",
        first.seconds
    );
    let last = trainer.train_epoch(&mut ()).unwrap();
    assert_eq!(
        last.phases.mask_updates, 0.0,
        "no update after the last epoch"
    );
}

#[test]
fn two_percent_and_dense_learn_too() {
    let (sparse, _) = train(quick(Some(0.02), 5_000, 2));
    assert!(sparse.test_accuracy > 0.80, "2 %: {}", sparse.test_accuracy);
    let (dense, _) = train(quick(None, 5_000, 2));
    assert!(dense.test_accuracy > 0.90, "dense: {}", dense.test_accuracy);
    assert_eq!(dense.density, 1.0);
}

#[test]
fn the_same_seed_gives_the_same_run_for_any_thread_count() {
    // The shard count is fixed: by default it follows the thread count.
    let run = |threads, seed| {
        let config = TrainConfig {
            threads: Some(threads),
            batch_shards: Some(2),
            seed,
            ..quick(Some(0.05), 3_000, 2)
        };
        let (summary, trainer) = train(config);
        (summary.test_accuracy, trainer.params().clone())
    };
    let (accuracy, params) = run(1, 5);
    let (accuracy_2, params_2) = run(2, 5);
    assert_eq!(accuracy, accuracy_2);
    assert!(
        params == params_2,
        "weights, structure and momentum are bit-identical with 1 and 2 threads"
    );
    let (_, other_seed) = run(2, 6);
    assert!(params != other_seed, "another seed gives another run");
}

#[test]
fn batch_shards_sum_to_the_whole_batch_gradient() {
    // Dense, so both runs keep the same weights to compare: 20 steps on two
    // tapes of 64 and 36 samples against 20 steps on one tape of 100. Only
    // the order of the sums differs, so the weights stay within rounding.
    let run = |shards| {
        let config = TrainConfig {
            batch_shards: Some(shards),
            ..quick(None, 2_000, 1)
        };
        let (summary, trainer) = train(config);
        assert_eq!(trainer.batch_shards(), shards);
        (summary, trainer.params().clone())
    };
    let (whole, whole_params) = run(1);
    let (split, split_params) = run(2);
    let mut largest_difference = 0.0f32;
    for ((_, a), (_, b)) in whole_params.iter().zip(split_params.iter()) {
        for (x, y) in a.value.values().iter().zip(b.value.values()) {
            largest_difference = largest_difference.max((x - y).abs());
        }
    }
    assert!(
        largest_difference < 1e-4,
        "weights differ by {largest_difference}"
    );
    assert!(largest_difference > 0.0, "the sums run in another order");
    assert!((whole.test_accuracy - split.test_accuracy).abs() < 0.01);
}

#[test]
fn divergence_is_an_error_naming_epoch_and_step() {
    let config = TrainConfig {
        lr: 1e9,
        ..quick(Some(0.05), 2_000, 1)
    };
    let mut trainer = Trainer::new(config, &mnist().train, &mnist().test).unwrap();
    let err = trainer.run(&mut ()).unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteLoss { epoch: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("epoch 1, step"), "{err}");
}

#[test]
fn a_model_that_does_not_fit_the_data_is_an_error() {
    let config = TrainConfig {
        model: Architecture::Mlp {
            widths: vec![100, 10],
        },
        ..quick(Some(0.05), 1_000, 1)
    };
    let err = Trainer::new(config, &mnist().train, &mnist().test)
        .err()
        .unwrap();
    assert!(err.to_string().contains("784 features"), "{err}");
}

/// Grows the first free positions in row-major order: simple, deterministic.
struct FirstFree;

impl GrowthRule for FirstFree {
    fn select(
        &self,
        _: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        _: &mut rand::rngs::ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let mut grown = Vec::with_capacity(count);
        vacancies.for_each(|r, c| {
            if grown.len() < count {
                grown.push((r, c));
            }
        });
        grown
    }
}

#[test]
fn custom_rules_plug_into_the_trainer() {
    let config = quick(Some(0.05), 3_000, 2);
    let updates = config.sparse.as_ref().and_then(|s| s.updates).unwrap();
    let mut rules = updates.rules(config.momentum);
    rules.growth = Box::new(FirstFree);
    let mut trainer = Trainer::with_rules(config, &mnist().train, &mnist().test, rules).unwrap();
    let summary = trainer.run(&mut ()).unwrap();
    assert!(summary.test_accuracy > 0.6, "{}", summary.test_accuracy);
    assert_eq!(
        trainer.layers().iter().map(|l| l.nnz).sum::<usize>(),
        13_310
    );

    let dense = quick(None, 1_000, 1);
    let rules = updates.rules(0.9);
    let err = Trainer::with_rules(dense, &mnist().train, &mnist().test, rules)
        .err()
        .unwrap();
    assert!(err.to_string().contains("custom rules"), "{err}");
}

#[test]
fn every_method_learns() {
    for method in [Method::Set, Method::Rigl, Method::Static] {
        let config = TrainConfig {
            sparse: Some(SparseSettings::method(method, 0.05)),
            ..quick(Some(0.05), 5_000, 2)
        };
        let (summary, _) = train(config);
        assert!(
            summary.test_accuracy > 0.8,
            "{method}: {}",
            summary.test_accuracy
        );
        assert!(
            (summary.density - 0.05).abs() < 1e-4,
            "{method}: density {}",
            summary.density
        );
    }
}

#[test]
fn sparse_momentum_trains_lenet5_with_every_layer_sparse() {
    // 4 000 samples, 2 epochs (80 steps, two mask updates over conv and fc layers).
    let config = TrainConfig {
        model: Architecture::LeNet5,
        ..quick(Some(0.05), 4_000, 2)
    };
    let (summary, trainer) = train(config);
    assert!(
        summary.test_accuracy > 0.85,
        "test accuracy {}",
        summary.test_accuracy
    );
    assert_eq!(trainer.layers().len(), 4);
    assert!(trainer.layers().iter().all(|l| l.sparse));
    assert_eq!(
        trainer.layers().iter().map(|l| l.nnz).sum::<usize>(),
        21_525,
        "5 % of 430 500 weights, conserved"
    );
}

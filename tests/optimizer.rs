//! SGD over the gradients of a batch split into shards: the update must be
//! the one of the summed gradient, value by value, and a missing gradient an
//! error that changes nothing.

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::conv::ImageShape;
use sparsetrain::prelude::*;
use sparsetrain::train::build_model;

/// An MLP whose first weight (60 × 80 at 50 %, 2 400 values) spans several
/// of the optimizer's parallel pieces.
fn mlp() -> (ParamStore, Sequential) {
    let config = TrainConfig {
        model: Architecture::Mlp {
            widths: vec![80, 60, 3],
        },
        sparse: Some(SparseSettings {
            density: 0.5,
            ..SparseSettings::default()
        }),
        seed: 5,
        ..TrainConfig::default()
    };
    let features = ImageShape {
        channels: 1,
        height: 1,
        width: 80,
    };
    build_model(&config, features, 3).unwrap()
}

/// The gradients of a random batch of `samples` (seeded by `seed`).
fn gradients(store: &ParamStore, model: &Sequential, samples: usize, seed: u64) -> Gradients {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_simple_fn((80, samples), || rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..samples).map(|j| j % 3).collect();
    let mut tape = Tape::new(store);
    let input = tape.input(x);
    let logits = model.run(&mut tape, input).unwrap();
    let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
    tape.backward(loss).unwrap()
}

const SGD: Sgd = Sgd {
    momentum: 0.9,
    nesterov: true,
    weight_decay: 5e-4,
};

#[test]
fn a_step_over_shards_applies_their_summed_gradient() {
    let (mut store, model) = mlp();
    let before = store.clone();
    let shards = [
        gradients(&store, &model, 7, 1),
        gradients(&store, &model, 9, 2),
    ];
    let lr = 0.05;
    SGD.step_summed(&mut store, &shards, lr).unwrap();
    for (id, param) in store.iter() {
        let (g0, g1) = (shards[0].param(id).unwrap(), shards[1].param(id).unwrap());
        let old = before.get(id).value.values();
        for (k, &w) in param.value.values().iter().enumerate() {
            // From zero momentum: m = g, and Nesterov's step is g + β·m.
            let g = (g0.values()[k] + g1.values()[k]) + SGD.weight_decay * old[k];
            let m = g;
            let expected = old[k] - lr * (g + SGD.momentum * m);
            assert_eq!(w, expected, "{} value {k}", param.name);
            assert_eq!(param.momentum[k], m, "{} momentum {k}", param.name);
        }
    }
}

#[test]
fn one_shard_is_a_plain_step() {
    let (mut store, model) = mlp();
    let grads = gradients(&store, &model, 8, 3);
    let mut twin = store.clone();
    SGD.step(&mut store, &grads, 0.1).unwrap();
    SGD.step_summed(&mut twin, std::slice::from_ref(&grads), 0.1)
        .unwrap();
    for ((_, a), (_, b)) in store.iter().zip(twin.iter()) {
        assert_eq!(a.value.values(), b.value.values());
        assert_eq!(a.momentum, b.momentum);
    }
}

#[test]
fn a_parameter_without_a_gradient_is_an_error_that_changes_nothing() {
    let (mut store, model) = mlp();
    let grads = gradients(&store, &model, 8, 4);
    // A store with one more parameter than the gradients know of.
    store.add("unused", ParamValue::Dense(Array2::ones((2, 2))));
    let before = store.clone();
    let err = SGD
        .step_summed(&mut store, &[grads, Gradients::default()], 0.1)
        .unwrap_err();
    assert!(err.to_string().contains("unused"), "{err}");
    for ((_, a), (_, b)) in store.iter().zip(before.iter()) {
        assert_eq!(a.value.values(), b.value.values(), "{}", a.name);
    }
}

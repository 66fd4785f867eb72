//! Networks: LeNet-5-Caffe's shapes, errors when layers do not fit, and small
//! VGG and Wide ResNet models on synthetic 32×32×3 images (shapes, gradients
//! through the whole network, a few steps that lower the loss).

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::autograd::Workspace;
use sparsetrain::conv::ImageShape;
use sparsetrain::nn::{ActivationShape, Conv2d, ConvShape, Linear, MaxPool2d, Relu};
use sparsetrain::prelude::*;
use sparsetrain::train::build_model;

const CIFAR_LIKE: ImageShape = ImageShape {
    channels: 3,
    height: 32,
    width: 32,
};

const MNIST_LIKE: ImageShape = ImageShape {
    channels: 1,
    height: 28,
    width: 28,
};

/// `model` at `density` (uniform; `None` for dense), seed 1.
fn build(model: Architecture, image: ImageShape, density: Option<f64>) -> (ParamStore, Sequential) {
    let config = TrainConfig {
        model,
        sparse: density.map(|density| SparseSettings {
            density,
            ..SparseSettings::default()
        }),
        seed: 1,
        ..TrainConfig::default()
    };
    build_model(&config, image, 10).unwrap()
}

fn small_vgg() -> Architecture {
    Architecture::Vgg {
        stages: vec![vec![8], vec![16, 16], vec![16]],
        hidden: vec![32],
    }
}

fn small_wrn() -> Architecture {
    // WRN-10-1: one block per group (16, 32, 64 channels), with dropout.
    Architecture::WideResNet {
        depth: 10,
        widen: 1,
        dropout: 0.3,
    }
}

/// `batch` images whose class is the brightest of three colour channels
/// (classes 0–2), so there is something to learn.
fn synthetic_batch(image: ImageShape, batch: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let plane = image.plane();
    let labels: Vec<usize> = (0..batch)
        .map(|_| rng.random_range(0..image.channels))
        .collect();
    let mut x = Array2::zeros((image.channels, batch * plane));
    for c in 0..image.channels {
        for (b, &label) in labels.iter().enumerate() {
            let shift = if c == label { 0.5 } else { -0.5 };
            for p in 0..plane {
                x[(c, b * plane + p)] = rng.random_range(-1.0f32..1.0) + shift;
            }
        }
    }
    (x, labels)
}

/// The mean loss of `model` on a batch.
fn loss(store: &ParamStore, model: &Sequential, x: &Array2<f32>, labels: &[usize]) -> f32 {
    let mut tape = Tape::new(store);
    tape.set_rng(ChaCha8Rng::seed_from_u64(0));
    let input = tape.input(x.clone());
    let logits = model.run(&mut tape, input).unwrap();
    let loss = tape.softmax_cross_entropy(logits, labels).unwrap();
    tape.value(loss)[(0, 0)]
}

#[test]
fn lenet5_has_the_caffe_shapes() {
    let (store, model) = build(Architecture::LeNet5, MNIST_LIKE, Some(0.05));
    let shapes: Vec<(String, (usize, usize))> = model
        .weights()
        .into_iter()
        .map(|id| (store.get(id).name.clone(), store.get(id).value.shape()))
        .collect();
    let expected = [
        ("conv1.weight", (20, 25)),
        ("conv2.weight", (50, 500)),
        ("fc3.weight", (500, 800)),
        ("fc4.weight", (10, 500)),
    ];
    assert_eq!(
        shapes,
        expected.map(|(n, s)| (n.to_string(), s)).to_vec(),
        "every weight matrix, in order"
    );
    assert!(
        model
            .weights()
            .iter()
            .all(|&id| store.get(id).value.as_sparse().is_some()),
        "every conv and fc weight is sparse"
    );
    assert_eq!(model.input_shape(), ActivationShape::Image(MNIST_LIKE));
    assert_eq!(model.final_shape(), ActivationShape::Features(10));
    let (x, labels) = synthetic_batch(MNIST_LIKE, 5, 1);
    assert!(loss(&store, &model, &x, &labels).is_finite());
}

#[test]
fn layers_that_do_not_fit_are_errors_when_the_model_is_built() {
    // A kernel larger than the padded input: LeNet-5 on 10×10 images.
    let tiny = ImageShape {
        channels: 1,
        height: 10,
        width: 10,
    };
    let config = TrainConfig {
        model: Architecture::LeNet5,
        ..TrainConfig::default()
    };
    let err = build_model(&config, tiny, 10).unwrap_err().to_string();
    assert!(
        err.contains("conv2") && err.contains("larger than"),
        "{err}"
    );

    let mut store = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut builder = ParamBuilder::dense(&mut store, WeightInit::default(), &mut rng);
    // A zero stride.
    let err = Conv2d::new(
        &mut builder,
        "conv",
        ConvShape::new(3, 4, 3).stride(0),
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("conv") && err.contains("stride 0"), "{err}");
    // Channels that do not match: conv1 makes 8, conv2 takes 4.
    let conv1 = Conv2d::new(&mut builder, "conv1", ConvShape::new(3, 8, 3), true).unwrap();
    let conv2 = Conv2d::new(&mut builder, "conv2", ConvShape::new(4, 8, 3), true).unwrap();
    let err = Sequential::new(
        "net",
        ActivationShape::Image(CIFAR_LIKE),
        vec![Box::new(conv1), Box::new(Relu), Box::new(conv2)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("layer 2 (conv2): takes 4 input channels, gets 8×30×30 images"),
        "{err}"
    );
    // Features where images are needed, and the wrong number of features.
    let fc = Linear::new(&mut builder, "fc", 100, 10).unwrap();
    let err = Sequential::new(
        "net",
        ActivationShape::Image(CIFAR_LIKE),
        vec![Box::new(fc)],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("takes 100 features, gets 3×32×32 images"),
        "{err}"
    );
    let err = Sequential::new(
        "net",
        ActivationShape::Features(5),
        vec![Box::new(MaxPool2d { size: 2, stride: 2 })],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs images, gets 5 features"), "{err}");
    // A Wide ResNet depth that is not 6n + 4.
    let config = TrainConfig {
        model: Architecture::WideResNet {
            depth: 12,
            widen: 1,
            dropout: 0.0,
        },
        ..TrainConfig::default()
    };
    let err = build_model(&config, CIFAR_LIKE, 10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("6n + 4"), "{err}");
}

#[test]
fn small_vgg_and_wide_resnet_have_the_expected_shapes() {
    let (store, vgg) = build(small_vgg(), CIFAR_LIKE, Some(0.3));
    let names: Vec<&str> = vgg
        .weights()
        .into_iter()
        .map(|id| store.get(id).name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "conv1_1.weight",
            "conv2_1.weight",
            "conv2_2.weight",
            "conv3_1.weight",
            "fc1.weight",
            "fc2.weight"
        ]
    );
    // Three 2×2 pools: 32 → 4, 16 channels: 256 features into fc1.
    let fc1 = vgg.weights()[4];
    assert_eq!(store.get(fc1).value.shape(), (32, 256));

    let (store, wrn) = build(small_wrn(), CIFAR_LIKE, Some(0.3));
    let shapes: Vec<(usize, usize)> = wrn
        .weights()
        .into_iter()
        .map(|id| store.get(id).value.shape())
        .collect();
    assert_eq!(
        shapes,
        [
            (16, 27),  // conv1: 3 channels, 3×3
            (16, 144), // block1 conv1, conv2 (16 → 16, no shortcut)
            (16, 144),
            (32, 144), // block2: 16 → 32, stride 2
            (32, 288),
            (32, 16),  // its 1×1 shortcut
            (64, 288), // block3: 32 → 64, stride 2
            (64, 576),
            (64, 32),
            (10, 64), // classifier after global average pooling
        ]
    );
    for model in [&vgg, &wrn] {
        assert_eq!(model.final_shape(), ActivationShape::Features(10));
    }
}

/// The backward pass of the whole network against finite differences, one
/// parameter tensor at a time, along the tensor's gradient `g`: moving the
/// tensor by `ε · g/|g|` changes the loss at the rate `|g|` if `g` is right
/// (a wrong component lowers the true rate `g_true · g/|g|`). One direction
/// for the whole tensor keeps the loss change far above f32 rounding, which
/// per-value differences on 32×32 images would not.
fn check_network_gradients(architecture: Architecture) {
    let (store, model) = build(architecture, CIFAR_LIKE, Some(0.5));
    let (x, labels) = synthetic_batch(CIFAR_LIKE, 4, 2);
    let grads = {
        let mut tape = Tape::new(&store);
        tape.set_rng(ChaCha8Rng::seed_from_u64(0));
        let input = tape.input(x.clone());
        let logits = model.run(&mut tape, input).unwrap();
        let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
        tape.backward(loss).unwrap()
    };
    let mut checked = 0;
    for (id, param) in store.iter().filter(|(_, p)| p.trainable) {
        let g = grads.param(id).unwrap().values();
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm < 1e-4 {
            continue; // Too flat to measure (e.g. a bias feeding batch norm).
        }
        let epsilon = 1e-3;
        let moved = |sign: f32| {
            let mut shifted = store.clone();
            for (v, d) in shifted.get_mut(id).value.values_mut().iter_mut().zip(g) {
                *v += sign * epsilon * d / norm;
            }
            loss(&shifted, &model, &x, &labels)
        };
        let rate = (moved(1.0) - moved(-1.0)) / (2.0 * epsilon);
        assert!(
            (rate - norm).abs() <= 0.02 * norm + 1e-4,
            "`{}`: |g| = {norm}, finite differences {rate}",
            param.name
        );
        checked += 1;
    }
    assert!(checked >= 10, "{checked} tensors checked");
}

#[test]
fn vgg_gradients_match_finite_differences() {
    check_network_gradients(small_vgg());
}

#[test]
fn wide_resnet_gradients_match_finite_differences() {
    check_network_gradients(small_wrn());
}

/// A few SGD steps on one batch must lower its loss, and batch norm's
/// running statistics must move.
fn check_training_lowers_the_loss(architecture: Architecture) {
    let (mut store, model) = build(architecture, CIFAR_LIKE, Some(0.3));
    let (x, labels) = synthetic_batch(CIFAR_LIKE, 16, 3);
    let sgd = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    let before = loss(&store, &model, &x, &labels);
    for step in 0..8 {
        let (grads, updates) = {
            let mut tape = Tape::new(&store);
            tape.set_rng(ChaCha8Rng::seed_from_u64(step));
            let input = tape.input(x.clone());
            let logits = model.run(&mut tape, input).unwrap();
            let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
            let grads = tape.backward(loss).unwrap();
            (grads, tape.take_state_updates())
        };
        assert!(!updates.is_empty(), "batch norm records running statistics");
        sgd.step(&mut store, &grads, 0.05).unwrap();
        store.apply_state_updates(updates);
    }
    let after = loss(&store, &model, &x, &labels);
    assert!(after < 0.7 * before, "loss {before} → {after}");
    let moved = store
        .iter()
        .filter(|(_, p)| p.name.ends_with("running_mean"))
        .any(|(_, p)| p.value.values().iter().any(|&v| v != 0.0));
    assert!(moved, "running means left their start");
}

#[test]
fn a_few_steps_lower_the_vgg_loss() {
    check_training_lowers_the_loss(small_vgg());
}

#[test]
fn a_few_steps_lower_the_wide_resnet_loss() {
    check_training_lowers_the_loss(small_wrn());
}

#[test]
fn evaluation_mode_uses_running_statistics_and_no_dropout() {
    let (store, model) = build(small_wrn(), CIFAR_LIKE, None);
    let (x, _) = synthetic_batch(CIFAR_LIKE, 3, 4);
    let run = |training: bool, seed: u64| {
        let mut tape = Tape::new(&store);
        tape.set_training(training);
        tape.set_rng(ChaCha8Rng::seed_from_u64(seed));
        let input = tape.input(x.clone());
        let logits = model.run(&mut tape, input).unwrap();
        tape.value(logits).clone()
    };
    assert_eq!(run(false, 1), run(false, 2), "no randomness in evaluation");
    assert_ne!(run(true, 1), run(true, 2), "dropout draws a new mask");
    // One sample alone gives the same logits as in a batch: running statistics.
    let mut tape = Tape::new(&store);
    tape.set_training(false);
    let input = tape.input(x.slice(ndarray::s![.., ..CIFAR_LIKE.plane()]).to_owned());
    let logits = model.run(&mut tape, input).unwrap();
    let alone = tape.value(logits).column(0).to_owned();
    let batched = run(false, 1).column(0).to_owned();
    assert!((alone - batched).iter().all(|d| d.abs() < 1e-5));
}

#[test]
fn a_reused_workspace_stops_growing_after_the_first_steps() {
    // The trainer keeps one workspace for the whole run: every buffer a step
    // takes must come back, and no more than that.
    let (mut store, model) = build(small_wrn(), CIFAR_LIKE, Some(0.3));
    let (x, labels) = synthetic_batch(CIFAR_LIKE, 4, 5);
    let sgd = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.0,
    };
    let mut workspace = Workspace::new();
    let mut pooled = Vec::new();
    for step in 0..6 {
        let (grads, updates) = {
            let mut tape = Tape::with_workspace(&store, workspace);
            tape.set_rng(ChaCha8Rng::seed_from_u64(step));
            let input = tape.input(x.clone());
            let logits = model.run(&mut tape, input).unwrap();
            let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
            let grads = tape.backward(loss).unwrap();
            let updates = tape.take_state_updates();
            tape.take_value(input);
            workspace = tape.into_workspace();
            (grads, updates)
        };
        sgd.step(&mut store, &grads, 0.01).unwrap();
        store.apply_state_updates(updates);
        pooled.push(workspace.len());
    }
    assert!(pooled[1] > 0);
    assert!(
        pooled[1..].iter().all(|&n| n == pooled[1]),
        "buffers in the pool after each step: {pooled:?}"
    );
}

#[test]
fn convolution_gradient_factors_hold_every_im2col_row() {
    // Asking for the factors after the forward pass (which skipped the rows
    // no filter reads) must still give the whole im2col matrix.
    let (store, model) = build(Architecture::LeNet5, MNIST_LIKE, Some(0.02));
    let conv2 = model.weights()[1];
    let (x, labels) = synthetic_batch(MNIST_LIKE, 3, 6);
    let factors = |before: bool| {
        let mut tape = Tape::new(&store);
        if before {
            tape.keep_gradient_factors(conv2);
        }
        let input = tape.input(x.clone());
        let logits = model.run(&mut tape, input).unwrap();
        if !before {
            tape.keep_gradient_factors(conv2);
        }
        let loss = tape.softmax_cross_entropy(logits, &labels).unwrap();
        tape.backward(loss).unwrap().take_factors(conv2)
    };
    let (early, late) = (factors(true), factors(false));
    assert_eq!(early.len(), 1);
    assert_eq!(early, late);
}

#[test]
fn an_empty_batch_is_an_error_not_a_panic() {
    let store = ParamStore::new();
    let mut tape = Tape::new(&store);
    let empty = tape.input(Array2::zeros((3, 0)));
    for result in [
        tape.max_pool2d(empty, CIFAR_LIKE, 2, 2),
        tape.flatten(empty, CIFAR_LIKE),
        tape.global_avg_pool(empty, CIFAR_LIKE),
    ] {
        let err = result.unwrap_err().to_string();
        assert!(err.contains("empty batch"), "{err}");
    }
}

//! Every op's backward pass against central finite differences.
//!
//! For an op `y = f(inputs, params)` and a fixed random `r` shaped like `y`,
//! the tape's vector–Jacobian product (`backward_with_seed(y, r)`) must equal
//! the numerical derivative of `L = Σ r ⊙ y`, computed as
//! `(L(θ + h) − L(θ − h)) / 2h` with `L` summed in f64. The tapes take their
//! scratch buffers from a poisoned workspace (every buffer starts as NaN), so
//! an op that reads a value it never wrote fails too.

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::autograd::{Activation, BatchNormParams, DenseKernels, Workspace};
use sparsetrain::conv::{ConvGeometry, ImageShape};
use sparsetrain::prelude::*;

const STEP: f64 = 1e-2;

/// [`check`] of a graph on one input, in a sparse weight's two ways to
/// compute: always its sparse kernels, and dense kernels on a scratch copy
/// whatever the density and size.
fn check_both_kernels(store: &ParamStore, x: &Array2<f32>, build: impl Fn(&mut Tape, Var) -> Var) {
    for threshold in [None, Some(DenseKernels::always())] {
        check(store, std::slice::from_ref(x), |tape, v| {
            tape.set_dense_kernels(threshold);
            build(tape, v[0])
        });
    }
}

fn random_array(rng: &mut ChaCha8Rng, shape: (usize, usize)) -> Array2<f32> {
    Array2::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
}

/// Values away from 0, so that no finite-difference step crosses ReLU's kink.
fn away_from_zero(rng: &mut ChaCha8Rng, shape: (usize, usize)) -> Array2<f32> {
    Array2::from_shape_simple_fn(shape, || {
        let magnitude = rng.random_range(0.1f32..1.0);
        if rng.random() { magnitude } else { -magnitude }
    })
}

/// `Σ r ⊙ f(...)` in f64.
fn weighted_sum(
    store: &ParamStore,
    inputs: &[Array2<f32>],
    r: &Array2<f32>,
    build: &dyn Fn(&mut Tape, &[Var]) -> Var,
) -> f64 {
    let mut tape = Tape::with_workspace(store, Workspace::poisoned());
    let vars: Vec<Var> = inputs.iter().map(|x| tape.input(x.clone())).collect();
    let out = build(&mut tape, &vars);
    tape.value(out)
        .iter()
        .zip(r)
        .map(|(&y, &w)| y as f64 * w as f64)
        .sum()
}

fn assert_close(analytic: f32, numeric: f64, what: &str) {
    let (a, n) = (analytic as f64, numeric);
    let tolerance = 5e-4 + 2e-3 * a.abs().max(n.abs());
    assert!(
        (a - n).abs() <= tolerance,
        "{what}: analytic {a}, numeric {n}"
    );
}

/// Checks the gradients of every input and every parameter of `store`.
fn check(store: &ParamStore, inputs: &[Array2<f32>], build: impl Fn(&mut Tape, &[Var]) -> Var) {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    // Every scratch buffer starts as NaN: an op that reads what it did not
    // write fails the check.
    let mut tape = Tape::with_workspace(store, Workspace::poisoned());
    let vars: Vec<Var> = inputs
        .iter()
        .map(|x| tape.input_with_grad(x.clone()))
        .collect();
    let out = build(&mut tape, &vars);
    let r = random_array(&mut rng, tape.value(out).dim());
    let grads = tape.backward_with_seed(out, r.clone()).unwrap();

    for (k, (input, var)) in inputs.iter().zip(&vars).enumerate() {
        let analytic = grads.input(*var).expect("every input gets a gradient");
        for e in 0..input.len() {
            let mut shifted = inputs.to_vec();
            let (up, down) = {
                shifted[k].as_slice_mut().unwrap()[e] += STEP as f32;
                let up = weighted_sum(store, &shifted, &r, &build);
                shifted[k].as_slice_mut().unwrap()[e] -= 2.0 * STEP as f32;
                (up, weighted_sum(store, &shifted, &r, &build))
            };
            let numeric = (up - down) / (2.0 * STEP);
            assert_close(
                analytic.as_slice().unwrap()[e],
                numeric,
                &format!("input {k}, element {e}"),
            );
        }
    }
    for (id, param) in store.iter().filter(|(_, p)| p.trainable) {
        let analytic = grads
            .param(id)
            .expect("every parameter gets a gradient")
            .values();
        assert_eq!(
            analytic.len(),
            param.value.values().len(),
            "gradient of `{}` is aligned",
            param.name
        );
        for (e, &analytic) in analytic.iter().enumerate() {
            let mut shifted = store.clone();
            shifted.get_mut(id).value.values_mut()[e] += STEP as f32;
            let up = weighted_sum(&shifted, inputs, &r, &build);
            shifted.get_mut(id).value.values_mut()[e] -= 2.0 * STEP as f32;
            let down = weighted_sum(&shifted, inputs, &r, &build);
            assert_close(
                analytic,
                (up - down) / (2.0 * STEP),
                &format!("`{}`, value {e}", param.name),
            );
        }
    }
}

#[test]
fn sparse_matmul_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut store = ParamStore::new();
    // 7 × 5 at 40 %: some rows and columns empty, batch 3.
    let w = SparseMatrix::random(7, 5, 14, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap();
    let id = store.add("w", ParamValue::Sparse(w));
    let x = random_array(&mut rng, (5, 3));
    check_both_kernels(&store, &x, |tape, x| tape.matmul(id, x).unwrap());
}

#[test]
fn sparse_matmul_gradients_with_a_wide_batch() {
    // A batch over 16 runs the blocked paths of the kernels (64/32/16 and the overlapping tail).
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut store = ParamStore::new();
    let w = SparseMatrix::random(4, 6, 9, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap();
    let id = store.add("w", ParamValue::Sparse(w));
    let x = random_array(&mut rng, (6, 37));
    check_both_kernels(&store, &x, |tape, x| tape.matmul(id, x).unwrap());
}

#[test]
fn dense_matmul_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut store = ParamStore::new();
    let id = store.add("w", ParamValue::Dense(random_array(&mut rng, (4, 6))));
    let x = random_array(&mut rng, (6, 5));
    check(&store, &[x], |tape, v| tape.matmul(id, v[0]).unwrap());
}

#[test]
fn bias_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut store = ParamStore::new();
    let id = store.add("b", ParamValue::Dense(random_array(&mut rng, (4, 1))));
    let x = random_array(&mut rng, (4, 6));
    check(&store, &[x], |tape, v| tape.add_bias(id, v[0]).unwrap());
}

#[test]
fn relu_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = away_from_zero(&mut rng, (5, 7));
    check(&ParamStore::new(), &[x], |tape, v| tape.relu(v[0]));
}

#[test]
fn softmax_cross_entropy_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let logits = random_array(&mut rng, (4, 6)) * 3.0;
    let labels = [0, 3, 1, 1, 2, 0];
    check(&ParamStore::new(), &[logits], |tape, v| {
        tape.softmax_cross_entropy(v[0], &labels).unwrap()
    });
}

#[test]
fn softmax_cross_entropy_is_stable_for_huge_logits() {
    let logits = ndarray::array![[1000.0f32, -1000.0], [0.0, 1000.0]];
    let store = ParamStore::new();
    let mut tape = Tape::new(&store);
    let x = tape.input_with_grad(logits);
    let loss = tape.softmax_cross_entropy(x, &[0, 0]).unwrap();
    // Column 0: the label's logit is the maximum → loss 0; column 1: it is
    // 2000 below the maximum → loss 2000. The mean is 1000, with no inf or NaN.
    assert!((tape.value(loss)[(0, 0)] - 1000.0).abs() < 1e-3);
    let grads = tape.backward(loss).unwrap();
    assert!(grads.input(x).unwrap().iter().all(|g| g.is_finite()));
}

#[test]
fn fused_linear_layer_gradients() {
    // relu(W·x + b) as one op. The biases are ±0.5..1 and W·x stays within
    // ±0.25, so every output keeps its sign under a finite-difference step
    // and about half the rows sit where ReLU passes nothing.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut store = ParamStore::new();
    let w = SparseMatrix::random(6, 5, 14, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap();
    let sparse = store.add("w", ParamValue::Sparse(w));
    let dense = store.add("v", ParamValue::Dense(random_array(&mut rng, (6, 5))));
    let bias = store.add(
        "b",
        ParamValue::Dense(
            away_from_zero(&mut rng, (6, 1)).mapv(|b| b.signum() * (0.5 + b.abs() / 2.0)),
        ),
    );
    // A batch over 16 runs the kernels' blocked paths and overlapping last vector.
    let x = random_array(&mut rng, (5, 19)) * 0.05;
    for activation in [Activation::Relu, Activation::Identity] {
        check_both_kernels(&store, &x, |tape, x| {
            let h = tape.linear(sparse, Some(bias), x, activation).unwrap();
            // The dense weight (and the bias again) on a second layer, so
            // that every parameter of the store gets a gradient.
            let y = tape.linear(dense, Some(bias), x, activation).unwrap();
            tape.add(h, y).unwrap()
        });
    }
}

#[test]
fn a_whole_layer_stack_gradients() {
    // Ops composed as in LeNet: sparse matmul, bias, ReLU, dense matmul, bias, loss.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut store = ParamStore::new();
    let w1 = store.add(
        "w1",
        ParamValue::Sparse(
            SparseMatrix::random(6, 8, 20, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap(),
        ),
    );
    let b1 = store.add(
        "b1",
        ParamValue::Dense(random_array(&mut rng, (6, 1)) + 2.0),
    );
    let w2 = store.add("w2", ParamValue::Dense(random_array(&mut rng, (3, 6))));
    let b2 = store.add("b2", ParamValue::Dense(random_array(&mut rng, (3, 1))));
    let x = random_array(&mut rng, (8, 4)) * 0.1;
    check(&store, &[x], |tape, v| {
        let h = tape.matmul(w1, v[0]).unwrap();
        let h = tape.add_bias(b1, h).unwrap();
        let h = tape.relu(h);
        let y = tape.matmul(w2, h).unwrap();
        let y = tape.add_bias(b2, y).unwrap();
        tape.softmax_cross_entropy(y, &[0, 2, 1, 2]).unwrap()
    });
}

/// Filters `out × patch` for `geometry`, each weight kept with probability
/// `density`, and every weight of input channel `unread` removed, so the
/// convolution skips that channel.
fn sparse_filters(
    rng: &mut ChaCha8Rng,
    out: usize,
    geometry: &ConvGeometry,
    density: f64,
    unread: Option<usize>,
) -> SparseMatrix {
    let per_channel = geometry.kernel.0 * geometry.kernel.1;
    let dense = Array2::from_shape_fn((out, geometry.patch_len()), |(_, col)| {
        let keep = rng.random::<f64>() < density && Some(col / per_channel) != unread;
        if keep {
            rng.random_range(-1.0f32..1.0)
        } else {
            0.0
        }
    });
    SparseMatrix::from_dense(dense.view())
}

/// A batch of `batch` images of `geometry`'s input, as a tape value.
fn images(rng: &mut ChaCha8Rng, geometry: &ConvGeometry, batch: usize) -> Array2<f32> {
    random_array(
        rng,
        (
            geometry.in_channels,
            batch * geometry.height * geometry.width,
        ),
    )
}

#[test]
fn sparse_conv2d_gradients_with_stride_padding_and_an_unread_channel() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let geometry = ConvGeometry {
        in_channels: 3,
        height: 5,
        width: 6,
        kernel: (3, 2),
        stride: 2,
        padding: 1,
    };
    let w = sparse_filters(&mut rng, 4, &geometry, 0.5, Some(1));
    assert!(w.nnz() > 0);
    let mut store = ParamStore::new();
    let id = store.add("w", ParamValue::Sparse(w));
    let x = images(&mut rng, &geometry, 2);
    check_both_kernels(&store, &x, |tape, x| tape.conv2d(id, x, geometry).unwrap());
}

#[test]
fn sparse_conv2d_gradients_at_full_density_and_empty() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let geometry = ConvGeometry {
        in_channels: 2,
        height: 4,
        width: 4,
        kernel: (3, 3),
        stride: 1,
        padding: 0,
    };
    for density in [1.0, 0.0] {
        let w = sparse_filters(&mut rng, 3, &geometry, density, None);
        let mut store = ParamStore::new();
        let id = store.add("w", ParamValue::Sparse(w));
        let x = images(&mut rng, &geometry, 3);
        check_both_kernels(&store, &x, |tape, x| tape.conv2d(id, x, geometry).unwrap());
    }
}

#[test]
fn dense_conv2d_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let geometry = ConvGeometry {
        in_channels: 2,
        height: 5,
        width: 4,
        kernel: (2, 2),
        stride: 1,
        padding: 1,
    };
    let mut store = ParamStore::new();
    let w = random_array(&mut rng, (3, geometry.patch_len()));
    let id = store.add("w", ParamValue::Dense(w));
    let x = images(&mut rng, &geometry, 2);
    check(&store, &[x], |tape, v| {
        tape.conv2d(id, v[0], geometry).unwrap()
    });
}

#[test]
fn max_pool2d_gradients() {
    // Distinct values 0.05 apart: no finite-difference step changes a maximum.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let shape = ImageShape {
        channels: 2,
        height: 5,
        width: 6,
    };
    let mut values: Vec<f32> = (0..2 * 2 * 30).map(|i| i as f32 * 0.05 - 3.0).collect();
    rand::seq::SliceRandom::shuffle(&mut values[..], &mut rng);
    let x = Array2::from_shape_vec((2, 2 * 30), values).unwrap();
    for (size, stride) in [(2, 2), (3, 1), (2, 3)] {
        check(&ParamStore::new(), std::slice::from_ref(&x), |tape, v| {
            tape.max_pool2d(v[0], shape, size, stride).unwrap()
        });
    }
}

#[test]
fn global_avg_pool_and_flatten_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let shape = ImageShape {
        channels: 3,
        height: 2,
        width: 3,
    };
    let x = random_array(&mut rng, (3, 4 * 6));
    check(&ParamStore::new(), std::slice::from_ref(&x), |tape, v| {
        tape.global_avg_pool(v[0], shape).unwrap()
    });
    check(&ParamStore::new(), &[x], |tape, v| {
        tape.flatten(v[0], shape).unwrap()
    });
}

/// γ, β (trainable) and running statistics (state) for `channels` channels.
fn batch_norm_params(
    rng: &mut ChaCha8Rng,
    store: &mut ParamStore,
    channels: usize,
) -> BatchNormParams {
    BatchNormParams {
        gamma: store.add(
            "gamma",
            ParamValue::Dense(random_array(rng, (channels, 1)) + 1.5),
        ),
        beta: store.add("beta", ParamValue::Dense(random_array(rng, (channels, 1)))),
        running_mean: store.add_state("mean", random_array(rng, (channels, 1))),
        running_var: store.add_state("var", random_array(rng, (channels, 1)) + 2.0),
    }
}

#[test]
fn batch_norm_gradients_in_training_mode() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut store = ParamStore::new();
    let bn = batch_norm_params(&mut rng, &mut store, 3);
    let x = random_array(&mut rng, (3, 8)) * 2.0;
    check(&store, &[x], |tape, v| tape.batch_norm(v[0], &bn).unwrap());
}

#[test]
fn batch_norm_gradients_in_evaluation_mode() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut store = ParamStore::new();
    let bn = batch_norm_params(&mut rng, &mut store, 2);
    let x = random_array(&mut rng, (2, 6));
    check(&store, &[x], |tape, v| {
        tape.set_training(false);
        tape.batch_norm(v[0], &bn).unwrap()
    });
}

#[test]
fn add_and_dropout_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let (a, b) = (
        random_array(&mut rng, (3, 5)),
        random_array(&mut rng, (3, 5)),
    );
    check(&ParamStore::new(), &[a, b], |tape, v| {
        // `a` feeds both summands: its gradients add up.
        let sum = tape.add(v[0], v[1]).unwrap();
        tape.add(sum, v[0]).unwrap()
    });
    let x = random_array(&mut rng, (4, 6));
    check(&ParamStore::new(), &[x], |tape, v| {
        // The same mask for every evaluation: the same random numbers.
        tape.set_rng(ChaCha8Rng::seed_from_u64(3));
        tape.dropout(v[0], 0.4).unwrap()
    });
}

#[test]
fn a_whole_conv_stack_gradients() {
    // As in a small VGG: sparse conv, batch norm, ReLU, max pool, flatten,
    // sparse fully connected layer, loss.
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let geometry = ConvGeometry {
        in_channels: 2,
        height: 6,
        width: 6,
        kernel: (3, 3),
        stride: 1,
        padding: 1,
    };
    let mut store = ParamStore::new();
    let conv = store.add(
        "conv",
        ParamValue::Sparse(sparse_filters(&mut rng, 3, &geometry, 0.6, None)),
    );
    let bn = batch_norm_params(&mut rng, &mut store, 3);
    let fc = store.add(
        "fc",
        ParamValue::Sparse(
            SparseMatrix::random(4, 27, 40, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap(),
        ),
    );
    let x = images(&mut rng, &geometry, 3);
    let pooled = ImageShape {
        channels: 3,
        height: 6,
        width: 6,
    };
    check(&store, &[x], |tape, v| {
        let h = tape.conv2d(conv, v[0], geometry).unwrap();
        let h = tape.batch_norm(h, &bn).unwrap();
        let h = tape.relu(h);
        let h = tape.max_pool2d(h, pooled, 2, 2).unwrap();
        let h = tape
            .flatten(
                h,
                ImageShape {
                    height: 3,
                    width: 3,
                    ..pooled
                },
            )
            .unwrap();
        let y = tape.matmul(fc, h).unwrap();
        tape.softmax_cross_entropy(y, &[0, 3, 1]).unwrap()
    });
}

//! Every op's backward pass against central finite differences.
//!
//! For an op `y = f(inputs, params)` and a fixed random `r` shaped like `y`,
//! the tape's vector–Jacobian product (`backward_with_seed(y, r)`) must equal
//! the numerical derivative of `L = Σ r ⊙ y`, computed as
//! `(L(θ + h) − L(θ − h)) / 2h` with `L` summed in f64.

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::prelude::*;

const STEP: f64 = 1e-2;

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
    let mut tape = Tape::new(store);
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
    let mut tape = Tape::new(store);
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
    for (id, param) in store.iter() {
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
    check(&store, &[x], |tape, v| tape.matmul(id, v[0]).unwrap());
}

#[test]
fn sparse_matmul_gradients_with_a_wide_batch() {
    // A batch over 16 runs the blocked paths of the kernels (64/32/16 and the overlapping tail).
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut store = ParamStore::new();
    let w = SparseMatrix::random(4, 6, 9, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap();
    let id = store.add("w", ParamValue::Sparse(w));
    let x = random_array(&mut rng, (6, 37));
    check(&store, &[x], |tape, v| tape.matmul(id, v[0]).unwrap());
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

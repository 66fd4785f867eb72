//! The sparse kernels against a dense reference, on random shapes and densities
//! from 0 (no entries, every row empty) to 1 (every entry stored).

use ndarray::Array2;
use proptest::prelude::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::sparse::{SparseMatrix, sddmm, spmm, spmm_transposed};

/// A random sparse matrix, an input `x` (cols × batch) and an output
/// gradient `dy` (rows × batch).
#[derive(Debug)]
struct Problem {
    w: SparseMatrix,
    x: Array2<f32>,
    dy: Array2<f32>,
}

fn problem(rows: usize, cols: usize, batch: usize, density: f64, seed: u64) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nnz = ((rows * cols) as f64 * density).round() as usize;
    let w =
        SparseMatrix::random(rows, cols, nnz, &mut rng, |r| r.random_range(-1.0f32..1.0)).unwrap();
    let x = Array2::from_shape_simple_fn((cols, batch), || rng.random_range(-1.0f32..1.0));
    let dy = Array2::from_shape_simple_fn((rows, batch), || rng.random_range(-1.0f32..1.0));
    Problem { w, x, dy }
}

fn assert_all_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
            "{what}[{i}]: {a} vs {e}"
        );
    }
}

/// Runs the three kernels and compares them with dense products of `w.to_dense()`.
fn check_against_dense(p: &Problem) {
    let dense = p.w.to_dense();
    let batch = p.x.ncols();

    let mut y = Array2::from_elem((p.w.rows(), batch), f32::NAN);
    spmm(&p.w, p.x.view(), y.view_mut());
    assert_all_close(
        y.as_slice().unwrap(),
        dense.dot(&p.x).as_slice().unwrap(),
        "W·X",
    );

    let mut dx = Array2::from_elem((p.w.cols(), batch), f32::NAN);
    spmm_transposed(&p.w, p.dy.view(), dx.view_mut());
    assert_all_close(
        dx.as_slice().unwrap(),
        dense.t().dot(&p.dy).as_slice().unwrap(),
        "Wᵀ·dY",
    );

    let mut grad = vec![f32::NAN; p.w.nnz()];
    sddmm(&p.w, p.dy.view(), p.x.view(), &mut grad);
    let full = p.dy.dot(&p.x.t());
    let expected: Vec<f32> = (0..p.w.rows())
        .flat_map(|r| p.w.row(r).0.iter().map(move |&c| (r, c)))
        .map(|(r, c)| full[(r, c)])
        .collect();
    assert_all_close(&grad, &expected, "dY·Xᵀ at the entries");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn kernels_match_dense_products(
        rows in 0usize..24,
        cols in 0usize..24,
        batch in 1usize..90,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        seed in any::<u64>(),
    ) {
        check_against_dense(&problem(rows, cols, batch, density, seed));
    }
}

#[test]
fn zero_entries_give_zero_outputs() {
    let p = problem(5, 7, 20, 0.0, 1);
    assert_eq!(p.w.nnz(), 0);
    check_against_dense(&p);
}

#[test]
fn full_density_matches_dense() {
    let p = problem(9, 11, 33, 1.0, 2);
    assert_eq!(p.w.nnz(), 99);
    check_against_dense(&p);
}

#[test]
fn matrices_with_empty_rows_and_columns() {
    // Row 1 and column 2 hold nothing.
    let dense = ndarray::array![
        [1.0, 2.0, 0.0, 3.0],
        [0.0, 0.0, 0.0, 0.0],
        [4.0, 0.0, 0.0, 5.0]
    ];
    let w = SparseMatrix::from_dense(dense.view());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for batch in [1, 15, 16, 17, 64, 100, 129] {
        let x = Array2::from_shape_simple_fn((4, batch), || rng.random_range(-1.0f32..1.0));
        let dy = Array2::from_shape_simple_fn((3, batch), || rng.random_range(-1.0f32..1.0));
        check_against_dense(&Problem {
            w: w.clone(),
            x,
            dy,
        });
    }
}

#[test]
fn large_problems_split_across_threads_match_dense() {
    // Big enough that every kernel splits its rows among rayon tasks.
    check_against_dense(&problem(300, 400, 100, 0.05, 4));
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let p = problem(300, 784, 100, 0.05, 5);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut y = Array2::zeros((300, 100));
            spmm(&p.w, p.x.view(), y.view_mut());
            let mut dx = Array2::zeros((784, 100));
            spmm_transposed(&p.w, p.dy.view(), dx.view_mut());
            let mut grad = vec![0.0; p.w.nnz()];
            sddmm(&p.w, p.dy.view(), p.x.view(), &mut grad);
            (y, dx, grad)
        })
    };
    let one = run(1);
    for threads in [2, 3, 7] {
        assert!(one == run(threads), "{threads} threads differ from 1");
    }
}

//! The sparse kernels against a dense reference, on random shapes and densities
//! from 0 (no entries, every row empty) to 1 (every entry stored), with every
//! instruction set this CPU has (portable, AVX2, AVX-512).

use ndarray::Array2;
use proptest::prelude::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use sparsetrain::autograd::{DenseKernels, Tape};
use sparsetrain::conv::ConvGeometry;
use sparsetrain::dense;
use sparsetrain::params::{ParamStore, ParamValue};
use sparsetrain::sparse::{
    Epilogue, InstructionSet, SparseMatrix, epilogue_backward_using, sddmm_using, spmm,
    spmm_then_using, spmm_transposed_using, spmm_using,
};

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

/// Random problems up to 23 × 23 (empty shapes included) and batches below
/// `max_batch`, at density 0, 1 or anything between.
fn problems(max_batch: usize) -> impl Strategy<Value = Problem> {
    (
        0usize..24,
        0usize..24,
        1usize..max_batch,
        prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        any::<u64>(),
    )
        .prop_map(|(rows, cols, batch, density, seed)| problem(rows, cols, batch, density, seed))
}

/// The bits of every value, so that `−0 ≠ +0` and NaN equals itself.
fn bits<'a>(values: impl IntoIterator<Item = &'a f32>) -> Vec<u32> {
    values.into_iter().map(|v| v.to_bits()).collect()
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

/// The three kernels' outputs: `W·X`, `Wᵀ·dY` and the gradient at the entries.
type Outputs = (Array2<f32>, Array2<f32>, Vec<f32>);

fn run_kernels(p: &Problem, isa: InstructionSet) -> Outputs {
    let batch = p.x.ncols();
    let mut y = Array2::from_elem((p.w.rows(), batch), f32::NAN);
    spmm_using(isa, &p.w, p.x.view(), y.view_mut());
    let mut dx = Array2::from_elem((p.w.cols(), batch), f32::NAN);
    spmm_transposed_using(isa, &p.w, p.dy.view(), dx.view_mut());
    let mut grad = vec![f32::NAN; p.w.nnz()];
    sddmm_using(isa, &p.w, p.dy.view(), p.x.view(), &mut grad);
    (y, dx, grad)
}

/// Runs the three kernels with every available instruction set, compares
/// them with dense products of `w.to_dense()`, and checks that every
/// instruction set gives bit-identical results.
fn check_against_dense(p: &Problem) {
    let dense = p.w.to_dense();
    let full = p.dy.dot(&p.x.t());
    let expected_grad: Vec<f32> = (0..p.w.rows())
        .flat_map(|r| p.w.row(r).0.iter().map(move |&c| (r, c)))
        .map(|(r, c)| full[(r, c)])
        .collect();
    let portable = run_kernels(p, InstructionSet::Portable);
    for isa in InstructionSet::available() {
        let (y, dx, grad) = run_kernels(p, isa);
        let y_dense = dense.dot(&p.x);
        assert_all_close(y.as_slice().unwrap(), y_dense.as_slice().unwrap(), "W·X");
        let dx_dense = dense.t().dot(&p.dy);
        assert_all_close(
            dx.as_slice().unwrap(),
            dx_dense.as_slice().unwrap(),
            "Wᵀ·dY",
        );
        assert_all_close(&grad, &expected_grad, "dY·Xᵀ at the entries");
        assert!(
            (y, dx, grad) == portable,
            "{isa} differs from the portable kernels"
        );
        check_fused_epilogue(p, isa);
    }
}

/// `relu(W·X + b)` with the bias and ReLU fused into the forward kernel:
/// bit-identical to the product followed by [`Epilogue::apply`] (which is
/// what the separate bias and ReLU ops compute), and close to the dense
/// reference. A bias of ±0.5 puts about half the outputs below zero.
fn check_fused_epilogue(p: &Problem, isa: InstructionSet) {
    let batch = p.x.ncols();
    let bias: Vec<f32> = (0..p.w.rows())
        .map(|r| if r % 2 == 0 { 0.5 } else { -0.5 })
        .collect();
    for relu in [false, true] {
        let epilogue = Epilogue {
            bias: Some(&bias),
            relu,
        };
        let mut fused = Array2::from_elem((p.w.rows(), batch), f32::NAN);
        spmm_then_using(isa, &p.w, p.x.view(), epilogue, fused.view_mut());
        let mut separate = Array2::from_elem((p.w.rows(), batch), f32::NAN);
        spmm_using(isa, &p.w, p.x.view(), separate.view_mut());
        epilogue.apply(separate.view_mut());
        assert!(
            fused == separate,
            "{isa}: the fused epilogue differs (relu {relu})"
        );
        let mut reference = p.w.to_dense().dot(&p.x);
        for (mut row, &b) in reference.rows_mut().into_iter().zip(&bias) {
            row.mapv_inplace(|v| if relu { (v + b).max(0.0) } else { v + b });
        }
        assert_all_close(
            fused.as_slice().unwrap(),
            reference.as_slice().unwrap(),
            "relu(W·X + b)",
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn kernels_match_dense_products(p in problems(300)) {
        check_against_dense(&p);
    }

    /// The epilogue's backward pass, every instruction set, against the
    /// scalar definition: ReLU's mask (NaN and zero outputs block the
    /// gradient) and the bias gradient as `dense::sum` adds a row, to the
    /// bit. Widths cover no whole block of 16, whole blocks, and a tail.
    #[test]
    fn epilogue_backward_matches_the_scalar_definition(
        rows in 0usize..6,
        cols in 0usize..70,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dy = Array2::from_shape_simple_fn((rows, cols), || match rng.random_range(0..8) {
            0 => -0.0,
            1 => f32::NAN,
            _ => rng.random_range(-1.0f32..1.0),
        });
        let y = Array2::from_shape_simple_fn((rows, cols), || match rng.random_range(0..4) {
            0 => 0.0,
            1 => f32::NAN,
            _ => rng.random_range(-1.0f32..1.0),
        });
        let masked = ndarray::Zip::from(&dy).and(&y).map_collect(|&g, &v| if v > 0.0 { g } else { 0.0 });
        for isa in InstructionSet::available() {
            for relu in [false, true] {
                let expected = if relu { &masked } else { &dy };
                let sums: Vec<f32> = expected.rows().into_iter().map(|r| dense::sum(r.as_slice().unwrap())).collect();
                let mut grad = dy.clone();
                let mut bias_grad = vec![f32::NAN; rows];
                epilogue_backward_using(isa, grad.view_mut(), relu.then(|| y.view()), Some(&mut bias_grad));
                prop_assert_eq!(bits(&grad), bits(expected), "{} masked wrongly (relu {})", isa, relu);
                prop_assert_eq!(bits(&bias_grad), bits(&sums), "{}: bias gradient", isa);
                let mut grad = dy.clone();
                epilogue_backward_using(isa, grad.view_mut(), relu.then(|| y.view()), None);
                prop_assert_eq!(bits(&grad), bits(expected), "{} without a bias (relu {})", isa, relu);
            }
        }
    }
}

/// `y = W·x`, `dx` and `dW` of one tape matmul whose sparse weights run
/// dense kernels per `threshold` (`None`: never).
fn tape_outputs(p: &Problem, threshold: Option<DenseKernels>) -> Outputs {
    let mut store = ParamStore::new();
    let id = store.add("w", ParamValue::Sparse(p.w.clone()));
    let mut tape = Tape::new(&store);
    tape.set_dense_kernels(threshold);
    let x = tape.input_with_grad(p.x.clone());
    let y = tape.matmul(id, x).unwrap();
    let value = tape.value(y).clone();
    let grads = tape.backward_with_seed(y, p.dy.clone()).unwrap();
    let dx = grads.input(x).unwrap().clone();
    (value, dx, grads.param(id).unwrap().values().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A sparse layer above the threshold computes with sgemm on a scratch
    /// copy: the same products as its sparse kernels, up to rounding.
    #[test]
    fn dense_kernels_for_a_sparse_weight_match_the_sparse_kernels(p in problems(150)) {
        let (y, dx, dw) = tape_outputs(&p, None);
        let (y_dense, dx_dense, dw_dense) = tape_outputs(&p, Some(DenseKernels::always()));
        assert_all_close(y_dense.as_slice().unwrap(), y.as_slice().unwrap(), "W·X");
        assert_all_close(dx_dense.as_slice().unwrap(), dx.as_slice().unwrap(), "Wᵀ·dY");
        assert_all_close(&dw_dense, &dw, "dW at the entries");
    }

    /// `scatter_into` then `gather_from` gives back the stored values, and
    /// the scattered matrix is zero where nothing is stored.
    #[test]
    fn scatter_and_gather_are_inverse_on_the_structure(p in problems(2)) {
        let mut dense = Array2::from_elem(p.w.shape(), f32::NAN);
        p.w.scatter_into(dense.view_mut());
        let stored = dense.iter().filter(|&&v| v != 0.0).count();
        prop_assert_eq!(stored, p.w.values().iter().filter(|&&v| v != 0.0).count());
        let mut values = vec![f32::NAN; p.w.nnz()];
        p.w.gather_from(dense.view(), &mut values);
        prop_assert_eq!(values.as_slice(), p.w.values());
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
    // Widths of one partial vector, of a four-lane tail alone (4) or after
    // whole vectors (20, 36, 52, 100, 132: AVX2's last chunk or AVX-512's
    // takes it along), of an overlapping last vector, and of several chunks.
    for batch in [
        1, 4, 5, 7, 8, 9, 15, 16, 17, 20, 36, 52, 64, 100, 127, 128, 129, 132, 133, 300,
    ] {
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
    // A convolution's shape: few rows, a wide batch split by columns.
    check_against_dense(&problem(12, 75, 3000, 0.3, 6));
}

#[test]
fn the_plain_kernels_use_the_best_instruction_set() {
    let best = InstructionSet::best();
    assert!(best.is_available());
    assert_eq!(InstructionSet::available().last(), Some(&best));
    let p = problem(40, 60, 100, 0.1, 7);
    let mut y = Array2::zeros((40, 100));
    spmm(&p.w, p.x.view(), y.view_mut());
    assert_eq!(y, run_kernels(&p, best).0);
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    for p in [
        problem(300, 784, 100, 0.05, 5),
        problem(20, 100, 4000, 0.2, 8),
    ] {
        check_thread_counts(&p);
    }
}

fn check_thread_counts(p: &Problem) {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| run_kernels(p, InstructionSet::best()))
    };
    let one = run(1);
    for threads in [2, 3, 7] {
        assert!(one == run(threads), "{threads} threads differ from 1");
    }
}

/// A convolution computed by its definition, in f64: the output, the input
/// gradient and the full weight gradient for the output gradient `dy`.
fn direct_convolution(
    g: &ConvGeometry,
    batch: usize,
    w: &Array2<f32>,
    x: &Array2<f32>,
    dy: &Array2<f32>,
) -> (Array2<f64>, Array2<f64>, Array2<f64>) {
    let (out_h, out_w) = g.output_size().unwrap();
    let (kh, kw) = g.kernel;
    let mut y = Array2::zeros((w.nrows(), batch * out_h * out_w));
    let mut dx = Array2::zeros(x.dim());
    let mut dw = Array2::zeros(w.dim());
    for o in 0..w.nrows() {
        for b in 0..batch {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let out = b * out_h * out_w + oy * out_w + ox;
                    for c in 0..g.in_channels {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * g.stride + i) as isize - g.padding as isize;
                                let ix = (ox * g.stride + j) as isize - g.padding as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= g.height as isize
                                    || ix >= g.width as isize
                                {
                                    continue;
                                }
                                let pixel =
                                    b * g.height * g.width + iy as usize * g.width + ix as usize;
                                let k = (c * kh + i) * kw + j;
                                y[(o, out)] += w[(o, k)] as f64 * x[(c, pixel)] as f64;
                                dx[(c, pixel)] += w[(o, k)] as f64 * dy[(o, out)] as f64;
                                dw[(o, k)] += dy[(o, out)] as f64 * x[(c, pixel)] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn assert_close_to_f64(actual: &Array2<f32>, expected: &Array2<f64>, what: &str) {
    let expected: Vec<f32> = expected.iter().map(|&v| v as f32).collect();
    assert_all_close(actual.as_slice().unwrap(), &expected, what);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// The sparse convolution (im2col, sparse kernels, col2im, with unread
    /// rows and channels skipped) and the dense one against the definition.
    #[test]
    fn convolution_matches_a_direct_sum(
        in_channels in 1usize..4,
        out_channels in 1usize..5,
        (height, width) in (1usize..8, 1usize..8),
        kernel in (1usize..4, 1usize..4),
        stride in 1usize..4,
        padding in 0usize..3,
        batch in 1usize..4,
        density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0],
        unread_channel in proptest::option::of(0usize..3),
        seed in any::<u64>(),
    ) {
        let g = ConvGeometry { in_channels, height, width, kernel, stride, padding };
        prop_assume!(g.output_size().is_ok());
        let (out_h, out_w) = g.output_size().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let per_channel = kernel.0 * kernel.1;
        let dense = Array2::from_shape_fn((out_channels, g.patch_len()), |(_, k)| {
            let kept = rng.random::<f64>() < density && Some(k / per_channel) != unread_channel;
            if kept { rng.random_range(-1.0f32..1.0) } else { 0.0 }
        });
        let x = Array2::from_shape_simple_fn((in_channels, batch * height * width), || rng.random_range(-1.0f32..1.0));
        let dy = Array2::from_shape_simple_fn((out_channels, batch * out_h * out_w), || rng.random_range(-1.0f32..1.0));
        let (y_ref, dx_ref, dw_ref) = direct_convolution(&g, batch, &dense, &x, &dy);
        let sparse = SparseMatrix::from_dense(dense.view());
        let entries: Vec<(usize, usize)> = (0..sparse.rows())
            .flat_map(|r| sparse.row(r).0.iter().map(move |&c| (r, c)).collect::<Vec<_>>())
            .collect();
        for value in [ParamValue::Sparse(sparse), ParamValue::Dense(dense.clone())] {
            let is_sparse = matches!(value, ParamValue::Sparse(_));
            let mut store = ParamStore::new();
            let id = store.add("w", value);
            let mut tape = Tape::new(&store);
            let input = tape.input_with_grad(x.clone());
            let y = tape.conv2d(id, input, g).unwrap();
            assert_close_to_f64(tape.value(y), &y_ref, "forward");
            let grads = tape.backward_with_seed(y, dy.clone()).unwrap();
            assert_close_to_f64(grads.input(input).unwrap(), &dx_ref, "input gradient");
            let dw = grads.param(id).unwrap().values();
            let expected: Vec<f32> = if is_sparse {
                entries.iter().map(|&(r, c)| dw_ref[(r, c)] as f32).collect()
            } else {
                dw_ref.iter().map(|&v| v as f32).collect()
            };
            assert_all_close(dw, &expected, "weight gradient");
        }
    }
}

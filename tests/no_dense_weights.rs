//! Sparse layers never allocate a dense weight matrix while training.
//!
//! A counting allocator records the largest single allocation made while
//! training steps run. LeNet-300-100's first layer is 300 × 784: a dense copy
//! of it (a weight, a gradient, a momentum buffer) would need 940 800 bytes.
//! Outside the window before a mask update (where growth deliberately builds
//! the dense momentum of missing weights, see `sparsity::window`), nothing
//! that large may appear. (A large layer denser than `dense_kernels_above`
//! would be multiplied through a scratch copy of its own size; here only the
//! 10 × 100 output layer gets that dense, and it is too small to switch.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use sparsetrain::prelude::*;

struct LargestAllocation;

static RECORDING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    if RECORDING.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards its arguments unchanged to the system
// allocator, which upholds GlobalAlloc's contract; we only read the sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

const DENSE_FC1_BYTES: usize = 300 * 784 * 4;

/// The recorder sees every thread, so the tests of this file take turns:
/// each holds this for its whole run.
fn one_test_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The largest allocation any thread makes while `f` runs.
fn largest_allocation_while<T>(f: impl FnOnce() -> T) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    RECORDING.store(true, Ordering::Relaxed);
    f();
    RECORDING.store(false, Ordering::Relaxed);
    LARGEST.load(Ordering::Relaxed)
}

fn trainer(sparse: Option<SparseSettings>) -> Trainer {
    let mnist = Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap();
    let config = TrainConfig {
        // One epoch: no mask update follows, so no step is in a growth window.
        epochs: 1,
        train_samples: Some(2_000),
        sparse,
        ..TrainConfig::default()
    };
    Trainer::new(config, &mnist.train, &mnist.test).unwrap()
}

#[test]
fn sparse_training_steps_allocate_nothing_dense_sized() {
    let _turn = one_test_at_a_time();
    let mut sparse = trainer(Some(SparseSettings::default()));
    let largest = largest_allocation_while(|| sparse.train_epoch_unevaluated(&mut ()).unwrap());
    assert!(
        largest < DENSE_FC1_BYTES / 2,
        "largest allocation {largest} bytes, a dense fc1 is {DENSE_FC1_BYTES}"
    );
}

#[test]
fn the_check_sees_a_dense_model() {
    let _turn = one_test_at_a_time();
    // The same measurement on the dense model must see its dense gradient.
    let mut dense = trainer(None);
    let largest = largest_allocation_while(|| dense.train_epoch_unevaluated(&mut ()).unwrap());
    assert!(
        largest >= DENSE_FC1_BYTES,
        "largest allocation {largest} bytes"
    );
}

//! The training hot path allocates nothing at steady state: a counting
//! global allocator (this test binary's own) watches whole epochs of steps.
//!
//! Activations, gradients (given back to the pool after the optimizer step),
//! im2col matrices, pooling indices, the tape's node list and the gradient
//! lists all come back from the workspace, the batch buffers from the last
//! epoch. What remains is once per epoch: the shuffled sample order and its
//! list of batches (about 8 kB for 2 000 samples), so fewer than one
//! allocation per step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use sparsetrain::prelude::*;
use sparsetrain::sparsity::Method;

/// The system allocator, counting every allocation and reallocation.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded unchanged, with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes allocated per step at steady state.
fn allocations_per_step(model: Architecture, samples: usize) -> (f64, f64) {
    let mnist = Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data")).unwrap();
    let config = TrainConfig {
        model,
        epochs: 10,
        train_samples: Some(samples),
        // Fixed masks: a mask update rebuilds the CSR structure, once an
        // epoch, not once a step.
        sparse: Some(SparseSettings::method(Method::Static, 0.05)),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test).unwrap();
    // Warm up: the buffer pool fills during the first epoch.
    trainer.train_epoch_unevaluated(&mut ()).unwrap();
    let before = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let epochs = 2;
    for _ in 0..epochs {
        trainer.train_epoch_unevaluated(&mut ()).unwrap();
    }
    let steps = (epochs * samples.div_ceil(100)) as f64;
    let all = ALLOCATIONS.load(Ordering::Relaxed) - before.0;
    let bytes = BYTES.load(Ordering::Relaxed) - before.1;
    (all as f64 / steps, bytes as f64 / steps)
}

#[test]
fn a_steady_state_training_step_allocates_nothing() {
    for (model, samples) in [("lenet300-100", 2_000), ("lenet5", 500)] {
        let (all, bytes) = allocations_per_step(model.parse().unwrap(), samples);
        eprintln!("{model}: {all:.2} allocations, {bytes:.0} bytes per step");
        // Two allocations per epoch (the order and its list of batches)
        // over 5 or 20 steps; one LeNet-300-100 step's arrays alone are over
        // a megabyte.
        assert!(all < 1.0, "{model}: {all} allocations per step");
        assert!(
            bytes <= 4_000.0,
            "{model}: {bytes} bytes allocated per step"
        );
    }
}

//! The training hot path allocates no buffers at steady state: a counting
//! global allocator (this test binary's own) watches whole epochs of steps.
//!
//! Activations, gradients (given back to the pool after the optimizer step)
//! and im2col matrices are reused. What remains for LeNet-300-100 is a dozen
//! small bookkeeping allocations a step (the tape's node list, the gradient
//! lists), under 50 kB in all; the test bounds the count and the bytes.

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
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
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
fn a_steady_state_training_step_allocates_no_buffers() {
    // Bytes per step allowed. LeNet-5 still allocates about 1.6 MB a step
    // (pooling and convolution bookkeeping outside the pool): a known gap,
    // bounded here so that it cannot grow unnoticed.
    for (model, samples, max_bytes) in [("lenet300-100", 2_000, 1e5), ("lenet5", 500, 2.5e6)] {
        let (all, bytes) = allocations_per_step(model.parse().unwrap(), samples);
        eprintln!("{model}: {all:.1} allocations, {bytes:.0} bytes per step");
        // One LeNet-300-100 step's arrays are over a megabyte (the input
        // batch alone is 313 600 bytes); what it still allocates is bookkeeping.
        assert!(
            bytes <= max_bytes,
            "{model}: {bytes} bytes allocated per step"
        );
        assert!(all <= 40.0, "{model}: {all} allocations per step");
    }
}

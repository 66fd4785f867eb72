//! What the examples share: their two optional arguments, the bundled data,
//! and how they report.

// Each example compiles its own copy of this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;

use sparsetrain::data::Mnist;
use sparsetrain::train::{EpochStats, Observer, Trainer};

/// `[density] [epochs]` from the command line, with defaults.
pub fn density_and_epochs(density: f64, epochs: usize) -> Result<(f64, usize), String> {
    let mut args = std::env::args().skip(1);
    let density = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("density `{s}` is not a number"))?,
        None => density,
    };
    let epochs = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("epochs `{s}` is not a whole number"))?,
        None => epochs,
    };
    Ok((density, epochs))
}

/// The MNIST files in the repository's `data/`.
pub fn bundled_mnist() -> sparsetrain::Result<Mnist> {
    Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data"))
}

/// One line per epoch.
pub fn print_epoch(s: &EpochStats) {
    println!(
        "epoch {:>3}: loss {:.4}, validation {:.2} %, test {:.2} %, {:.2} s",
        s.epoch,
        s.train_loss,
        100.0 * s.validation_accuracy.unwrap_or(0.0),
        100.0 * s.test_accuracy,
        s.seconds
    );
}

/// Runs `trainer` to the end with `observer` and prints the test error.
pub fn train_to_the_end(
    trainer: &mut Trainer,
    observer: &mut (impl Observer + Send),
) -> sparsetrain::Result<()> {
    let summary = trainer.run(observer)?;
    println!(
        "test error {:.2} % after {} epochs",
        100.0 * summary.test_error,
        summary.epochs
    );
    Ok(())
}

//! Train LeNet-300-100 on MNIST with sparse momentum through the library API,
//! printing one line per epoch and each layer's density after every mask update.
//!
//! `cargo run --release --example lenet300_mnist -- [density] [epochs]`
//! (defaults: 0.02 and 10).

mod common;

use sparsetrain::prelude::*;
use sparsetrain::sparsity::MaskUpdate;
use sparsetrain::train::EpochStats;

/// Prints what training reports.
struct Report;

impl Observer for Report {
    fn on_mask_update(&mut self, update: &MaskUpdate) {
        let densities: Vec<String> = update
            .layers
            .iter()
            .map(|l| {
                format!(
                    "{} {:.1}%",
                    l.name,
                    100.0 * l.nnz_after as f64 / l.size as f64
                )
            })
            .collect();
        println!(
            "  masks updated (prune rate {:.3}): {}",
            update.prune_rate,
            densities.join(", ")
        );
    }

    fn on_epoch(&mut self, s: &EpochStats) {
        common::print_epoch(s);
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (density, epochs) = common::density_and_epochs(0.02, 10)?;
    let mnist = common::bundled_mnist()?;
    let config = TrainConfig {
        epochs,
        sparse: Some(SparseSettings {
            density,
            ..SparseSettings::default()
        }),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
    for layer in trainer.layers() {
        println!(
            "{}: {}×{}, {} weights stored",
            layer.name, layer.shape.0, layer.shape.1, layer.nnz
        );
    }
    common::train_to_the_end(&mut trainer, &mut Report)?;
    Ok(())
}

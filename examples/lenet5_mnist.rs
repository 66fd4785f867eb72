//! Train LeNet-5-Caffe on MNIST with every convolution and fully connected
//! weight sparse, printing after each mask update how many filters each layer
//! has emptied and how many input channels it no longer reads: the channels
//! the engine skips.
//!
//! `cargo run --release --example lenet5_mnist -- [density] [epochs]`
//! (defaults: 0.05 and 10).

mod common;

use sparsetrain::prelude::*;
use sparsetrain::sparsity::MaskUpdate;
use sparsetrain::train::EpochStats;

/// Prints what training reports.
struct Report;

impl Observer for Report {
    fn on_mask_update(&mut self, update: &MaskUpdate) {
        println!("  masks updated (prune rate {:.3}):", update.prune_rate);
        for l in &update.layers {
            let c = &l.channels;
            println!(
                "    {:<13} {:>6.2}% · empty filters {:>3}/{:<3} · unread inputs {:>3}/{:<3} · ×{:.2} from skipped channels",
                l.name,
                100.0 * l.nnz_after as f64 / l.size as f64,
                c.empty_outputs,
                c.outputs,
                c.unread_inputs,
                c.inputs,
                c.implied_speedup()
            );
        }
    }

    fn on_epoch(&mut self, s: &EpochStats) {
        common::print_epoch(s);
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (density, epochs) = common::density_and_epochs(0.05, 10)?;
    let mnist = common::bundled_mnist()?;
    let config = TrainConfig {
        model: Architecture::LeNet5,
        epochs,
        sparse: Some(SparseSettings::method(Method::SparseMomentum, density)),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, &mnist.train, &mnist.test)?;
    common::train_to_the_end(&mut trainer, &mut Report)?;
    Ok(())
}

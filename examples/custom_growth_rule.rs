//! A new growth rule in ten lines, trained on MNIST.
//!
//! `FewestConnectionsFirst` gives each new weight to the neuron (row) that has
//! the fewest incoming connections, at a random free input, so no neuron is
//! left starved. Everything else is sparse momentum: magnitude pruning,
//! momentum redistribution, the cosine prune-rate schedule.
//!
//! `cargo run --release --example custom_growth_rule -- [density] [epochs]`
//! (defaults: 0.02 and 10).

mod common;

use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use sparsetrain::prelude::*;
use sparsetrain::sparsity::{GrowthRule, LayerView, Vacancies};

/// Grow where a neuron has the fewest connections.
struct FewestConnectionsFirst;

impl GrowthRule for FewestConnectionsFirst {
    fn select(
        &self,
        layer: &LayerView,
        vacancies: &Vacancies,
        count: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<(usize, usize)> {
        let rows = layer.weights.rows();
        // Each row's free inputs, in random order, and how many inputs it has now.
        let mut free: Vec<Vec<usize>> = (0..rows).map(|r| vacancies.columns_in_row(r)).collect();
        free.iter_mut().for_each(|columns| columns.shuffle(rng));
        let mut fan_in: Vec<usize> = free
            .iter()
            .map(|f| layer.weights.cols() - f.len())
            .collect();
        let mut grown = Vec::with_capacity(count);
        while grown.len() < count {
            let row = (0..rows)
                .filter(|&r| !free[r].is_empty())
                .min_by_key(|&r| fan_in[r])
                .expect("count ≤ free positions");
            grown.push((row, free[row].pop().expect("the row has a free input")));
            fan_in[row] += 1;
        }
        grown
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (density, epochs) = common::density_and_epochs(0.02, 10)?;
    let mnist = common::bundled_mnist()?;
    let config = TrainConfig {
        epochs,
        sparse: Some(SparseSettings::method(Method::SparseMomentum, density)),
        ..TrainConfig::default()
    };
    // Start from sparse momentum's rules and swap in the new growth rule.
    let mut rules = config
        .sparse
        .as_ref()
        .and_then(|s| s.updates)
        .expect("sparse momentum updates masks")
        .rules(config.momentum);
    rules.growth = Box::new(FewestConnectionsFirst);
    let mut trainer = Trainer::with_rules(config, &mnist.train, &mnist.test, rules)?;
    let summary = trainer.run(&mut ())?;
    println!(
        "fewest-connections-first growth at {:.0} % density: test error {:.2} % after {} epochs ({:.1} s)",
        100.0 * density,
        100.0 * summary.test_error,
        summary.epochs,
        summary.seconds
    );
    Ok(())
}

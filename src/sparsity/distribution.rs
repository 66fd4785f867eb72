//! How many weights each sparse layer starts with.
//!
//! The overall density `d` fixes the total, `round(d · N)` of the `N` weights
//! of all layers, exactly. A distribution decides how it is shared:
//!
//! | distribution | layer `ℓ`'s density |
//! |---|---|
//! | uniform | `d` for every layer |
//! | Erdős–Rényi (SET) | `ε · (n_in + n_out) / (n_in · n_out)` |
//! | Erdős–Rényi-Kernel (RigL) | `ε · Σ dims / Π dims` (kernel dimensions included) |
//!
//! `ε` is solved so the total comes out right. A layer whose density would
//! exceed 1 is made dense and `ε` is solved again for the others. Layers can
//! also be given a density of their own (an override); the others share what
//! is left. Counts are apportioned by largest remainder, so they are whole
//! numbers that add up to the total exactly.

use super::apportion::apportion;
use crate::error::{Error, Result};

/// How the overall density is shared among layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Every layer at the overall density (sparse momentum's reference setup).
    #[default]
    Uniform,
    /// Density ∝ `(n_in + n_out) / (n_in · n_out)`: small layers denser (SET).
    ErdosRenyi,
    /// Density ∝ `Σ dims / Π dims` over all weight dimensions (RigL).
    ErdosRenyiKernel,
}

/// A weight matrix to size: its name and dimensions, output first
/// (`[out, in]`, or `[out, in, kh, kw]` for a convolution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerShape {
    /// The parameter name, e.g. `fc1.weight`.
    pub name: String,
    /// The weight's dimensions.
    pub dims: Vec<usize>,
}

impl LayerShape {
    fn size(&self) -> usize {
        self.dims.iter().product()
    }

    /// The distribution's unnormalised density for this layer.
    fn raw_density(&self, distribution: Distribution) -> f64 {
        let size = self.size().max(1) as f64;
        match distribution {
            Distribution::Uniform => 1.0,
            Distribution::ErdosRenyi => {
                let (out, inputs) = (
                    self.dims[0] as f64,
                    self.dims[1..2].iter().product::<usize>() as f64,
                );
                (out + inputs) / (out * inputs).max(1.0)
            }
            Distribution::ErdosRenyiKernel => self.dims.iter().sum::<usize>() as f64 / size,
        }
    }
}

/// Checks that `density` is a fraction of weights to keep: in (0, 1].
pub fn check_density(density: f64) -> Result<()> {
    if density > 0.0 && density <= 1.0 {
        Ok(())
    } else {
        Err(Error::config(
            "density",
            format!("{density} is not in (0, 1]: it is the fraction of weights kept"),
        ))
    }
}

/// The initial number of weights of each layer.
///
/// `overrides` gives some layers (by name) a density of their own. If every
/// layer is overridden, the total is what the overrides give.
pub fn layer_counts(
    layers: &[LayerShape],
    density: f64,
    distribution: Distribution,
    overrides: &[(String, f64)],
) -> Result<Vec<usize>> {
    check_density(density)?;
    let mut fixed: Vec<Option<usize>> = vec![None; layers.len()];
    for (name, layer_density) in overrides {
        let Some(i) = layers.iter().position(|l| &l.name == name) else {
            let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
            return Err(Error::config(
                "layer-density",
                format!(
                    "there is no layer `{name}`; the layers are {}",
                    names.join(", ")
                ),
            ));
        };
        if !(*layer_density > 0.0 && *layer_density <= 1.0) {
            return Err(Error::config(
                "layer-density",
                format!("{layer_density} for `{name}` is not in (0, 1]"),
            ));
        }
        fixed[i] = Some((layer_density * layers[i].size() as f64).round() as usize);
    }
    let sizes: Vec<usize> = layers.iter().map(LayerShape::size).collect();
    let free: Vec<usize> = (0..layers.len()).filter(|&i| fixed[i].is_none()).collect();
    if free.is_empty() {
        return Ok(fixed.into_iter().map(|c| c.unwrap_or(0)).collect());
    }
    let total = (density * sizes.iter().sum::<usize>() as f64).round() as usize;
    let fixed_total: usize = fixed.iter().flatten().sum();
    let free_size: usize = free.iter().map(|&i| sizes[i]).sum();
    let Some(budget) = total.checked_sub(fixed_total).filter(|&b| b <= free_size) else {
        return Err(Error::config(
            "layer-density",
            format!(
                "the overridden layers hold {fixed_total} weights; with {total} in all at density {density}, \
                 the other layers (of {free_size} weights) would need {}",
                total as i64 - fixed_total as i64
            ),
        ));
    };

    // Solve ε, making dense every layer that would exceed density 1.
    let raw: Vec<f64> = layers.iter().map(|l| l.raw_density(distribution)).collect();
    let mut dense = vec![false; layers.len()];
    loop {
        let dense_total: usize = free.iter().filter(|&&i| dense[i]).map(|&i| sizes[i]).sum();
        let weighted: f64 = free
            .iter()
            .filter(|&&i| !dense[i])
            .map(|&i| raw[i] * sizes[i] as f64)
            .sum();
        let epsilon = budget.saturating_sub(dense_total) as f64 / weighted.max(f64::MIN_POSITIVE);
        let overflowing: Vec<usize> = free
            .iter()
            .copied()
            .filter(|&i| !dense[i] && epsilon * raw[i] > 1.0)
            .collect();
        if overflowing.is_empty() {
            break;
        }
        overflowing.into_iter().for_each(|i| dense[i] = true);
    }
    let mut counts: Vec<usize> = fixed.iter().map(|c| c.unwrap_or(0)).collect();
    let dense_total: usize = free.iter().filter(|&&i| dense[i]).map(|&i| sizes[i]).sum();
    let rest: Vec<usize> = free.iter().copied().filter(|&i| !dense[i]).collect();
    let shares: Vec<f64> = rest.iter().map(|&i| raw[i] * sizes[i] as f64).collect();
    let capacity: Vec<usize> = rest.iter().map(|&i| sizes[i]).collect();
    let parts = apportion(&shares, budget.saturating_sub(dense_total), &capacity)
        .expect("the budget fits: it never exceeds the free layers' size");
    for (&i, part) in rest.iter().zip(parts) {
        counts[i] = part;
    }
    for &i in free.iter().filter(|&&i| dense[i]) {
        counts[i] = sizes[i];
    }
    Ok(counts)
}

named_choices!(
    Distribution,
    "distribution",
    [
        ("uniform", Distribution::Uniform),
        ("er", Distribution::ErdosRenyi),
        ("erk", Distribution::ErdosRenyiKernel),
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn lenet() -> Vec<LayerShape> {
        [("fc1", 300, 784), ("fc2", 100, 300), ("fc3", 10, 100)]
            .into_iter()
            .map(|(name, out, inputs)| LayerShape {
                name: format!("{name}.weight"),
                dims: vec![out, inputs],
            })
            .collect()
    }

    #[test]
    fn uniform_counts_are_exact() {
        let counts = layer_counts(&lenet(), 0.05, Distribution::Uniform, &[]).unwrap();
        assert_eq!(counts, vec![11760, 1500, 50]);
        let counts = layer_counts(&lenet(), 0.02, Distribution::Uniform, &[]).unwrap();
        assert_eq!(counts.iter().sum::<usize>(), 5324);
        let full = layer_counts(&lenet(), 1.0, Distribution::Uniform, &[]).unwrap();
        assert_eq!(full, vec![235200, 30000, 1000]);
    }

    #[test]
    fn erdos_renyi_follows_its_formula() {
        let layers = lenet();
        let counts = layer_counts(&layers, 0.05, Distribution::ErdosRenyi, &[]).unwrap();
        assert_eq!(counts.iter().sum::<usize>(), 13310, "the total is exact");
        // Density ∝ (n_in + n_out)/(n_in·n_out): density ratios match the formula.
        let density = |i: usize| counts[i] as f64 / layers[i].size() as f64;
        let raw = |i: usize| layers[i].raw_density(Distribution::ErdosRenyi);
        let ratio = (density(0) / density(1)) / (raw(0) / raw(1));
        assert!(
            (ratio - 1.0).abs() < 1e-3,
            "fc1/fc2 density ratio off by {ratio}"
        );
        assert!(density(2) > density(1) && density(1) > density(0));
    }

    #[test]
    fn a_layer_that_would_exceed_density_one_becomes_dense() {
        // At 20 % the ER formula wants fc3 above 100 %: it is made dense and the
        // others rescaled, the total still exact.
        let counts = layer_counts(&lenet(), 0.2, Distribution::ErdosRenyi, &[]).unwrap();
        assert_eq!(counts[2], 1000);
        assert_eq!(counts.iter().sum::<usize>(), 53240);
    }

    #[test]
    fn erk_equals_er_for_fully_connected_layers_and_counts_kernels() {
        let fc = layer_counts(&lenet(), 0.05, Distribution::ErdosRenyiKernel, &[]).unwrap();
        assert_eq!(
            fc,
            layer_counts(&lenet(), 0.05, Distribution::ErdosRenyi, &[]).unwrap()
        );
        let conv = LayerShape {
            name: "conv".into(),
            dims: vec![50, 20, 5, 5],
        };
        assert!((conv.raw_density(Distribution::ErdosRenyiKernel) - 80.0 / 25000.0).abs() < 1e-12);
    }

    #[test]
    fn overrides_fix_a_layer_and_the_rest_share_what_is_left() {
        let overrides = [("fc3.weight".to_string(), 1.0)];
        let counts = layer_counts(&lenet(), 0.05, Distribution::Uniform, &overrides).unwrap();
        assert_eq!(counts[2], 1000);
        assert_eq!(counts.iter().sum::<usize>(), 13310);
        // fc1 and fc2 at the same density.
        let d1 = counts[0] as f64 / 235200.0;
        let d2 = counts[1] as f64 / 30000.0;
        assert!((d1 - d2).abs() < 1e-4);
    }

    #[test]
    fn impossible_or_unknown_overrides_are_errors() {
        let missing = [("fc9.weight".to_string(), 0.5)];
        let err = layer_counts(&lenet(), 0.05, Distribution::Uniform, &missing).unwrap_err();
        assert!(
            err.to_string().contains("fc9.weight") && err.to_string().contains("fc1.weight"),
            "{err}"
        );
        let too_many = [("fc1.weight".to_string(), 1.0)];
        assert!(layer_counts(&lenet(), 0.05, Distribution::Uniform, &too_many).is_err());
        let bad = [("fc1.weight".to_string(), 0.0)];
        assert!(layer_counts(&lenet(), 0.05, Distribution::Uniform, &bad).is_err());
    }

    #[test]
    fn densities_outside_the_unit_interval_are_refused() {
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let err = layer_counts(&lenet(), bad, Distribution::Uniform, &[]).unwrap_err();
            assert!(err.to_string().contains("density"), "{err}");
        }
    }
}

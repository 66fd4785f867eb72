//! How many weights each sparse layer starts with.

use super::apportion::apportion;
use crate::error::{Error, Result};

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

/// The initial non-zero count of each layer (given as `(rows, cols)`) for an
/// overall density `density`, every layer at the same density.
///
/// The counts are exact, not Bernoulli draws: they sum to
/// `round(density · total weights)`, shared among the layers in proportion to
/// their sizes by largest remainder, so every layer's density is `density` up
/// to one weight.
pub fn uniform_counts(shapes: &[(usize, usize)], density: f64) -> Result<Vec<usize>> {
    check_density(density)?;
    let sizes: Vec<usize> = shapes.iter().map(|&(r, c)| r * c).collect();
    let total: usize = sizes.iter().sum();
    let target = ((density * total as f64).round() as usize).min(total);
    let shares: Vec<f64> = sizes.iter().map(|&s| s as f64).collect();
    Ok(apportion(&shares, target, &sizes).expect("the target never exceeds the total size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet_counts_are_exact() {
        let shapes = [(300, 784), (100, 300), (10, 100)];
        let counts = uniform_counts(&shapes, 0.05).unwrap();
        assert_eq!(counts, vec![11760, 1500, 50]);
        let counts = uniform_counts(&shapes, 0.02).unwrap();
        assert_eq!(counts.iter().sum::<usize>(), 5324);
        assert_eq!(
            uniform_counts(&shapes, 1.0).unwrap(),
            vec![235200, 30000, 1000]
        );
    }

    #[test]
    fn densities_outside_the_unit_interval_are_refused() {
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let err = uniform_counts(&[(2, 2)], bad).unwrap_err();
            assert!(err.to_string().contains("density"), "{err}");
        }
    }
}

//! Summary statistics of repeated runs, as the reference library's log
//! aggregator reports them.

/// Mean, spread and a 95 % confidence interval of a sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// Sample standard deviation (`n − 1` in the denominator; 0 for one value).
    pub std_dev: f64,
    /// Standard error of the mean, `std_dev / √n`.
    pub standard_error: f64,
    /// `mean ± 1.96 · standard_error`: the normal-approximation 95 % interval
    /// the reference reports. For very few runs a Student-t interval is wider
    /// (×2.2 for 3 runs).
    pub ci95: (f64, f64),
}

impl Summary {
    /// The summary of `values`, or `None` if there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let std_dev = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let standard_error = std_dev / (n as f64).sqrt();
        Some(Summary {
            n,
            mean,
            median,
            std_dev,
            standard_error,
            ci95: (mean - 1.96 * standard_error, mean + 1.96 * standard_error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        let s = Summary::of(&[1.0, 2.0, 6.0]).unwrap();
        assert_eq!((s.n, s.mean, s.median), (3, 3.0, 2.0));
        // Sample variance: (4 + 1 + 9) / 2 = 7.
        assert!((s.std_dev - 7f64.sqrt()).abs() < 1e-12);
        assert!((s.standard_error - (7.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.ci95.1 - s.mean - 1.96 * s.standard_error).abs() < 1e-12);
        assert_eq!(Summary::of(&[5.0]).unwrap().std_dev, 0.0);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    }
}

//! Confidence intervals for accuracies.

/// z for a two-sided 95% normal interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval `(low, high)` of a proportion with `successes` of `trials`, at normal
/// quantile `z` (Wilson 1927). Unlike the Wald interval it stays inside [0, 1] and is not empty at 0
/// or `trials` successes. `(0, 1)` when there are no trials.
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> (f64, f64) {
    if trials == 0 {
        return (0.0, 1.0);
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        // 8 of 10 at z = 1.96: center (0.8 + 0.19208)/1.38416, half 1.96/1.38416·sqrt(0.016 + 0.009604).
        let (low, high) = wilson_interval(8, 10, 1.96);
        assert!((low - 0.490_16).abs() < 1e-4, "{low}");
        assert!((high - 0.943_32).abs() < 1e-4, "{high}");
        // No successes: the lower end is 0 and the upper end z²/(n + z²).
        let (low, high) = wilson_interval(0, 20, Z_95);
        assert_eq!(low, 0.0);
        assert!((high - Z_95 * Z_95 / (20.0 + Z_95 * Z_95)).abs() < 1e-12);
        let (low, high) = wilson_interval(20, 20, Z_95);
        assert!((low - 20.0 / (20.0 + Z_95 * Z_95)).abs() < 1e-12);
        assert!((high - 1.0).abs() < 1e-12);
    }
}

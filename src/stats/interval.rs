//! Confidence intervals for accuracies and for paired differences of per-byte rates.

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

/// A 95%-style interval for the difference of two accuracies measured on the *same* items:
/// `gained` items only the new mode gets right, `lost` items only the baseline gets right, of
/// `items`. Agresti–Min (2005): add ½ to each cell of the paired 2×2 table, then the Wald interval
/// of (gained − lost)/n. Pairing removes the items both modes get right or wrong from the noise,
/// so the interval is far narrower than two independent Wilson intervals. `(−1, 1)` with no items.
pub fn paired_difference_interval(gained: u64, lost: u64, items: u64, z: f64) -> (f64, f64) {
    if items == 0 {
        return (-1.0, 1.0);
    }
    let n = items as f64 + 2.0;
    let (gained, lost) = (gained as f64 + 0.5, lost as f64 + 0.5);
    let difference = (gained - lost) / n;
    let variance = ((gained + lost) - (gained - lost).powi(2) / n) / (n * n);
    let half = z * variance.max(0.0).sqrt();
    ((difference - half).max(-1.0), (difference + half).min(1.0))
}

/// [`paired_difference_interval`] from `(new mode correct, baseline correct)` per item.
pub fn paired_interval_of(pairs: impl IntoIterator<Item = (bool, bool)>, z: f64) -> (f64, f64) {
    let (mut gained, mut lost, mut items) = (0, 0, 0);
    for (now, before) in pairs {
        items += 1;
        match (now, before) {
            (true, false) => gained += 1,
            (false, true) => lost += 1,
            _ => {}
        }
    }
    paired_difference_interval(gained, lost, items, z)
}

/// A 95% interval for the difference of two per-byte rates (bits per byte) measured on the same
/// documents: `differences[d]` is document d's bits under the new mode minus the baseline's,
/// `bytes[d]` its bytes. The difference is the ratio Σ differences / Σ bytes; documents are the
/// independent units, so its standard error is the ratio estimator's (delta method:
/// √(n/(n−1) · Σ (differences − ratio · bytes)²) / Σ bytes), with a Student t quantile on n − 1
/// degrees of freedom. `(NaN, NaN)` with fewer than two documents or no bytes.
pub fn paired_ratio_interval(differences: &[f64], bytes: &[f64]) -> (f64, f64) {
    let n = differences.len();
    let total_bytes: f64 = bytes.iter().sum();
    if n < 2 || n != bytes.len() || total_bytes <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let ratio = differences.iter().sum::<f64>() / total_bytes;
    let squares: f64 = differences
        .iter()
        .zip(bytes)
        .map(|(d, b)| (d - ratio * b).powi(2))
        .sum();
    let nf = n as f64;
    let standard_error = (nf / (nf - 1.0) * squares).sqrt() / total_bytes;
    let t = crate::stats::multiplicity::student_t_quantile(0.975, nf - 1.0);
    (ratio - t * standard_error, ratio + t * standard_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one byte per document the ratio is the mean difference and the interval the one-sample
    /// t interval: 2.5 ± t(0.975, 3) · sd/√4 for differences 1, 2, 3, 4 (t = 3.1824).
    #[test]
    fn a_paired_ratio_with_equal_bytes_is_the_t_interval_of_the_mean() {
        let (low, high) = paired_ratio_interval(&[1.0, 2.0, 3.0, 4.0], &[1.0; 4]);
        let half = 3.182_446 * (5.0_f64 / 3.0).sqrt() / 2.0;
        assert!((low - (2.5 - half)).abs() < 1e-4 && (high - (2.5 + half)).abs() < 1e-4);
        // Scaling every document's bytes scales the ratio and its interval alike.
        let (l2, h2) = paired_ratio_interval(&[1.0, 2.0, 3.0, 4.0], &[2.0; 4]);
        assert!((l2 - low / 2.0).abs() < 1e-9 && (h2 - high / 2.0).abs() < 1e-9);
        assert!(paired_ratio_interval(&[1.0], &[1.0]).0.is_nan());
    }

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

    #[test]
    fn paired_difference_matches_the_agresti_min_closed_form() {
        // 7 gained, 3 lost of 100: cells 7.5 and 3.5, n 102, Δ 4/102,
        // var (11 − 16/102)/102² → half-width 1.96·sqrt(var).
        let (low, high) = paired_difference_interval(7, 3, 100, 1.96);
        let var: f64 = (11.0 - 16.0 / 102.0) / (102.0 * 102.0);
        assert!((low - (4.0 / 102.0 - 1.96 * var.sqrt())).abs() < 1e-12);
        assert!((high - (4.0 / 102.0 + 1.96 * var.sqrt())).abs() < 1e-12);
        // Identical modes: centred on 0, and narrower than the Wilson interval of either accuracy.
        let (low, high) = paired_difference_interval(0, 0, 100, Z_95);
        assert!((low + high).abs() < 1e-12 && high < 0.03);
        assert_eq!(paired_difference_interval(0, 0, 0, Z_95), (-1.0, 1.0));
        // From per-item outcomes: 2 gained, 1 lost, 1 both right, of 4.
        let pairs = [(true, false), (true, false), (false, true), (true, true)];
        assert_eq!(
            paired_interval_of(pairs, Z_95),
            paired_difference_interval(2, 1, 4, Z_95)
        );
    }
}

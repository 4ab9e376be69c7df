//! Quantiles for two-sided tests over a family of rows: the standard normal and Student-t
//! quantiles, and the Bonferroni critical value that holds a family-wise error rate (theory/
//! verification: the init rows' prediction checks).
//!
//! Legend: p = lower-tail probability, ν = degrees of freedom, N = tests in the family,
//! α = family-wise level.

/// The standard normal quantile Φ⁻¹(p) for p in (0, 1) (Acklam's rational approximation,
/// relative error below 1.2e-9); ±∞ at 0 and 1, NaN outside.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        let t = (-2.0 * q.ln()).sqrt();
        (((((C[0] * t + C[1]) * t + C[2]) * t + C[3]) * t + C[4]) * t + C[5])
            / ((((D[0] * t + D[1]) * t + D[2]) * t + D[3]) * t + 1.0)
    };
    if p < LOW {
        tail(p)
    } else if p > 1.0 - LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Fewest degrees of freedom the Cornish–Fisher expansion is used for; below, the quantile is
/// found on the distribution function itself.
const EXPANSION_MIN_DEGREES: f64 = 15.0;

/// Student-t quantile with ν degrees of freedom. For ν ≥ 15 by the Cornish–Fisher expansion in
/// 1/ν about the normal quantile (Abramowitz & Stegun 26.7.5, four terms; checked against the
/// integrated density, tests below); for 1 ≤ ν < 15, where the expansion drifts, by bisection on
/// the distribution function ([`t_quantile_by_bisection`]). NaN for ν < 1.
pub fn student_t_quantile(p: f64, degrees_of_freedom: f64) -> f64 {
    if degrees_of_freedom < EXPANSION_MIN_DEGREES {
        return t_quantile_by_bisection(p, degrees_of_freedom);
    }
    let z = normal_quantile(p);
    if !z.is_finite() || degrees_of_freedom.is_infinite() {
        return z;
    }
    let nu = degrees_of_freedom;
    let z2 = z * z;
    let g1 = (z2 + 1.0) * z / 4.0;
    let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
    let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
    let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
    z + g1 / nu + g2 / nu.powi(2) + g3 / nu.powi(3) + g4 / nu.powi(4)
}

/// The t quantile from its distribution function: with t = √ν·tan θ the density becomes
/// ∝ cos^(ν−1) θ on (−π/2, π/2), a bounded integrand for ν ≥ 1, so P(0 < T < √ν·tan θ) is a ratio
/// of two Simpson integrals and θ is found by bisection.
fn t_quantile_by_bisection(p: f64, nu: f64) -> f64 {
    if nu.is_nan() || nu < 1.0 || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 || p == 1.0 {
        return if p == 0.0 {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let integral = |theta: f64| {
        let steps = 2000;
        let h = theta / steps as f64;
        let f = |phi: f64| phi.cos().powf(nu - 1.0);
        let mut sum = f(0.0) + f(theta);
        for i in 1..steps {
            sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0
    };
    let target = 2.0 * (p - 0.5).abs() * integral(std::f64::consts::FRAC_PI_2);
    let (mut low, mut high) = (0.0, std::f64::consts::FRAC_PI_2);
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if integral(mid) < target {
            low = mid;
        } else {
            high = mid;
        }
    }
    (p - 0.5).signum() * nu.sqrt() * (0.5 * (low + high)).tan()
}

/// The two-sided Bonferroni critical value for `tests` tests at family-wise level `alpha`: the
/// Student-t (ν) quantile at 1 − α/(2N). Rejecting a test when |statistic| exceeds it keeps the
/// chance of any false rejection in the family at most α, whatever the dependence between tests.
/// (Holm's step-down procedure rejects the same family as a whole: its first step is this one.)
pub fn bonferroni_critical_value(alpha: f64, tests: usize, degrees_of_freedom: f64) -> f64 {
    let tests = tests.max(1) as f64;
    student_t_quantile(1.0 - alpha / (2.0 * tests), degrees_of_freedom)
}

/// The half-width factor of a prediction interval for one new draw from the law sampled by `n`
/// replications: √(1 + 1/n) (the replication mean is itself uncertain).
pub fn prediction_interval_factor(replications: usize) -> f64 {
    (1.0 + 1.0 / replications.max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// Table values, quoted to 9 digits (normal) — the approximation is good to ~1e-9 relative.
    const NORMAL_TOLERANCE: f64 = 1e-8;

    #[test]
    fn normal_quantile_matches_tables_and_the_erf_inverse() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_985),
            (0.995, 2.575_829_304),
            (0.999_95, 3.890_591_886),
            (0.01, -2.326_347_874),
        ] {
            let q = normal_quantile(p);
            assert!(
                (q - z).abs() < NORMAL_TOLERANCE,
                "Φ⁻¹({p}) = {q}, table {z}"
            );
        }
        // Independent: Φ(Φ⁻¹(p)) = p with Φ(x) = erfc(−x/√2)/2 from libtorch. A relative error ε
        // in the quantile is one of about z²ε in the tail probability: 1e-7 relative at p = 1e-7.
        for p in [1e-7, 1e-4, 0.02, 0.3, 0.7, 0.98, 1.0 - 1e-6] {
            let z = normal_quantile(p);
            let back = f64::try_from(
                Tensor::from_slice(&[-z / std::f64::consts::SQRT_2])
                    .erfc()
                    .get(0),
            )
            .unwrap()
                / 2.0;
            assert!((back - p).abs() < 1e-7 * p.min(1.0 - p), "{p}: {back}");
        }
        assert!(normal_quantile(1.5).is_nan());
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
    }

    /// Upper-tail probability of Student's t beyond `q`, by Simpson's rule on the density with
    /// libtorch's log-gamma (an independent route to the quantile).
    fn t_upper_tail(q: f64, nu: f64) -> f64 {
        let lgamma = |x: f64| f64::try_from(Tensor::from_slice(&[x]).lgamma().get(0)).unwrap();
        let log_c =
            lgamma((nu + 1.0) / 2.0) - lgamma(nu / 2.0) - 0.5 * (nu * std::f64::consts::PI).ln();
        let density = |t: f64| (log_c - (nu + 1.0) / 2.0 * (1.0 + t * t / nu).ln()).exp();
        let steps = 20_000;
        let h = q / steps as f64;
        let mut sum = density(0.0) + density(q);
        for i in 1..steps {
            sum += density(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        0.5 - sum * h / 3.0
    }

    #[test]
    fn t_quantile_matches_tables_and_the_integrated_density() {
        // Tables: t(0.975; 15) = 2.131450, t(0.995; 31) = 2.744042, t(0.975; 63) = 1.998341.
        for (p, nu, t) in [
            (0.975, 15.0, 2.131_450),
            (0.995, 31.0, 2.744_042),
            (0.975, 63.0, 1.998_341),
        ] {
            let q = student_t_quantile(p, nu);
            assert!((q - t).abs() < 2e-4, "t({p}; {nu}) = {q}, table {t}");
        }
        // Far tails as the Bonferroni values use them: the tail beyond the quantile is within 3 %
        // of what was asked for.
        for nu in [15.0, 31.0, 63.0] {
            for upper in [1e-3, 1e-5, 1e-6] {
                let q = student_t_quantile(1.0 - upper, nu);
                let tail = t_upper_tail(q, nu);
                assert!(
                    (tail / upper - 1.0).abs() < 0.03,
                    "ν {nu}, tail {upper}: q {q} leaves {tail}"
                );
            }
        }
        // Few degrees of freedom (bisection): t(0.975; 1) = 12.7062, t(0.975; 3) = 3.182446,
        // t(0.995; 5) = 4.032143, t(0.975; 14) = 2.144787, and the lower tail by symmetry.
        for (p, nu, t) in [
            (0.975, 1.0, 12.706_205),
            (0.975, 3.0, 3.182_446),
            (0.995, 5.0, 4.032_143),
            (0.975, 14.0, 2.144_787),
            (0.025, 3.0, -3.182_446),
        ] {
            let q = student_t_quantile(p, nu);
            assert!(
                (q - t).abs() < 1e-5 * t.abs(),
                "t({p}; {nu}) = {q}, table {t}"
            );
        }
        assert!(student_t_quantile(0.975, 0.5).is_nan());
        // ν → ∞ is the normal quantile.
        assert_eq!(
            student_t_quantile(0.975, f64::INFINITY),
            normal_quantile(0.975)
        );
    }

    #[test]
    fn bonferroni_value_by_hand() {
        // One test at α = 0.05, normal: 1.96. 100 tests: Φ⁻¹(1 − 0.00025) = 3.4808.
        assert!((bonferroni_critical_value(0.05, 1, f64::INFINITY) - 1.959_964).abs() < 1e-6);
        assert!((bonferroni_critical_value(0.05, 100, f64::INFINITY) - 3.480_756).abs() < 1e-5);
        assert!((prediction_interval_factor(3) - (4.0f64 / 3.0).sqrt()).abs() < 1e-15);
    }
}

//! Finite-sample R² of OLS with intercept (theory/init_bound.md §6.6): the closed forms of the
//! in-sample and held-out R² as ratios of expectations for Gaussian rows, and a simulator that
//! draws fit and held-out rows of Gaussian x for fixed weights, fits with the tool's own Gram
//! regression (stats/regression.rs) and estimates both ratios, with standard errors, from the
//! replications (§7 check 2).
//!
//! Legend: d = input dimension, d_h = target columns, p = k·d_h reference columns (features),
//! n = fit rows, n_t = held-out rows, ρ² = the population pooled R² of the fixed weights.

use tch::{Kind, Tensor};

use crate::stats::gram::Gram;
use crate::stats::random::sample_normal;
use crate::stats::regression::{fit, score, RegressionError};

/// E[in-sample R²] as a ratio of expectations: ρ² + (1 − ρ²)·p/(n − 1). Exact for Gaussian rows
/// and n ≥ p + 2; NaN below.
pub fn in_sample_r2(rho2: f64, features: usize, fit_rows: usize) -> f64 {
    if fit_rows < features + 2 {
        return f64::NAN;
    }
    rho2 + (1.0 - rho2) * features as f64 / (fit_rows as f64 - 1.0)
}

/// E[held-out R²] as a ratio of expectations, the held-out SST taken about the held-out split's
/// own mean: 1 − (1 − ρ²)(1 + 1/n)·(n − 2)/(n − p − 2)·n_t/(n_t − 1). Exact for Gaussian rows and
/// n > p + 2, n_t ≥ 2; NaN otherwise.
pub fn heldout_r2(rho2: f64, features: usize, fit_rows: usize, heldout_rows: usize) -> f64 {
    if fit_rows <= features + 2 || heldout_rows < 2 {
        return f64::NAN;
    }
    let (n, p, n_t) = (fit_rows as f64, features as f64, heldout_rows as f64);
    1.0 - (1.0 - rho2) * (1.0 + 1.0 / n) * (n - 2.0) / (n - p - 2.0) * n_t / (n_t - 1.0)
}

/// Sums of squares of one replication, pooled over the target's columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SplitSums {
    pub sse_fit: f64,
    pub sst_fit: f64,
    pub sse_heldout: f64,
    /// About the held-out split's own mean, as the tool scores.
    pub sst_heldout: f64,
}

/// An estimate of 1 − E[A]/E[B] from replications, with its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatioEstimate {
    pub value: f64,
    pub se: f64,
}

/// 1 − ΣAᵢ/ΣBᵢ and its delta-method standard error √(Var(Aᵢ − r·Bᵢ)/N)/B̄ with r = Ā/B̄ (the
/// usual ratio-estimator error, from the replications themselves). NaN SE for fewer than two.
pub fn one_minus_ratio(errors: &[f64], totals: &[f64]) -> RatioEstimate {
    let n = errors.len().min(totals.len());
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (a, b) = (mean(errors), mean(totals));
    let ratio = a / b;
    let se = if n < 2 {
        f64::NAN
    } else {
        let residual_variance = errors[..n]
            .iter()
            .zip(&totals[..n])
            .map(|(e, t)| (e - ratio * t).powi(2))
            .sum::<f64>()
            / (n as f64 - 1.0);
        (residual_variance / n as f64).sqrt() / b
    };
    RatioEstimate {
        value: 1.0 - ratio,
        se,
    }
}

/// Gaussian rows x ~ N(mean, diag(eigenvalues)) and fixed weights: target y = W_tᵀx, references
/// z = W_Rᵀx. Shapes: `mean` `[d]`, `target` `[d, d_h]`, `references` `[d, p]`, f64.
pub struct GaussianDesign {
    pub eigenvalues: Vec<f64>,
    pub mean: Tensor,
    pub target: Tensor,
    pub references: Tensor,
}

impl GaussianDesign {
    pub fn features(&self) -> usize {
        self.references.size()[1] as usize
    }

    /// `[rows, d]` f64 rows from the ChaCha8 stream (`seed`, `stream`) (src/stats/random.rs).
    pub fn draw_rows(&self, rows: usize, seed: u64, stream: &str) -> Tensor {
        let d = self.eigenvalues.len() as i64;
        let standard = sample_normal(&[rows as i64, d], seed, stream, 1.0, f64::INFINITY)
            .to_kind(Kind::Double);
        standard * Tensor::from_slice(&self.eigenvalues).sqrt() + &self.mean
    }

    /// Fits OLS with intercept of y on z from the Gram of the fit rows `[n, d]` (the tool's
    /// regression) and scores it on them and on the held-out rows `[n_t, d]`.
    pub fn split_sums(
        &self,
        fit_rows: &Tensor,
        heldout_rows: &Tensor,
    ) -> Result<SplitSums, RegressionError> {
        let p = self.features() as i64;
        let d_h = self.target.size()[1];
        let weights = Tensor::cat(&[&self.references, &self.target], 1);
        let moments = |x: &Tensor| {
            let mut gram = Gram::new(p + d_h, x.device());
            gram.add(&x.matmul(&weights));
            gram.moments()
        };
        let (fit_moments, heldout_moments) = (moments(fit_rows), moments(heldout_rows));
        let features: Vec<i64> = (0..p).collect();
        let targets: Vec<i64> = (p..p + d_h).collect();
        let model = fit(&fit_moments, &features, &targets)?;
        let total = |t: &Tensor| f64::try_from(t.sum(Kind::Double)).unwrap_or(f64::NAN);
        let in_sample = score(&model, &fit_moments)?;
        let heldout = score(&model, &heldout_moments)?;
        Ok(SplitSums {
            sse_fit: total(&in_sample.sse),
            sst_fit: total(&in_sample.sst),
            sse_heldout: total(&heldout.sse),
            sst_heldout: total(&heldout.sst),
        })
    }
}

/// What `replications` independent data sets of n fit and n_t held-out rows gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FiniteSampleEstimate {
    pub replications: usize,
    /// 1 − E[SSE]/E[SST] on the fit rows, and on the held-out rows.
    pub in_sample: RatioEstimate,
    pub heldout: RatioEstimate,
    /// The mean over replications of each replication's own R² (reported, not asserted: the
    /// formulas are for the ratio of expectations).
    pub in_sample_mean_of_ratio: f64,
    pub heldout_mean_of_ratio: f64,
}

/// Simulates the design: replication i draws its n + n_t rows from the stream `"{stream}/{i}"`.
pub fn simulate(
    design: &GaussianDesign,
    fit_rows: usize,
    heldout_rows: usize,
    replications: usize,
    seed: u64,
    stream: &str,
) -> Result<FiniteSampleEstimate, RegressionError> {
    let mut sums = Vec::with_capacity(replications);
    for i in 0..replications {
        let x = design.draw_rows(fit_rows + heldout_rows, seed, &format!("{stream}/{i}"));
        sums.push(design.split_sums(
            &x.narrow(0, 0, fit_rows as i64),
            &x.narrow(0, fit_rows as i64, heldout_rows as i64),
        )?);
    }
    let column = |f: fn(&SplitSums) -> f64| sums.iter().map(f).collect::<Vec<f64>>();
    let mean_of = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(FiniteSampleEstimate {
        replications,
        in_sample: one_minus_ratio(&column(|s| s.sse_fit), &column(|s| s.sst_fit)),
        heldout: one_minus_ratio(&column(|s| s.sse_heldout), &column(|s| s.sst_heldout)),
        in_sample_mean_of_ratio: mean_of(column(|s| 1.0 - s.sse_fit / s.sst_fit)),
        heldout_mean_of_ratio: mean_of(column(|s| 1.0 - s.sse_heldout / s.sst_heldout)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::init_bound::{population_values, Spectrum};
    use tch::Device;

    /// Round-off allowance for closed forms evaluated in f64.
    const ROUND_OFF: f64 = 1e-12;

    fn design(d: usize, head_dim: usize, k: usize, seed: u64) -> GaussianDesign {
        let eigenvalues = Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: d,
        }
        .eigenvalues();
        let draw = |cols: usize, name: &str| {
            sample_normal(&[d as i64, cols as i64], seed, name, 1.0, f64::INFINITY)
                .to_kind(Kind::Double)
        };
        GaussianDesign {
            // A mean far from zero: the intercept must absorb it.
            mean: Tensor::full([d as i64], 3.0, (Kind::Double, Device::Cpu)),
            target: draw(head_dim, "test/target"),
            references: draw(k * head_dim, "test/references"),
            eigenvalues,
        }
    }

    #[test]
    fn closed_forms_by_hand() {
        // ρ² = 0.5, p = 8, n = 101: 0.5 + 0.5·8/100 = 0.54.
        assert!((in_sample_r2(0.5, 8, 101) - 0.54).abs() < ROUND_OFF);
        // Pure noise (ρ² = 0): p/(n − 1), research note §5: 128/1000 = 0.128.
        assert!((in_sample_r2(0.0, 128, 1001) - 0.128).abs() < ROUND_OFF);
        // ρ² = 0.5, p = 8, n = 100, n_t = 400: 1 − 0.5·1.01·98/90·400/399.
        let expected = 1.0 - 0.5 * 1.01 * 98.0 / 90.0 * 400.0 / 399.0;
        assert!((heldout_r2(0.5, 8, 100, 400) - expected).abs() < ROUND_OFF);
        // ρ² = 1: no error anywhere.
        assert!((heldout_r2(1.0, 8, 100, 400) - 1.0).abs() < ROUND_OFF);
        // Undefined where the inverse-Wishart mean is.
        assert!(heldout_r2(0.5, 8, 10, 400).is_nan());
        assert!(in_sample_r2(0.5, 8, 9).is_nan());
    }

    #[test]
    fn ratio_estimate_by_hand() {
        // A = (1, 3), B = (2, 2): r = 1, residuals (−1, 1), variance 2, SE √(2/2)/2 = 0.5.
        let estimate = one_minus_ratio(&[1.0, 3.0], &[2.0, 2.0]);
        assert!(estimate.value.abs() < ROUND_OFF);
        assert!((estimate.se - 0.5).abs() < ROUND_OFF);
        assert!(one_minus_ratio(&[1.0], &[2.0]).se.is_nan());
    }

    #[test]
    fn split_sums_equal_a_direct_least_squares_fit() {
        // The Gram route against libtorch's lstsq on the rows, design [1 z], same data.
        let design = design(16, 3, 2, 5);
        let x = design.draw_rows(60, 5, "test/rows");
        let (fit_x, heldout_x) = (x.narrow(0, 0, 40), x.narrow(0, 40, 20));
        let sums = design.split_sums(&fit_x, &heldout_x).unwrap();
        let with_intercept = |x: &Tensor| {
            let z = x.matmul(&design.references);
            let ones = Tensor::ones([z.size()[0], 1], (Kind::Double, Device::Cpu));
            Tensor::cat(&[ones, z], 1)
        };
        let y_fit = fit_x.matmul(&design.target);
        let y_heldout = heldout_x.matmul(&design.target);
        let (solution, _, _, _) = with_intercept(&fit_x).linalg_lstsq(&y_fit, None::<f64>, "gelsd");
        let sse = |x: &Tensor, y: &Tensor| {
            f64::try_from(
                (y - with_intercept(x).matmul(&solution))
                    .square()
                    .sum(Kind::Double),
            )
            .unwrap()
        };
        let sst = |y: &Tensor| {
            f64::try_from(
                (y - y.mean_dim(0, true, Kind::Double))
                    .square()
                    .sum(Kind::Double),
            )
            .unwrap()
        };
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-8 * b.abs().max(1e-12);
        assert!(close(sums.sse_fit, sse(&fit_x, &y_fit)), "{sums:?}");
        assert!(close(sums.sst_fit, sst(&y_fit)), "{sums:?}");
        assert!(
            close(sums.sse_heldout, sse(&heldout_x, &y_heldout)),
            "{sums:?}"
        );
        assert!(close(sums.sst_heldout, sst(&y_heldout)), "{sums:?}");
    }

    #[test]
    fn simulated_ratios_match_the_closed_forms_and_differ_from_the_population() {
        // p = 8, n = 24, n_t = 6: strong inflation and deflation, so the check has power.
        let (d, head_dim, k) = (16usize, 4usize, 2usize);
        let design = design(d, head_dim, k, 6);
        let rho2 = population_values(
            &design.eigenvalues,
            &design.target,
            &design.references,
            head_dim,
            k,
        )
        .r2_pooled[k - 1];
        let p = k * head_dim;
        let (n, n_t) = (24, 6);
        let estimate = simulate(&design, n, n_t, 1500, 6, "test/simulate").unwrap();
        let in_sample = in_sample_r2(rho2, p, n);
        let heldout = heldout_r2(rho2, p, n, n_t);
        let z = 4.0;
        assert!(
            (estimate.in_sample.value - in_sample).abs() <= z * estimate.in_sample.se,
            "in-sample {:?} vs {in_sample}",
            estimate.in_sample
        );
        assert!(
            (estimate.heldout.value - heldout).abs() <= z * estimate.heldout.se,
            "held-out {:?} vs {heldout}",
            estimate.heldout
        );
        // Neither is the population value: the formulas' corrections are what is being checked.
        assert!((estimate.in_sample.value - rho2) > 10.0 * estimate.in_sample.se);
        assert!((rho2 - estimate.heldout.value) > 10.0 * estimate.heldout.se);
    }
}

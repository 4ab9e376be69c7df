//! Check 2 of theory/init_bound.md §7: the finite-sample formulas of §6.6 (in-sample inflation,
//! held-out deflation of R² for OLS with intercept) against simulation, with no model — Gaussian x
//! with a chosen spectrum and one fixed draw of target and reference weights per case.
//!
//! The rows are plain data; report/theory_report.rs renders them.

use anyhow::{Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::stats::finite_sample::{heldout_r2, in_sample_r2, simulate, GaussianDesign};
use crate::stats::init_bound::{population_values, Spectrum};
use crate::stats::random::sample_normal;

/// Simulated and closed-form values must agree within this many standard errors of the
/// replication mean.
pub const FINITE_SAMPLE_SIGMAS: f64 = 4.0;

/// Every coordinate of x has this mean: the intercept has to absorb it.
const INPUT_MEAN: f64 = 1.0;

/// One (spectrum, k, n, n_t) case of check 2.
#[derive(Clone, Debug, PartialEq)]
pub struct FiniteSampleCase {
    pub spectrum: Spectrum,
    pub head_dim: usize,
    pub k: usize,
    pub fit_rows: usize,
    pub heldout_rows: usize,
}

/// The default cases: d = 64, d_h = 8 (A.4's shape), isotropic and power-law 1 spectra, and
/// (k, n, n_t) from mild to strong finite-sample effects — p/n from 0.02 to 0.67, and a small
/// held-out split where the n_t/(n_t − 1) factor shows.
pub fn default_cases() -> Vec<FiniteSampleCase> {
    let d = 64;
    let spectra = Spectrum::isotropic_and_power_law(d);
    let shapes = [
        (1, 100, 400),
        (1, 400, 100),
        (2, 100, 20),
        (4, 100, 400),
        (4, 400, 400),
        (4, 48, 400),
    ];
    spectra
        .iter()
        .flat_map(|spectrum| {
            shapes
                .iter()
                .map(move |&(k, fit_rows, heldout_rows)| FiniteSampleCase {
                    spectrum: spectrum.clone(),
                    head_dim: 8,
                    k,
                    fit_rows,
                    heldout_rows,
                })
        })
        .collect()
}

/// One case's simulation beside its closed forms.
#[derive(Clone, Debug, Serialize)]
pub struct FiniteSampleRow {
    pub spectrum: String,
    pub dimension: usize,
    pub head_dim: usize,
    pub k: usize,
    /// p = k·d_h
    pub features: usize,
    pub fit_rows: usize,
    pub heldout_rows: usize,
    pub replications: usize,
    /// Population pooled R² of the case's fixed weights (formula (2)).
    pub rho2: f64,
    /// 1 − E[SSE]/E[SST] on the fit rows: simulated ± SE, and §6.6's ρ² + (1 − ρ²)p/(n − 1).
    pub in_sample: f64,
    pub in_sample_se: f64,
    pub in_sample_formula: f64,
    /// Mean over replications of each one's own in-sample R² (reported, not asserted).
    pub in_sample_mean_of_ratio: f64,
    /// The same on the held-out rows, against 1 − (1 − ρ²)(1 + 1/n)(n − 2)/(n − p − 2)·n_t/(n_t − 1).
    pub heldout: f64,
    pub heldout_se: f64,
    pub heldout_formula: f64,
    pub heldout_mean_of_ratio: f64,
    /// The assertions that failed, empty when all passed.
    pub failures: String,
}

impl FiniteSampleRow {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Simulates one case: the weights are one Gaussian draw keyed by the case, the data sets are
/// `replications` draws of n + n_t rows; both deterministic in `seed`.
pub fn finite_sample_row(
    case: &FiniteSampleCase,
    replications: usize,
    seed: u64,
) -> Result<FiniteSampleRow> {
    let eigenvalues = case.spectrum.eigenvalues();
    let d = eigenvalues.len();
    let features = case.k * case.head_dim;
    let stream = format!(
        "theory/finite-sample/{}/{}/{}/{}/{}",
        case.spectrum.name(),
        case.head_dim,
        case.k,
        case.fit_rows,
        case.heldout_rows
    );
    let draw = |cols: usize, part: &str| {
        sample_normal(
            &[d as i64, cols as i64],
            seed,
            &format!("{stream}/{part}"),
            1.0,
            f64::INFINITY,
        )
        .to_kind(Kind::Double)
    };
    let design = GaussianDesign {
        mean: Tensor::full([d as i64], INPUT_MEAN, (Kind::Double, Device::Cpu)),
        target: draw(case.head_dim, "target"),
        references: draw(features, "references"),
        eigenvalues,
    };
    let rho2 = population_values(
        &design.eigenvalues,
        &design.target,
        &design.references,
        case.head_dim,
        case.k,
    )
    .r2_pooled[case.k - 1];
    let estimate = simulate(
        &design,
        case.fit_rows,
        case.heldout_rows,
        replications,
        seed,
        &format!("{stream}/rows"),
    )
    .with_context(|| format!("finite-sample case {stream}"))?;
    let in_sample_formula = in_sample_r2(rho2, features, case.fit_rows);
    let heldout_formula = heldout_r2(rho2, features, case.fit_rows, case.heldout_rows);
    let mut failures = Vec::new();
    for (name, simulated, formula) in [
        ("in-sample", estimate.in_sample, in_sample_formula),
        ("held-out", estimate.heldout, heldout_formula),
    ] {
        let within = (simulated.value - formula).abs() <= FINITE_SAMPLE_SIGMAS * simulated.se;
        // A NaN anywhere compares false, so it fails too.
        if !within {
            failures.push(format!(
                "{name} {:.5} ± {:.5} vs formula {formula:.5}",
                simulated.value, simulated.se
            ));
        }
    }
    Ok(FiniteSampleRow {
        spectrum: case.spectrum.name(),
        dimension: d,
        head_dim: case.head_dim,
        k: case.k,
        features,
        fit_rows: case.fit_rows,
        heldout_rows: case.heldout_rows,
        replications,
        rho2,
        in_sample: estimate.in_sample.value,
        in_sample_se: estimate.in_sample.se,
        in_sample_formula,
        in_sample_mean_of_ratio: estimate.in_sample_mean_of_ratio,
        heldout: estimate.heldout.value,
        heldout_se: estimate.heldout.se,
        heldout_formula,
        heldout_mean_of_ratio: estimate.heldout_mean_of_ratio,
        failures: failures.join("; "),
    })
}

//! Checking the init-time bound (theory/init_bound.md §7): the Monte Carlo grid of the theorems
//! (check 1). The per-layer checks of models (checks 3–4) are in analysis/layer_check.rs and
//! their sink in analysis/bound_sink.rs; both are re-exported here.
//!
//! The rows are plain data; report/theory_report.rs renders them.

use serde::Serialize;

use crate::stats::init_bound::{
    beta_variance, gaussian_floor, monte_carlo, numerical_rank, top_share_bound, MonteCarloPoint,
    Spectrum, WeightLaw,
};

/// Monte Carlo assertions hold within this many standard errors (§7 check 1).
pub const MONTE_CARLO_SIGMAS: f64 = 4.0;
/// Round-off allowance for identities that hold exactly per draw (ρ̄ = m/r, Ky Fan).
pub const EXACT_TOLERANCE: f64 = 1e-9;

/// One (spectrum, law, d, d_h, k) cell of the Monte Carlo grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridRow {
    pub spectrum: String,
    pub law: WeightLaw,
    pub dimension: usize,
    pub head_dim: usize,
    pub k: usize,
    /// m = k·d_h
    pub reference_dims: usize,
    pub rank: usize,
    pub draws: usize,
    pub r2_pooled: f64,
    pub r2_pooled_se: f64,
    pub r2_uniform: f64,
    pub r2_uniform_se: f64,
    pub rho_bar: f64,
    pub rho_bar_se: f64,
    /// m/r where a closed form exists (isotropic), else NaN.
    pub exact: f64,
    /// min(m, r)/r (Theorem 2(ii), Gaussian weights).
    pub floor: f64,
    /// B(Σ, m)
    pub bound: f64,
    pub r2_pooled_variance: f64,
    /// The Beta-law variance (isotropic, Gaussian), else NaN.
    pub beta_variance: f64,
    /// What was asserted for this row, `;`-separated.
    pub checks: String,
    /// The assertions that failed, empty when all passed.
    pub failures: String,
}

impl GridRow {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The grid rows of one spectrum and law: the Monte Carlo estimate and its checks per k.
pub fn grid_rows(
    spectrum: &Spectrum,
    law: WeightLaw,
    head_dim: usize,
    max_k: usize,
    draws: usize,
    seed: u64,
) -> Vec<GridRow> {
    let eigenvalues = spectrum.eigenvalues();
    let rank = numerical_rank(&eigenvalues);
    // Nested reference sets need m ≤ r (Lemma 4); larger k are not drawn.
    let max_k = max_k.min(rank / head_dim);
    if max_k == 0 {
        return Vec::new();
    }
    let stream = format!("theory/grid/{}/{}/{head_dim}", spectrum.name(), law.name());
    let points = monte_carlo(&eigenvalues, head_dim, max_k, law, draws, seed, &stream);
    points
        .iter()
        .map(|p| grid_row(spectrum, law, &eigenvalues, rank, head_dim, p))
        .collect()
}

fn grid_row(
    spectrum: &Spectrum,
    law: WeightLaw,
    eigenvalues: &[f64],
    rank: usize,
    head_dim: usize,
    p: &MonteCarloPoint,
) -> GridRow {
    let m = p.k * head_dim;
    let bound = top_share_bound(eigenvalues, m);
    let floor = gaussian_floor(m, rank);
    let dimension = eigenvalues.len();
    let gaussian = law == WeightLaw::Gaussian;
    let isotropic = spectrum.is_isotropic();
    let full_rank = rank == dimension;
    let mut checks: Vec<&str> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let z = MONTE_CARLO_SIGMAS;
    let mut check = |name: &'static str, ok: bool, detail: String| {
        checks.push(name);
        if !ok {
            failures.push(format!("{name} ({detail})"));
        }
    };
    // Theorem 1, per draw (Ky Fan): tr(P_M Σ)/tr Σ ≤ B, every law.
    check(
        "rho<=B per draw",
        p.worst_ky_fan_excess <= EXACT_TOLERANCE,
        format!("worst excess {:.2e}", p.worst_ky_fan_excess),
    );
    let exact = if isotropic {
        // Theorem 3(a): ρ̄ = m/r exactly, any law with a density.
        check(
            "rho=m/r",
            (p.rho_bar - floor).abs() <= EXACT_TOLERANCE,
            format!("{:.6} vs {floor:.6}", p.rho_bar),
        );
        // Theorem 3(b) (Gaussian) and 3(c) (sign-symmetric, Σ = s²I): E R² = m/r.
        if gaussian || full_rank {
            check(
                "E R2pool=m/r",
                (p.r2_pooled - floor).abs() <= z * p.r2_pooled_se,
                format!("{:.5} ± {:.5}", p.r2_pooled, p.r2_pooled_se),
            );
            check(
                "E R2unif=m/r",
                (p.r2_uniform - floor).abs() <= z * p.r2_uniform_se,
                format!("{:.5} ± {:.5}", p.r2_uniform, p.r2_uniform_se),
            );
        }
        floor
    } else {
        f64::NAN
    };
    let beta = if isotropic && gaussian {
        let beta = beta_variance(m, rank, head_dim);
        // A sample variance of n near-normal values has standard error var·√(2/(n − 1)).
        let se = beta * (2.0 / (p.draws as f64 - 1.0)).sqrt();
        check(
            "Var R2pool=Beta",
            (p.r2_pooled_variance - beta).abs() <= z * se,
            format!("{:.3e} vs {beta:.3e}", p.r2_pooled_variance),
        );
        beta
    } else {
        f64::NAN
    };
    if gaussian {
        // Theorem 2(ii): m/r ≤ E R² ≤ ρ̄ ≤ B (paired differences for E R² − ρ̄).
        check(
            "E R2pool>=floor",
            p.r2_pooled >= floor - z * p.r2_pooled_se,
            format!("{:.5} < {floor:.5}", p.r2_pooled),
        );
        check(
            "E R2unif>=floor",
            p.r2_uniform >= floor - z * p.r2_uniform_se,
            format!("{:.5} < {floor:.5}", p.r2_uniform),
        );
        check(
            "E R2pool<=rho",
            p.pooled_minus_rho.0 <= z * p.pooled_minus_rho.1 + EXACT_TOLERANCE,
            format!("difference {:.2e}", p.pooled_minus_rho.0),
        );
        check(
            "E R2unif<=rho",
            p.uniform_minus_rho.0 <= z * p.uniform_minus_rho.1 + EXACT_TOLERANCE,
            format!("difference {:.2e}", p.uniform_minus_rho.0),
        );
        check(
            "E R2pool<=B",
            p.r2_pooled <= bound + z * p.r2_pooled_se,
            format!("{:.5} > {bound:.5}", p.r2_pooled),
        );
    }
    GridRow {
        spectrum: spectrum.name(),
        law,
        dimension,
        head_dim,
        k: p.k,
        reference_dims: m,
        rank,
        draws: p.draws,
        r2_pooled: p.r2_pooled,
        r2_pooled_se: p.r2_pooled_se,
        r2_uniform: p.r2_uniform,
        r2_uniform_se: p.r2_uniform_se,
        rho_bar: p.rho_bar,
        rho_bar_se: p.rho_bar_se,
        exact,
        floor,
        bound,
        r2_pooled_variance: p.r2_pooled_variance,
        beta_variance: beta,
        checks: checks.join(";"),
        failures: failures.join("; "),
    }
}

pub use crate::analysis::bound_sink::{BatchRole, BoundSink, LayerSpectrum, ReplicationSettings};
pub use crate::analysis::layer_check::{
    judge, layer_rows, LayerCheckOptions, LayerRow, SourceRole, HEAD_SPREAD_SIGMAS,
};

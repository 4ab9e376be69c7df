//! Checking the init-time bound (theory/init_bound.md §7): the Monte Carlo grid of the theorems
//! (check 1), and per-layer comparisons of measured held-out R² with the bound computed from the
//! layer's own measured input spectrum, at init (check 3: must hold) and for trained checkpoints
//! (check 4: where it is exceeded, the heads have learned alignment).
//!
//! The rows are plain data; commands/theory.rs writes them.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Tensor;

use crate::analysis::predictability::{
    finite_mean, PredictabilityOptions, PredictabilitySink, PredictionRow,
};
use crate::capture::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::data::token_set::Split;
use crate::model::config::ModelConfig;
use crate::stats::gram::Gram;
use crate::stats::init_bound::{
    beta_variance, choose, gaussian_floor, isotropic_pooled_sd, mean_se, monte_carlo,
    numerical_rank, selection_slack, spectrum_of, top_share_bound, MonteCarloPoint, Spectrum,
    WeightLaw,
};

/// Monte Carlo assertions hold within this many standard errors (§7 check 1).
pub const MONTE_CARLO_SIGMAS: f64 = 4.0;
/// Per-layer checks allow this many times the spread of the mean over target heads (§7 check 3).
pub const HEAD_SPREAD_SIGMAS: f64 = 3.0;
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

/// Whether a measured source is a model at init (the bound must hold) or trained (it may not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRole {
    Init,
    Trained,
}

/// One (source, layer, kind, k) comparison of measured held-out R² with the layer's bound.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub role: SourceRole,
    pub source: String,
    pub layer: i64,
    pub kind: HeadKind,
    pub k: usize,
    pub head_dim: usize,
    pub dimension: usize,
    /// Numerical rank of the fit split's input covariance.
    pub rank: usize,
    pub target_heads: usize,
    pub n_fit: i64,
    pub n_heldout: i64,
    /// Mean over target heads of the held-out pooled R², and its standard error across heads.
    pub r2_pooled_heldout: f64,
    pub r2_pooled_se: f64,
    /// Mean over target heads of the held-out uniform (per-coordinate) R², and its standard error.
    pub r2_uniform_heldout: f64,
    pub r2_uniform_se: f64,
    /// B(Σ̂, k·d_h) from the fit split's input covariance.
    pub bound: f64,
    /// min(m, r)/r
    pub floor: f64,
    /// k·d_h/d: the value for isotropic input.
    pub isotropic: f64,
    /// Monte Carlo ρ̄ and E R²_pool of Gaussian projections of this Σ̂ (NaN when not drawn).
    pub monte_carlo_rho_bar: f64,
    pub monte_carlo_r2_pooled: f64,
    /// Standard deviation of one head's R² over weight draws (the larger of pooled and uniform):
    /// from the Monte Carlo when drawn, else the isotropic Beta value (Theorem 3(b)).
    pub weight_sd: f64,
    /// Selection slack (§6.8) + HEAD_SPREAD_SIGMAS × the largest of the two standard errors
    /// across heads and `weight_sd` (theory/init_bound.md §7 check 3).
    pub tolerance: f64,
    /// bound + tolerance − measured (the larger of pooled and uniform): negative means above the bound.
    pub margin: f64,
    /// Init: `pass` or `FAIL`; trained: `above bound` or `within bound`.
    pub verdict: String,
}

/// The per-layer input spectrum of one source, as measured on the fit split.
#[derive(Clone, Debug)]
pub struct LayerSpectrum {
    pub layer: i64,
    pub rows: i64,
    pub eigenvalues: Vec<f64>,
}

/// Runs predictability sinks (one per group of kinds sharing a reference count) and accumulates
/// each analysed layer's attention-input Gram on the fit split.
pub struct BoundSink {
    sinks: Vec<PredictabilitySink>,
    layers: Option<Vec<i64>>,
    last_layer: Option<i64>,
    batch_splits: Vec<Split>,
    inputs: BTreeMap<i64, Gram>,
    pub spectra: Vec<LayerSpectrum>,
}

impl BoundSink {
    /// `kinds` with at most `max_refs` references each, capped per kind at its heads − 1 (GQA
    /// models have fewer K/V heads than Q heads).
    pub fn new(
        kinds: &[HeadKind],
        max_refs: usize,
        layers: Option<Vec<i64>>,
        checkpoint: &str,
        config: &ModelConfig,
        batch_splits: Vec<Split>,
    ) -> Result<Self> {
        let mut groups: BTreeMap<usize, Vec<HeadKind>> = BTreeMap::new();
        for &kind in kinds {
            let cap = (kind.heads(config) as usize)
                .saturating_sub(1)
                .min(max_refs);
            if cap == 0 {
                bail!(
                    "{checkpoint}: {} has a single {} head per layer; nothing to predict it from",
                    kind.name().to_uppercase(),
                    kind.name().to_uppercase()
                );
            }
            groups.entry(cap).or_default().push(kind);
        }
        let mut sinks = Vec::new();
        for (cap, kinds) in groups {
            let options = PredictabilityOptions {
                kinds,
                max_refs: cap,
                selection: crate::stats::selection::Selection::Topn,
                candidates: crate::analysis::predictability::Candidates::SameLayer,
                // Pre-norm, pre-RoPE: y = W_tᵀx exactly, the theorems' setting.
                capture_point: CapturePoint::Proj,
                layers: layers.clone(),
                store_budget_bytes: 0,
            };
            options.check(config)?;
            sinks.push(PredictabilitySink::new(
                options,
                checkpoint,
                config,
                batch_splits.clone(),
            ));
        }
        Ok(BoundSink {
            sinks,
            last_layer: layers.as_ref().and_then(|l| l.iter().max().copied()),
            layers,
            batch_splits,
            inputs: BTreeMap::new(),
            spectra: Vec::new(),
        })
    }

    fn analyses(&self, layer: i64) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    /// Every prediction row of every kind.
    pub fn prediction_rows(&self) -> Vec<&PredictionRow> {
        self.sinks.iter().flat_map(|s| s.rows.iter()).collect()
    }
}

impl CaptureSink for BoundSink {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        if self.analyses(layer) {
            vec![CapturePoint::Proj]
        } else {
            Vec::new()
        }
    }

    fn last_layer(&self) -> Option<i64> {
        self.last_layer
    }

    fn capture(&mut self, capture: &LayerCapture) -> Result<()> {
        for sink in &mut self.sinks {
            sink.capture(capture)?;
        }
        Ok(())
    }

    fn attention_input(&mut self, layer: i64, batch_index: usize, x: &Tensor) -> Result<()> {
        if !self.analyses(layer) {
            return Ok(());
        }
        match self.batch_splits.get(batch_index) {
            Some(Split::Fit) => {}
            Some(Split::Heldout) => return Ok(()),
            None => {
                bail!("attention input from batch {batch_index} that no split was declared for")
            }
        }
        let hidden = x.size().last().copied().unwrap_or(0);
        let rows = x.reshape([-1, hidden]);
        self.inputs
            .entry(layer)
            .or_insert_with(|| Gram::new(hidden, tch::Device::Cpu))
            .add(&rows);
        Ok(())
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        for sink in &mut self.sinks {
            sink.finish_layer(layer)?;
        }
        if let Some(gram) = self.inputs.remove(&layer) {
            let moments = gram.moments();
            let covariance = &moments.scatter / (moments.rows - 1).max(1) as f64;
            self.spectra.push(LayerSpectrum {
                layer,
                rows: moments.rows,
                eigenvalues: spectrum_of(&covariance),
            });
        }
        Ok(())
    }
}

/// Settings of the per-layer comparison.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCheckOptions {
    pub role: SourceRole,
    /// Monte Carlo draws of Gaussian projections per layer spectrum (0: none).
    pub monte_carlo_draws: usize,
    pub seed: u64,
}

/// Per (layer, kind, k): measured held-out R² (mean over target heads) against B of that layer's
/// measured spectrum, with the tolerance of §7 check 3.
pub fn layer_rows(
    source: &str,
    config: &ModelConfig,
    spectra: &[LayerSpectrum],
    predictions: &[&PredictionRow],
    options: &LayerCheckOptions,
) -> Vec<LayerRow> {
    let head_dim = config.head_dim as usize;
    let mut rows = Vec::new();
    for spectrum in spectra {
        let rank = numerical_rank(&spectrum.eigenvalues);
        let dimension = spectrum.eigenvalues.len();
        let mut by_kind_k: BTreeMap<(HeadKind, usize), Vec<&PredictionRow>> = BTreeMap::new();
        for row in predictions.iter().filter(|r| r.layer == spectrum.layer) {
            by_kind_k.entry((row.kind, row.k)).or_default().push(row);
        }
        let max_k = by_kind_k
            .keys()
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
            .min(rank / head_dim);
        let monte_carlo_points = if options.monte_carlo_draws > 0 && max_k > 0 {
            monte_carlo(
                &spectrum.eigenvalues,
                head_dim,
                max_k,
                WeightLaw::Gaussian,
                options.monte_carlo_draws,
                options.seed,
                &format!("theory/layer/{source}/{}", spectrum.layer),
            )
        } else {
            Vec::new()
        };
        for ((kind, k), group) in by_kind_k {
            let m = k * head_dim;
            let heads = kind.heads(config) as usize;
            let pooled: Vec<f64> = group.iter().map(|r| r.r2_pooled_heldout).collect();
            let uniform: Vec<f64> = group.iter().map(|r| r.r2_heldout).collect();
            let (pooled_mean, pooled_se) = mean_and_se(&pooled);
            let (uniform_mean, uniform_se) = mean_and_se(&uniform);
            let bound = top_share_bound(&spectrum.eigenvalues, m);
            let slack = selection_slack(choose(heads - 1, k), rank, head_dim);
            let point = monte_carlo_points.iter().find(|p| p.k == k);
            let weight_sd = match point {
                Some(p) => p.r2_pooled_variance.max(p.r2_uniform_variance).sqrt(),
                // m ≥ r: R² = 1 on every draw.
                None if m >= rank => 0.0,
                None => isotropic_pooled_sd(m, rank, head_dim),
            };
            // The heads' R² are positively correlated (a reciprocal pair shares its principal
            // angles), so the standard error across heads can understate the spread of their
            // mean; one head's spread over weight draws bounds the weight part whatever the
            // correlation (§7 check 3).
            let spread = [pooled_se, uniform_se, weight_sd]
                .into_iter()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let tolerance = slack + HEAD_SPREAD_SIGMAS * spread;
            let margin = bound + tolerance - pooled_mean.max(uniform_mean);
            let within = margin >= 0.0;
            let verdict = match (options.role, within) {
                (SourceRole::Init, true) => "pass",
                (SourceRole::Init, false) => "FAIL",
                (SourceRole::Trained, true) => "within bound",
                (SourceRole::Trained, false) => "above bound",
            };
            rows.push(LayerRow {
                role: options.role,
                source: source.to_string(),
                layer: spectrum.layer,
                kind,
                k,
                head_dim,
                dimension,
                rank,
                target_heads: group.len(),
                n_fit: group.first().map_or(0, |r| r.n_fit),
                n_heldout: group.first().map_or(0, |r| r.n_heldout),
                r2_pooled_heldout: pooled_mean,
                r2_pooled_se: pooled_se,
                r2_uniform_heldout: uniform_mean,
                r2_uniform_se: uniform_se,
                bound,
                floor: gaussian_floor(m, rank),
                isotropic: (m as f64 / dimension as f64).min(1.0),
                monte_carlo_rho_bar: point.map_or(f64::NAN, |p| p.rho_bar),
                monte_carlo_r2_pooled: point.map_or(f64::NAN, |p| p.r2_pooled),
                weight_sd,
                tolerance,
                margin,
                verdict: verdict.to_string(),
            });
        }
    }
    rows
}

/// Mean of the finite values and its standard error across them (NaN when fewer than two).
fn mean_and_se(values: &[f64]) -> (f64, f64) {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() < 2 {
        return (finite_mean(finite.iter().copied()).0, f64::NAN);
    }
    let (mean, se, _) = mean_se(&finite);
    (mean, se)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::olmo2_preset;

    /// Prediction rows of layer 0, K, k = 1 for 16 target heads with the given held-out R².
    fn rows(values: &[f64]) -> Vec<PredictionRow> {
        values
            .iter()
            .enumerate()
            .map(|(head, &r2)| PredictionRow {
                checkpoint: "init:olmo2-1b".into(),
                kind: HeadKind::K,
                layer: 0,
                target_head: head,
                k: 1,
                reference_heads: ((head + 1) % values.len()).to_string(),
                reference_layers: "0".into(),
                r2_heldout: r2,
                r2_insample: r2,
                r2_pooled_heldout: r2,
                r2_pooled_insample: r2,
                n_fit: 6144,
                n_heldout: 2048,
                status: String::new(),
                max_k: 1,
            })
            .collect()
    }

    fn tolerance_of(values: &[f64]) -> (f64, f64) {
        let config = olmo2_preset("olmo2-1b").unwrap();
        let spectrum = LayerSpectrum {
            layer: 0,
            rows: 6144,
            eigenvalues: vec![1.0; 2048],
        };
        let predictions = rows(values);
        let refs: Vec<&PredictionRow> = predictions.iter().collect();
        let options = LayerCheckOptions {
            role: SourceRole::Init,
            monte_carlo_draws: 0,
            seed: 0,
        };
        let out = layer_rows("init:olmo2-1b", &config, &[spectrum], &refs, &options);
        assert_eq!(out.len(), 1);
        (out[0].tolerance, out[0].weight_sd)
    }

    #[test]
    fn identical_heads_still_get_the_weight_draw_spread() {
        // 16 equal values: SE across heads 0. The tolerance keeps 3 × one head's isotropic sd
        // over weight draws (Theorem 3(b): 6.7e-4 for d = 2048, d_h = 128, k = 1) on top of the
        // selection slack of C(15, 1) = 15 sets (0.0032).
        let (tolerance, weight_sd) = tolerance_of(&[0.0625; 16]);
        let sd = isotropic_pooled_sd(128, 2048, 128);
        assert!((weight_sd - sd).abs() < 1e-15, "{weight_sd} vs {sd}");
        let expected = selection_slack(15.0, 2048, 128) + HEAD_SPREAD_SIGMAS * sd;
        assert!(
            (tolerance - expected).abs() < 1e-12,
            "{tolerance} vs {expected}"
        );
        assert!((tolerance - (0.0032 + 3.0 * 6.7e-4)).abs() < 1e-4);
    }

    #[test]
    fn a_wide_spread_across_heads_outweighs_the_weight_draw_spread() {
        // Values 0 and 0.2 alternating: sd across heads 0.1033, SE 0.0258 ≫ 6.7e-4.
        let values: Vec<f64> = (0..16)
            .map(|h| if h % 2 == 0 { 0.0 } else { 0.2 })
            .collect();
        let (tolerance, _) = tolerance_of(&values);
        let (_, se, _) = mean_se(&values);
        let expected = selection_slack(15.0, 2048, 128) + HEAD_SPREAD_SIGMAS * se;
        assert!(
            (tolerance - expected).abs() < 1e-12,
            "{tolerance} vs {expected}"
        );
    }
}

//! Per-layer checks of models against the init-time theory (theory/init_bound.md §7 checks 3–4):
//! the measured held-out R² of each (source, layer, kind, k) against
//!
//! 1. the theorem's bound B(Σ̂, k·d_h) (one-sided, kept from the first verification, with its
//!    margin);
//! 2. the **prediction**: the conditional replications of the layer at init
//!    (analysis/init_prediction.rs), two-sided, pooled and uniform;
//! 3. the population: with iid rows by construction (random tokens at layer 0, the clean case)
//!    two-sided against the population replications from Σ̂; otherwise one-sided against the
//!    Monte Carlo E[R²] of Σ̂ (Claim S: held-out by sequence never exceeds the population value).
//!
//! Every two-sided or one-sided statistical check of an init row is one test of one family; the
//! tolerance is the Bonferroni critical value for the family times the replication spread
//! (analysis's `judge`). Trained rows are compared per head with the per-head law of the same
//! replications: the fraction of heads above it is learned structure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::bound_sink::LayerSpectrum;
use crate::analysis::heldout_bootstrap::LayerResamples;
use crate::analysis::init_prediction::{population_replicates, Replicates};
use crate::analysis::predictability::{finite_mean, PredictionRow};
use crate::capture::HeadKind;
use crate::config::ModelConfig;
use crate::stats::finite_sample::heldout_r2;
use crate::stats::init_bound::{
    choose, gaussian_floor, isotropic_pooled_sd, mean_se, monte_carlo, numerical_rank,
    selection_slack_for_variance, top_share_bound, WeightLaw,
};
use crate::stats::multiplicity::{bonferroni_critical_value, prediction_interval_factor};
use crate::stats::sequence_bootstrap::quantile;

/// Per-layer checks allow this many times the spread of the mean over target heads (§7 check 3).
pub const HEAD_SPREAD_SIGMAS: f64 = 3.0;
/// The family-wise error rate of all statistical checks of all init rows of one run.
pub const FAMILY_ALPHA: f64 = 0.05;
/// Statistical checks per init row in the family: prediction (pooled), prediction (uniform),
/// population (two-sided in the clean case, else one-sided).
pub const TESTS_PER_INIT_ROW: usize = 3;
/// Round-off allowance added to every tolerance (a row whose R² is 1 on every replication).
pub const ROUND_OFF: f64 = 1e-9;

/// Whether a measured source is a model at init (the bound must hold) or trained (it may not).
/// What a layer row's checks concluded: an init row passes or fails every check of its family; a
/// trained row lies within or above the bound. `Unset` until the verdicts are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[default]
    #[serde(rename = "")]
    Unset,
    #[serde(rename = "pass")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    #[serde(rename = "within bound")]
    WithinBound,
    #[serde(rename = "above bound")]
    AboveBound,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Unset => "",
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::WithinBound => "within bound",
            Verdict::AboveBound => "above bound",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;

    /// The verdict a CSV cell names (its `name`).
    fn from_str(text: &str) -> Result<Self, String> {
        [
            Verdict::Unset,
            Verdict::Pass,
            Verdict::Fail,
            Verdict::WithinBound,
            Verdict::AboveBound,
        ]
        .into_iter()
        .find(|v| v.name() == text)
        .ok_or_else(|| format!("{text:?} is not a verdict"))
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRole {
    Init,
    Trained,
}

impl SourceRole {
    /// The role as reports and the CSV's `role` column spell it.
    pub fn name(self) -> &'static str {
        match self {
            SourceRole::Init => "init",
            SourceRole::Trained => "trained",
        }
    }
}

/// One (source, layer, kind, k) comparison of measured held-out R² with the layer's theory.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub role: SourceRole,
    pub source: String,
    pub layer: i64,
    pub kind: HeadKind,
    pub k: usize,
    pub head_dim: usize,
    pub dimension: usize,
    /// Numerical rank of the input covariance estimate Σ̂.
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
    /// B(Σ̂, k·d_h).
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
    /// Init: `pass` or `FAIL` (every check below); trained: `above bound` or `within bound`.
    pub verdict: Verdict,
    /// Rows behind Σ̂, the split they came from (`covariance`, or `fit` when none was given), n/d.
    pub covariance_rows: i64,
    pub covariance_split: String,
    pub covariance_rows_per_dimension: f64,
    /// B − measured pooled, without tolerance.
    pub bound_margin: f64,
    /// The selection slack inside `tolerance` (√(2 ln N · v), v the larger of the isotropic
    /// proxy variance and one head's Monte Carlo variance).
    pub selection_slack: f64,
    /// Prediction: mean and sd over the conditional replications of the layer mean of held-out
    /// pooled and uniform R², and how many replications.
    pub predicted_r2_pooled: f64,
    pub predicted_r2_pooled_sd: f64,
    pub predicted_r2_uniform: f64,
    pub predicted_r2_uniform_sd: f64,
    pub prediction_replications: usize,
    /// measured − predicted.
    pub deviation_pooled: f64,
    pub deviation_uniform: f64,
    /// The family's Bonferroni critical value (Student t, R − 1 degrees of freedom) and the
    /// tolerances it gives: critical value × sd × √(1 + 1/R).
    pub critical_value: f64,
    pub prediction_tolerance_pooled: f64,
    pub prediction_tolerance_uniform: f64,
    /// Population, iid rows: the Monte Carlo E[R²_pool] of Σ̂ after §6.6's held-out deflation.
    pub population_heldout_formula: f64,
    /// Whether the rows are iid by construction (random tokens at layer 0), where the population
    /// check is two-sided.
    pub iid_rows: bool,
    /// Population replications (iid rows only; NaN elsewhere): mean, sd, tolerance.
    pub population_simulated: f64,
    pub population_simulated_sd: f64,
    pub population_tolerance: f64,
    /// One-sided population limit where rows are not iid: Monte Carlo E[R²_pool] (else B) +
    /// selection slack + critical value × prediction sd × √(1 + 1/R).
    pub population_upper: f64,
    /// Population value minus the prediction: how much the design (finite sample and sequence
    /// structure) lowers held-out R² below the population R² of random projections.
    pub design_deflation: f64,
    /// Target heads above the per-head prediction limit (mean + critical value × sd of one
    /// replicated head), and that limit.
    pub heads_above_prediction: usize,
    pub head_prediction_limit: f64,
    /// The bootstrap over held-out sequences (trained rows; 0 and NaN elsewhere): redraws, the
    /// 95 % percentile interval of the layer mean of held-out pooled R², and the target heads
    /// whose 5 % bootstrap quantile is above `head_prediction_limit` (above it on 19 of 20
    /// redraws of which sequences were held out, not only on the draw that was made).
    pub heldout_resamples: usize,
    pub r2_pooled_ci_low: f64,
    pub r2_pooled_ci_high: f64,
    pub heads_above_prediction_bootstrap: usize,
    /// The checks that failed (init rows), `;`-separated; empty when all passed.
    pub failed_checks: String,
    #[serde(skip)]
    pub head_targets: Vec<usize>,
    #[serde(skip)]
    pub head_bootstrap_low: Vec<f64>,
    #[serde(skip)]
    pub head_r2_pooled: Vec<f64>,
    #[serde(skip)]
    pub head_null: (f64, f64),
}

impl LayerRow {
    /// A row with its identity set and every number NaN (or 0): for chart and writer tests.
    pub fn blank(role: SourceRole, source: &str, layer: i64, kind: HeadKind, k: usize) -> Self {
        let nan = f64::NAN;
        LayerRow {
            role,
            source: source.to_string(),
            layer,
            kind,
            k,
            head_dim: 0,
            dimension: 0,
            rank: 0,
            target_heads: 0,
            n_fit: 0,
            n_heldout: 0,
            r2_pooled_heldout: nan,
            r2_pooled_se: nan,
            r2_uniform_heldout: nan,
            r2_uniform_se: nan,
            bound: nan,
            floor: nan,
            isotropic: nan,
            monte_carlo_rho_bar: nan,
            monte_carlo_r2_pooled: nan,
            weight_sd: nan,
            tolerance: nan,
            margin: nan,
            verdict: Verdict::Unset,
            covariance_rows: 0,
            covariance_split: String::new(),
            covariance_rows_per_dimension: nan,
            bound_margin: nan,
            selection_slack: nan,
            predicted_r2_pooled: nan,
            predicted_r2_pooled_sd: nan,
            predicted_r2_uniform: nan,
            predicted_r2_uniform_sd: nan,
            prediction_replications: 0,
            deviation_pooled: nan,
            deviation_uniform: nan,
            critical_value: nan,
            prediction_tolerance_pooled: nan,
            prediction_tolerance_uniform: nan,
            population_heldout_formula: nan,
            iid_rows: false,
            population_simulated: nan,
            population_simulated_sd: nan,
            population_tolerance: nan,
            population_upper: nan,
            design_deflation: nan,
            heads_above_prediction: 0,
            head_prediction_limit: nan,
            heldout_resamples: 0,
            r2_pooled_ci_low: nan,
            r2_pooled_ci_high: nan,
            heads_above_prediction_bootstrap: 0,
            failed_checks: String::new(),
            head_targets: Vec::new(),
            head_bootstrap_low: Vec::new(),
            head_r2_pooled: Vec::new(),
            head_null: (nan, nan),
        }
    }
}

/// Settings of the per-layer comparison.
#[derive(Clone, Debug, Serialize)]
pub struct LayerCheckOptions {
    pub role: SourceRole,
    /// Monte Carlo draws of Gaussian projections per layer spectrum (0: none).
    pub monte_carlo_draws: usize,
    pub seed: u64,
    /// Rows at layer 0 are iid by construction (uniform random tokens): the clean case.
    pub iid_layer0: bool,
    /// Population replications per clean row (0: none).
    pub population_replications: usize,
    /// Key of the Monte Carlo streams (`analysis::model_check::stream_key`): the same model draws the
    /// same replications wherever its files lie.
    pub stream: String,
}

/// The reference dimension m for k reference heads: k·d_h (the theory). A parameter so the
/// verification's mutation checks can feed a wrong one.
pub type ReferenceDims = fn(usize, usize) -> usize;

/// m = k·d_h.
pub fn reference_dims(k: usize, head_dim: usize) -> usize {
    k * head_dim
}

/// Per (layer, kind, k): measured held-out R² (mean over target heads) beside the layer's bound,
/// prediction and population values. Verdicts are set by [`judge`], once the family is known.
pub fn layer_rows(
    source: &str,
    config: &ModelConfig,
    spectra: &[LayerSpectrum],
    predictions: &[&PredictionRow],
    replicates: &BTreeMap<(i64, usize), Vec<Replicates>>,
    options: &LayerCheckOptions,
) -> Vec<LayerRow> {
    layer_rows_with(
        source,
        config,
        spectra,
        predictions,
        replicates,
        options,
        reference_dims,
    )
}

/// [`layer_rows`] with the reference dimension as a parameter.
pub fn layer_rows_with(
    source: &str,
    config: &ModelConfig,
    spectra: &[LayerSpectrum],
    predictions: &[&PredictionRow],
    replicates: &BTreeMap<(i64, usize), Vec<Replicates>>,
    options: &LayerCheckOptions,
    dims: ReferenceDims,
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
        let largest_k = by_kind_k.keys().map(|(_, k)| *k).max().unwrap_or(0);
        // The Monte Carlo is drawn at the reference dimensions the rows use (m ≤ r).
        let dims_of: Vec<usize> = (1..=largest_k).map(|k| dims(k, head_dim)).collect();
        let monte_carlo_k = dims_of.iter().take_while(|&&m| m <= rank).count();
        let monte_carlo_points = if options.monte_carlo_draws > 0 && monte_carlo_k > 0 {
            // monte_carlo draws nested sets of k·d_h columns; m = j·d_h for the j it returns.
            monte_carlo(
                &spectrum.eigenvalues,
                head_dim,
                dims_of[monte_carlo_k - 1]
                    .div_ceil(head_dim)
                    .min(rank / head_dim),
                WeightLaw::Gaussian,
                options.monte_carlo_draws,
                options.seed,
                &format!("theory/layer/{}/{}", options.stream, spectrum.layer),
            )
        } else {
            Vec::new()
        };
        let clean = options.iid_layer0 && spectrum.layer == 0;
        let mut population: BTreeMap<usize, Vec<Replicates>> = BTreeMap::new();
        for ((kind, k), group) in by_kind_k {
            let m = dims(k, head_dim);
            let heads = kind.heads(config) as usize;
            let pooled: Vec<f64> = group.iter().map(|r| r.r2_pooled_heldout).collect();
            let uniform: Vec<f64> = group.iter().map(|r| r.r2_heldout).collect();
            let (pooled_mean, pooled_se) = mean_and_se(&pooled);
            let (uniform_mean, uniform_se) = mean_and_se(&uniform);
            let bound = top_share_bound(&spectrum.eigenvalues, m);
            let point = monte_carlo_points.iter().find(|p| p.k * head_dim == m);
            let weight_sd = match point {
                Some(p) => p.r2_pooled_variance.max(p.r2_uniform_variance).sqrt(),
                // m ≥ r: R² = 1 on every draw.
                None if m >= rank => 0.0,
                None => isotropic_pooled_sd(m, rank, head_dim),
            };
            // §6.8: the sub-Gaussian maximum with the larger of the isotropic proxy variance and
            // the Monte Carlo variance of one head (the anisotropic heuristic init_bound.md names).
            let slack = selection_slack_for_variance(
                choose(heads - 1, k),
                weight_sd
                    .powi(2)
                    .max(isotropic_proxy_variance(rank, head_dim)),
            );
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
            let n_fit = group.first().map_or(0, |r| r.n_fit);
            let n_heldout = group.first().map_or(0, |r| r.n_heldout);
            let replicated = replicates
                .get(&(spectrum.layer, heads))
                .and_then(|r| r.iter().find(|r| r.k == k));
            let (predicted_pooled, predicted_pooled_sd) =
                replicated.map_or((f64::NAN, f64::NAN), Replicates::pooled_summary);
            let (predicted_uniform, predicted_uniform_sd) =
                replicated.map_or((f64::NAN, f64::NAN), Replicates::uniform_summary);
            let replications = replicated.map_or(0, |r| r.pooled.len());
            let population_value = point.map_or(f64::NAN, |p| p.r2_pooled);
            let population_formula =
                heldout_r2(population_value, m, n_fit as usize, n_heldout as usize);
            let simulated = if clean && options.population_replications > 0 {
                let max_k = heads - 1;
                let entry = population.entry(heads).or_insert_with(|| {
                    population_replicates(
                        &spectrum.eigenvalues,
                        heads,
                        head_dim,
                        max_k.min(largest_k),
                        n_fit as usize,
                        n_heldout as usize,
                        options.population_replications,
                        options.seed,
                        &format!(
                            "theory/population/{}/{}/{heads}",
                            options.stream, spectrum.layer
                        ),
                    )
                });
                entry
                    .iter()
                    .find(|r| r.k == k)
                    .map(Replicates::pooled_summary)
            } else {
                None
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
                n_fit,
                n_heldout,
                r2_pooled_heldout: pooled_mean,
                r2_pooled_se: pooled_se,
                r2_uniform_heldout: uniform_mean,
                r2_uniform_se: uniform_se,
                bound,
                floor: gaussian_floor(m, rank),
                isotropic: (m as f64 / dimension as f64).min(1.0),
                monte_carlo_rho_bar: point.map_or(f64::NAN, |p| p.rho_bar),
                monte_carlo_r2_pooled: population_value,
                weight_sd,
                tolerance,
                margin,
                verdict: Verdict::Unset,
                covariance_rows: spectrum.rows,
                covariance_split: spectrum.split.to_string(),
                covariance_rows_per_dimension: spectrum.rows as f64 / dimension as f64,
                bound_margin: bound - pooled_mean,
                selection_slack: slack,
                predicted_r2_pooled: predicted_pooled,
                predicted_r2_pooled_sd: predicted_pooled_sd,
                predicted_r2_uniform: predicted_uniform,
                predicted_r2_uniform_sd: predicted_uniform_sd,
                prediction_replications: replications,
                deviation_pooled: pooled_mean - predicted_pooled,
                deviation_uniform: uniform_mean - predicted_uniform,
                critical_value: f64::NAN,
                prediction_tolerance_pooled: f64::NAN,
                prediction_tolerance_uniform: f64::NAN,
                population_heldout_formula: population_formula,
                iid_rows: clean,
                population_simulated: simulated.map_or(f64::NAN, |s| s.0),
                population_simulated_sd: simulated.map_or(f64::NAN, |s| s.1),
                population_tolerance: f64::NAN,
                population_upper: f64::NAN,
                design_deflation: if population_value.is_finite() {
                    population_value - predicted_pooled
                } else {
                    bound - predicted_pooled
                },
                heads_above_prediction: 0,
                head_prediction_limit: f64::NAN,
                heldout_resamples: 0,
                r2_pooled_ci_low: f64::NAN,
                r2_pooled_ci_high: f64::NAN,
                heads_above_prediction_bootstrap: 0,
                failed_checks: String::new(),
                head_targets: group.iter().map(|r| r.target_head).collect(),
                head_bootstrap_low: Vec::new(),
                head_r2_pooled: pooled,
                head_null: replicated.map_or((f64::NAN, f64::NAN), Replicates::head_summary),
            });
        }
    }
    rows
}

/// The one-sided level of a head's bootstrap quantile and the two-sided level of the layer mean's
/// interval.
pub const BOOTSTRAP_HEAD_QUANTILE: f64 = 0.05;
pub const BOOTSTRAP_INTERVAL: (f64, f64) = (0.025, 0.975);

/// Adds the bootstrap over held-out sequences to the rows it was drawn for: per head its
/// [`BOOTSTRAP_HEAD_QUANTILE`] quantile, and the percentile interval of the layer mean (the
/// heads share the redraws, so each redraw has one layer mean).
pub fn add_bootstrap(rows: &mut [LayerRow], resampled: &LayerResamples) {
    for row in rows.iter_mut() {
        let Some(heads) = resampled.get(&(row.layer, row.kind, row.k)) else {
            continue;
        };
        let redraws = heads.first().map_or(0, |h| h.r2_pooled.len());
        row.heldout_resamples = redraws;
        row.head_bootstrap_low = row
            .head_targets
            .iter()
            .map(|t| {
                heads
                    .iter()
                    .find(|h| h.target_head == *t)
                    .map_or(f64::NAN, |h| {
                        quantile(&h.r2_pooled, BOOTSTRAP_HEAD_QUANTILE)
                    })
            })
            .collect();
        let layer_means: Vec<f64> = (0..redraws)
            .map(|b| finite_mean(heads.iter().map(|h| h.r2_pooled[b])).0)
            .collect();
        row.r2_pooled_ci_low = quantile(&layer_means, BOOTSTRAP_INTERVAL.0);
        row.r2_pooled_ci_high = quantile(&layer_means, BOOTSTRAP_INTERVAL.1);
    }
}

/// 1/(2 r d_h + 4): the sub-Gaussian proxy variance of one head's isotropic Beta law (§6.8).
fn isotropic_proxy_variance(rank: usize, head_dim: usize) -> f64 {
    1.0 / (2.0 * rank as f64 * head_dim as f64 + 4.0)
}

/// The number of tests in the init family of `rows`.
pub fn init_family_size(rows: &[LayerRow]) -> usize {
    rows.iter().filter(|r| r.role == SourceRole::Init).count() * TESTS_PER_INIT_ROW
}

/// Sets every row's tolerances and verdict. Init rows form one family of
/// `TESTS_PER_INIT_ROW` tests each at family-wise level `alpha` (Bonferroni); trained rows get
/// their per-head counts, with the heads of all trained rows as their own family.
pub fn judge(rows: &mut [LayerRow], alpha: f64) {
    let init_tests = init_family_size(rows);
    let trained_heads: usize = rows
        .iter()
        .filter(|r| r.role == SourceRole::Trained)
        .map(|r| r.head_r2_pooled.len())
        .sum();
    for row in rows.iter_mut() {
        let replications = row.prediction_replications;
        let degrees = (replications as f64 - 1.0).max(1.0);
        let factor = prediction_interval_factor(replications);
        let z = bonferroni_critical_value(alpha, init_tests.max(1), degrees);
        row.critical_value = z;
        row.prediction_tolerance_pooled = z * row.predicted_r2_pooled_sd * factor + ROUND_OFF;
        row.prediction_tolerance_uniform = z * row.predicted_r2_uniform_sd * factor + ROUND_OFF;
        row.population_tolerance = z * row.population_simulated_sd * factor + ROUND_OFF;
        let population_reference = if row.monte_carlo_r2_pooled.is_finite() {
            row.monte_carlo_r2_pooled
        } else {
            row.bound
        };
        row.population_upper = population_reference
            + row.selection_slack
            + z * row.predicted_r2_pooled_sd * factor
            + ROUND_OFF;
        // Per head: one head's law over the replications (all target heads are exchangeable).
        let head_z = bonferroni_critical_value(
            alpha,
            match row.role {
                SourceRole::Init => row.head_r2_pooled.len() * init_tests.max(1),
                SourceRole::Trained => trained_heads.max(1),
            },
            f64::INFINITY,
        );
        let (null_mean, null_sd) = row.head_null;
        row.head_prediction_limit = null_mean + head_z * null_sd * factor + ROUND_OFF;
        row.heads_above_prediction = row
            .head_r2_pooled
            .iter()
            .filter(|&&v| v > row.head_prediction_limit)
            .count();
        row.heads_above_prediction_bootstrap = row
            .head_bootstrap_low
            .iter()
            .filter(|&&v| v > row.head_prediction_limit)
            .count();
        match row.role {
            SourceRole::Init => {
                let mut failed: Vec<&str> = Vec::new();
                // NaN compares false: a missing value fails its check.
                if !at_most(0.0, row.margin) {
                    failed.push("bound");
                }
                if !at_most(row.deviation_pooled.abs(), row.prediction_tolerance_pooled) {
                    failed.push("prediction pooled");
                }
                if !at_most(
                    row.deviation_uniform.abs(),
                    row.prediction_tolerance_uniform,
                ) {
                    failed.push("prediction uniform");
                }
                if row.iid_rows && row.population_simulated.is_finite() {
                    let deviation = row.r2_pooled_heldout - row.population_simulated;
                    if !at_most(deviation.abs(), row.population_tolerance) {
                        failed.push("population two-sided");
                    }
                } else if !at_most(row.r2_pooled_heldout, row.population_upper) {
                    failed.push("population upper");
                }
                row.verdict = if failed.is_empty() {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                row.failed_checks = failed.join(";");
            }
            SourceRole::Trained => {
                row.verdict = if row.margin >= 0.0 {
                    Verdict::WithinBound
                } else {
                    Verdict::AboveBound
                };
            }
        }
    }
}

/// `value ≤ limit`, false when either is NaN (a missing value fails its check).
fn at_most(value: f64, limit: f64) -> bool {
    value <= limit
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
    use crate::config::olmo2_preset;
    use crate::stats::init_bound::selection_slack;

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
            split: "fit",
            eigenvalues: vec![1.0; 2048],
        };
        let predictions = rows(values);
        let refs: Vec<&PredictionRow> = predictions.iter().collect();
        let options = LayerCheckOptions {
            role: SourceRole::Init,
            monte_carlo_draws: 0,
            seed: 0,
            iid_layer0: false,
            population_replications: 0,
            stream: "init:olmo2-1b".to_string(),
        };
        let out = layer_rows(
            "init:olmo2-1b",
            &config,
            &[spectrum],
            &refs,
            &BTreeMap::new(),
            &options,
        );
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

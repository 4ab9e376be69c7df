//! verification.md of `ckpt-scan theory`, its pass/fail table and its manifest, rendered from the
//! rows of the checks (no statistics computed here).

use serde::Serialize;

use crate::analysis::finite_sample_check::{FiniteSampleRow, FINITE_SAMPLE_SIGMAS};
use crate::analysis::init_check::{
    GridRow, LayerRow, SourceRole, HEAD_SPREAD_SIGMAS, MONTE_CARLO_SIGMAS,
};
use crate::analysis::layer_check::Verdict;
use crate::analysis::layer_check::{
    init_family_size, BOOTSTRAP_HEAD_QUANTILE, FAMILY_ALPHA, TESTS_PER_INIT_ROW,
};
use crate::analysis::model_check::{source_label, ModelCheckSettings, SourceReport};
use crate::analysis::mutation_check::{
    mutation_model_config, MutationRow, COVARIANCE_SEQUENCES, FIT_SEQUENCES, HELDOUT_SEQUENCES,
    MAX_REFS as MUTATION_MAX_REFS, REPLICATIONS as MUTATION_REPLICATIONS, SEQ_LEN,
    TOPIC_COVARIANCE_SEQUENCES,
};
use crate::output::manifest::{tool_version, ToolVersion};
use crate::report::markdown::NOT_MEASURED;

/// verification_manifest.json: the tool, the settings of every check and what each source was.
#[derive(Serialize)]
pub struct TheoryManifest<'a> {
    pub tool: ToolVersion,
    pub model_checks: &'a ModelCheckSettings,
    pub grid_draws_at_d64: usize,
    pub finite_sample_replications: usize,
    pub finite_sample_sigmas: f64,
    pub monte_carlo_sigmas: f64,
    pub head_spread_sigmas: f64,
    pub sources: &'a [SourceReport],
    pub device: String,
    pub seconds: f64,
}

impl<'a> TheoryManifest<'a> {
    /// The manifest of a run, with the tolerances every check used.
    pub fn new(
        check: &'a ModelCheckSettings,
        grid_draws: usize,
        finite_sample_replications: usize,
        sources: &'a [SourceReport],
        device: String,
        seconds: f64,
    ) -> Self {
        TheoryManifest {
            tool: tool_version(),
            model_checks: check,
            grid_draws_at_d64: grid_draws,
            finite_sample_replications,
            finite_sample_sigmas: FINITE_SAMPLE_SIGMAS,
            monte_carlo_sigmas: MONTE_CARLO_SIGMAS,
            head_spread_sigmas: HEAD_SPREAD_SIGMAS,
            sources,
            device,
            seconds,
        }
    }
}

/// The headline table: per check, rows, passed, and the tolerance used.
pub fn pass_fail_table(
    grid: &[GridRow],
    finite: &[FiniteSampleRow],
    layers: &[LayerRow],
    mutations: &[MutationRow],
) -> String {
    let mut md = String::from("| check | rows | passed | tolerance |\n|---|---|---|---|\n");
    let grid_passed = grid.iter().filter(|r| r.passed()).count();
    md.push_str(&format!(
        "| (a) Monte Carlo of Theorems 1–3 | {} | {grid_passed} | {MONTE_CARLO_SIGMAS} standard errors of the Monte Carlo mean (paired for E R² ≤ ρ̄); 1e-9 for per-draw identities |\n",
        grid.len()
    ));
    if !finite.is_empty() {
        md.push_str(&format!(
            "| (a2) finite-sample formulas of §6.6 (in-sample and held-out R² of OLS with intercept) | {} | {} | {FINITE_SAMPLE_SIGMAS} standard errors of the replication mean (delta method for the ratio of means), per formula |\n",
            finite.len(),
            finite.iter().filter(|r| r.passed()).count()
        ));
    }
    let init: Vec<&LayerRow> = layers
        .iter()
        .filter(|r| r.role == SourceRole::Init)
        .collect();
    if !init.is_empty() {
        let passed = init.iter().filter(|r| r.verdict == Verdict::Pass).count();
        let tests = init_family_size(layers);
        let critical = init.first().map_or(f64::NAN, |r| r.critical_value);
        let replications = init.first().map_or(0, |r| r.prediction_replications);
        md.push_str(&format!(
            "| (b) models at init: measured held-out R² against the prediction (two-sided), the population (two-sided for iid rows, else one-sided) and B(Σ̂ℓ, k·d_h) | {} | {passed} | prediction: critical value {} × replication sd × √(1 + 1/R), R = {replications}; the critical value is Bonferroni for {tests} tests ({TESTS_PER_INIT_ROW} per row) at family-wise α = {FAMILY_ALPHA} (Student t, R − 1 df); bound: selection slack + {HEAD_SPREAD_SIGMAS} × max(SE across heads, σ_W) |\n",
            init.len(),
            fmt(critical)
        ));
    }
    let trained: Vec<&LayerRow> = layers
        .iter()
        .filter(|r| r.role == SourceRole::Trained)
        .collect();
    if !trained.is_empty() {
        let above = trained
            .iter()
            .filter(|r| r.verdict == Verdict::AboveBound)
            .count();
        let heads: usize = trained.iter().map(|r| r.target_heads).sum();
        let heads_above: usize = trained.iter().map(|r| r.heads_above_prediction).sum();
        let heads_above_bootstrap: usize = trained
            .iter()
            .map(|r| r.heads_above_prediction_bootstrap)
            .sum();
        let redraws = trained
            .iter()
            .map(|r| r.heldout_resamples)
            .max()
            .unwrap_or(0);
        md.push_str(&format!(
            "| (c) trained: heads above the prediction (learned structure; not a test) | {} rows, {heads} heads | {heads_above} heads above the prediction, {heads_above_bootstrap} of them on the bootstrap; {above} rows above B | per head: replicated-head mean + Bonferroni normal quantile over all trained heads × sd of one replicated head × √(1 + 1/R); bootstrap: the head's {}% quantile over {redraws} redraws of the held-out sequences above that limit |\n",
            trained.len(),
            BOOTSTRAP_HEAD_QUANTILE * 100.0,
        ));
    }
    if !mutations.is_empty() {
        md.push_str(&format!(
            "| (d) power: honest tiny-model cases pass, deliberate mistakes fail (section (d)) | {} | {} | each mutation: at least one row fails; honest: none |\n",
            mutations.len(),
            mutations.iter().filter(|m| m.as_expected).count()
        ));
    }
    md
}

/// The (a2) section: each finite-sample case, simulated beside its closed forms.
fn finite_sample_markdown(finite: &[FiniteSampleRow]) -> String {
    if finite.is_empty() {
        return String::new();
    }
    let replications = finite.first().map_or(0, |r| r.replications);
    let mut md = String::from("## (a2) Finite-sample formulas (§7 check 2)\n\n");
    md.push_str(&format!(
        "No model. Gaussian rows $x \\sim N(\\mathbf 1, \\operatorname{{diag}}\\lambda)$, one fixed Gaussian draw of the target ($d_h$ columns) and reference ($p = k\\,d_h$ columns) weights per row, whose population pooled $R^2$ is $\\rho^2$ (formula (2)). Each of {replications} replications draws $n$ fit and $n_t$ held-out rows, fits OLS with intercept with the tool's own Gram regression (`src/stats/regression.rs`) and scores it on both splits, the held-out SST about the held-out split's own mean. Simulated = $1-\\sum\\mathrm{{SSE}}/\\sum\\mathrm{{SST}}$ over the replications, the ratio of expectations that §6.6 gives in closed form: in-sample $\\rho^2+(1-\\rho^2)\\,p/(n-1)$, held-out $1-(1-\\rho^2)(1+\\frac1n)\\frac{{n-2}}{{n-p-2}}\\frac{{n_t}}{{n_t-1}}$. `±` is its delta-method standard error from the replications; a row passes when each simulated value lies within {FINITE_SAMPLE_SIGMAS} standard errors of its formula. \"mean of ratio\" is the mean of each replication's own $R^2$ (reported, not asserted). Every row is in `verification_finite_sample.csv`.\n\n"
    ));
    md.push_str("| spectrum | d | d_h | k | p | n | n_t | ρ² | in-sample (sim) | formula | mean of ratio | held-out (sim) | formula | mean of ratio | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in finite {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ± {:.4} | {} | {} | {} ± {:.4} | {} | {} | {} |\n",
            r.spectrum,
            r.dimension,
            r.head_dim,
            r.k,
            r.features,
            r.fit_rows,
            r.heldout_rows,
            fmt(r.rho2),
            fmt(r.in_sample),
            r.in_sample_se,
            fmt(r.in_sample_formula),
            fmt(r.in_sample_mean_of_ratio),
            fmt(r.heldout),
            r.heldout_se,
            fmt(r.heldout_formula),
            fmt(r.heldout_mean_of_ratio),
            if r.passed() {
                "pass".to_string()
            } else {
                format!("FAIL: {}", r.failures)
            }
        ));
    }
    md.push('\n');
    md
}

/// What "absent at init" means for one source, from its k = 1 rows of the first kind: the
/// population R² of random projections against the held-out R² by sequence.
fn absent_at_init_note(rows: &[&LayerRow]) -> String {
    let first_kind = rows.first().map(|r| r.kind);
    let at: Vec<&&LayerRow> = rows
        .iter()
        .filter(|r| Some(r.kind) == first_kind && r.k == 1)
        .collect();
    let (Some(first), Some(last)) = (at.first(), at.last()) else {
        return String::new();
    };
    if first.role != SourceRole::Init {
        return String::new();
    }
    let range = |f: &dyn Fn(&LayerRow) -> f64| {
        let values: Vec<f64> = at.iter().map(|r| f(r)).filter(|v| v.is_finite()).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{}–{}", fmt(lo), fmt(hi))
    };
    format!(
        "\n*What \"absent at init\" means here* ({}, k = 1). Population: random projections of this layer's input covariance predict $\\mathbb{{E}}R^2_{{\\mathrm{{pool}}}}$ = {} at layer {} and {} at layer {} (range {} over layers; isotropic value {}): linear predictability between heads is *present* in the population at init, set by the input's spectrum. Held out by sequence, the prediction for this design is {} at layer {} and {} at layer {}, and the measurement {} and {}: the design (finite $n$, $n_t$ and, from layer 1 on, a per-sequence component shared by all positions that the fit learns on {} fit rows but cannot carry to new sequences) removes {} of it. So on this evidence \"absent at init\" is a statement about held-out prediction across sequences, not about the population.\n",
        first.source,
        fmt(first.monte_carlo_r2_pooled),
        first.layer,
        fmt(last.monte_carlo_r2_pooled),
        last.layer,
        range(&|r| r.monte_carlo_r2_pooled),
        fmt(first.isotropic),
        fmt(first.predicted_r2_pooled),
        first.layer,
        fmt(last.predicted_r2_pooled),
        last.layer,
        fmt(first.r2_pooled_heldout),
        fmt(last.r2_pooled_heldout),
        first.n_fit,
        range(&|r| r.design_deflation),
    )
}

/// The (d) section: each honest case and mutation of the power check, with its failing rows.
fn mutation_markdown(mutations: &[MutationRow]) -> String {
    if mutations.is_empty() {
        return String::new();
    }
    let mut md = String::from("## (d) Power: mutations that must fail\n\n");
    md.push_str(&format!(
        "A tiny OLMo-2 model built in code (d = {}, {} heads of d_h = {}, {} layers, {} token ids; `src/analysis/mutation_check.rs`), {} fit, {} held-out and {} covariance sequences ({} in the topic cases, whose sequences carry 2 token ids each) of {} tokens, k ≤ {}, {} replications, judged as (b) with the family of each case. Honest cases must fail no row; each mutation must fail at least one. `tests/it/theory.rs` asserts the same for every case.\n\n| case | rows failing / total | failing checks (rows) | as required |\n|---|---|---|---|\n",
        mutation_model_config().hidden_size,
        mutation_model_config().num_attention_heads,
        mutation_model_config().head_dim,
        mutation_model_config().num_hidden_layers,
        mutation_model_config().vocab_size,
        FIT_SEQUENCES,
        HELDOUT_SEQUENCES,
        COVARIANCE_SEQUENCES,
        TOPIC_COVARIANCE_SEQUENCES,
        SEQ_LEN,
        MUTATION_MAX_REFS,
        MUTATION_REPLICATIONS,
    ));
    for m in mutations {
        md.push_str(&format!(
            "| {} | {} / {} | {} | {} |\n",
            m.description,
            m.failed,
            m.rows,
            if m.failed_by_check.is_empty() {
                NOT_MEASURED
            } else {
                &m.failed_by_check
            },
            if m.as_expected { "yes" } else { "**no**" }
        ));
    }
    md.push('\n');
    md
}

/// A value to four places, or [`NOT_MEASURED`] where it is not finite.
fn fmt(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        NOT_MEASURED.to_string()
    }
}

/// verification.md from the rows (no statistics computed here).
pub fn verification_markdown(
    grid: &[GridRow],
    finite: &[FiniteSampleRow],
    layers: &[LayerRow],
    mutations: &[MutationRow],
    reports: &[SourceReport],
    check: &ModelCheckSettings,
    grid_draws: usize,
) -> String {
    let tool = tool_version();
    let mut md = String::from("# Verification of the init-time bound\n\n");
    md.push_str("Written by `ckpt-scan theory` (`make theory`); do not edit by hand. The statements and proofs are in [init_bound.md](init_bound.md); this file checks them as its §7 specifies. Notation: $m = k\\,d_h$, $r$ = numerical rank of $\\Sigma$, $B(\\Sigma,m)$ = top-$m$ eigenvalue share, floor = $m/r$, $\\bar\\rho = \\mathbb{E}\\operatorname{tr}(P_M\\Sigma)/\\operatorname{tr}\\Sigma$.\n\n");
    md.push_str("## Pass/fail\n\n");
    md.push_str(&pass_fail_table(grid, finite, layers, mutations));
    md.push('\n');

    md.push_str("## (a) Monte Carlo of the theorems\n\n");
    md.push_str(&format!("Exact population $R^2$ (formula (2), no data) of a target head from the first $k$ of 5 reference heads, for independent weight draws in $\\Sigma$'s eigenbasis ($\\Sigma = \\operatorname{{diag}}\\lambda$; for truncated-normal weights this is the coordinate-aligned case of §6.3). Draws: {grid_draws} at $d = 64$, scaled by $64/d$ at larger $d$ (at least 16). `±` is one standard error. Asserted per row ({MONTE_CARLO_SIGMAS} SE): $\\operatorname{{tr}}(P_M\\Sigma)/\\operatorname{{tr}}\\Sigma \\le B$ on every draw (Theorem 1/Ky Fan); isotropic: $\\bar\\rho = m/r$ exactly, $\\mathbb{{E}}R^2 = m/r$, and for Gaussian weights the Beta variance (Theorem 3); Gaussian weights: $m/r \\le \\mathbb{{E}}R^2_{{\\mathrm{{unif}}}}, \\mathbb{{E}}R^2_{{\\mathrm{{pool}}}} \\le \\bar\\rho \\le B$ (Theorem 2(ii)). Measured spectra are the input covariances $\\hat\\Sigma_\\ell$ (own split) of the first and last checked layer of each model below.\n\n"));
    md.push_str("| spectrum | law | d | d_h | k | m/r | E R²pool | E R²unif | ρ̄ | B | Var R²pool / Beta | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in grid {
        let variance = if r.beta_variance.is_finite() {
            format!("{:.3}", r.r2_pooled_variance / r.beta_variance)
        } else {
            NOT_MEASURED.into()
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} ± {:.4} | {} ± {:.4} | {} | {} | {variance} | {} |\n",
            r.spectrum,
            r.law.name(),
            r.dimension,
            r.head_dim,
            r.k,
            fmt(r.floor),
            fmt(r.r2_pooled),
            r.r2_pooled_se,
            fmt(r.r2_uniform),
            r.r2_uniform_se,
            fmt(r.rho_bar),
            fmt(r.bound),
            if r.passed() { "pass".to_string() } else { format!("FAIL: {}", r.failures) }
        ));
    }
    md.push('\n');

    md.push_str(&finite_sample_markdown(finite));

    md.push_str("## (b) Models at init and (c) trained checkpoints, per layer\n\n");
    md.push_str(&format!(
        "Per layer: the held-out $R^2$ of `predict` at capture point `proj` (pre-norm, pre-RoPE: $y = W_t^\\top x$, the theorems' setting; OLMo-2: the raw residual stream entering self-attention, Llama: the input-normed stream), references chosen by `topn` on the fit split, split by sequence. Measured = mean over target heads of the held-out pooled $R^2$ (uniform beside it). $\\hat\\Sigma_\\ell$ is estimated on its own split of {} further tokens (sequences after the held-out ones; never fitted or scored), so the bound and the population value do not share rows with the measurement; its rows and $n/d$ are in each table. Each init row is judged by three checks, and fails if any fails:\n\n1. **Prediction (two-sided).** {} replications redraw every head of the layer from the source's own init law (truncated normal for `scheme=olmo`, Gaussian otherwise) and run them through the same selection, fit and score on the layer's *measured* fit and held-out input moments. At init a layer's weights are independent of its input, so the measured layer mean is one draw from exactly this law: the finite-sample deflation, the selection gain and the per-sequence structure of the split are in the prediction, nothing is approximated, and no Gaussianity is assumed. Tolerance = $c \\cdot s_R\\sqrt{{1+1/R}}$, where $s_R$ is the replications' sd of the layer mean and $\\sqrt{{1+1/R}}$ makes it a prediction interval for one new draw; $c$ is the Bonferroni critical value (Student $t$, $R-1$ df) for all tests of all init rows of this run at family-wise level $\\alpha = {FAMILY_ALPHA}$ ({TESTS_PER_INIT_ROW} tests per row: pooled, uniform, population). Holm's procedure would flag the same run as failing (its first step is this one).\n2. **Population.** Where rows are iid by construction (`--text random`, layer 0: the clean case), two-sided against population replications: Gaussian weights projecting $n$ fit and $n_t$ held-out Gaussian rows drawn from $N(0,\\hat\\Sigma_\\ell)$, i.e. the Monte Carlo $\\mathbb{{E}}R^2$ of random projections of the input covariance minus the exact held-out deflation, with the spread of both weights and data; same critical value. Elsewhere one-sided: measured $\\le$ Monte Carlo $\\mathbb{{E}}R^2_{{\\mathrm{{pool}}}}(\\hat\\Sigma_\\ell)$ + selection slack + $c\\, s_R\\sqrt{{1+1/R}}$ (Theorem 2 with Claim S: held out by sequence, the ratio-of-expectations $R^2$ never exceeds the population value).\n3. **Theorem (one-sided, as before).** Both measured values $\\le B_\\ell$ + selection slack + {HEAD_SPREAD_SIGMAS} × max(SE across target heads, σ_W); σ_W is the sd of one head's $R^2$ over the Monte Carlo draws of $\\hat\\Sigma_\\ell$ ({} draws; isotropic Beta sd when none are drawn). The selection slack is $\\sqrt{{2\\ln N\\cdot v}}$ over the $N = \\binom{{H-1}}{{k}}$ candidate sets with $v$ the larger of the isotropic proxy variance $1/(2rd_h+4)$ and σ_W² — init_bound.md §6.8's heuristic for anisotropic $\\Sigma$. The bound margin $B_\\ell$ − measured is reported beside it.\n\nTheorem 2 ($\\mathbb{{E}}[\\text{{ratio}}] \\le B$ and the floor) is proven for Gaussian weights only. The `scheme=olmo` rows are truncated-normal weights: for them check 3 relies on Theorem 1 (second moments) for $\\bar\\rho$ and on the Monte Carlo of §6.3/A.2 for the expectation of the ratio, not on a proof; checks 1 and 2 (clean case) do not depend on it. Trained rows get the same prediction as a null (random projections of the checkpoint's own input), and per head the count of heads above the per-head prediction limit (the replicated heads' mean + Bonferroni normal quantile over all trained heads × their sd × $\\sqrt{{1+1/R}}$). That limit holds the null's spread over weights; the measurement's own spread over *which* sequences were held out is a bootstrap: {} redraws of the held-out sequences with replacement, each rescoring the maps fitted on the fit split (`src/analysis/heldout_bootstrap.rs`), all heads of a layer on the same redraws. A head counts as above *on the bootstrap* when its {}% quantile over the redraws is above the limit; the layer mean's 95% percentile interval is in each trained table. Settings: text `{}`, {} tokens, seq-len {}, fit split {}, kinds {}, k ≤ {} (capped at heads − 1 per kind), layers {}, seed {}. Every row is in `verification_layers.csv`.\n\n",
        check.covariance_tokens,
        check.prediction_replications,
        check.layer_draws,
        check.heldout_resamples,
        BOOTSTRAP_HEAD_QUANTILE * 100.0,
        check.text,
        check.tokens,
        check.seq_len,
        check.split,
        check.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        check.max_refs,
        check.layers.as_ref().map_or("all".to_string(), |l| l.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")),
        check.seed,
    ));
    for report in reports {
        let rows: Vec<&LayerRow> = layers.iter().filter(|r| r.source == report.label).collect();
        let role = report.role.name();
        md.push_str(&format!("### `{}` ({role})\n\n", report.label));
        md.push_str("Summary over layers per kind and k: the largest measured pooled held-out R², the bound range, the smallest margin (bound + tolerance − measured), and the verdicts.\n\n");
        md.push_str("| kind | k | layers | measured pooled (max) | measured uniform (max) | B range | isotropic m/d | smallest margin | verdicts |\n|---|---|---|---|---|---|---|---|---|\n");
        let mut keys: Vec<(crate::capture::HeadKind, usize)> =
            rows.iter().map(|r| (r.kind, r.k)).collect();
        keys.sort();
        keys.dedup();
        for (kind, k) in keys {
            let sel: Vec<&&LayerRow> = rows.iter().filter(|r| r.kind == kind && r.k == k).collect();
            let max = |f: &dyn Fn(&LayerRow) -> f64| {
                sel.iter().map(|r| f(r)).fold(f64::NEG_INFINITY, f64::max)
            };
            let min = |f: &dyn Fn(&LayerRow) -> f64| {
                sel.iter().map(|r| f(r)).fold(f64::INFINITY, f64::min)
            };
            let mut verdicts: Vec<(Verdict, usize)> = Vec::new();
            for r in &sel {
                match verdicts.iter_mut().find(|(v, _)| *v == r.verdict) {
                    Some((_, n)) => *n += 1,
                    None => verdicts.push((r.verdict, 1)),
                }
            }
            md.push_str(&format!(
                "| {} | {k} | {} | {} | {} | {}–{} | {} | {} | {} |\n",
                kind.name().to_uppercase(),
                sel.len(),
                fmt(max(&|r| r.r2_pooled_heldout)),
                fmt(max(&|r| r.r2_uniform_heldout)),
                fmt(min(&|r| r.bound)),
                fmt(max(&|r| r.bound)),
                fmt(sel.first().map_or(f64::NAN, |r| r.isotropic)),
                fmt(min(&|r| r.margin)),
                verdicts
                    .iter()
                    .map(|(v, n)| format!("{n} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        md.push_str("\nPer layer at k = 1 (K, or the first kind checked). Measured and predicted are layer means of held-out pooled R²; population = Monte Carlo E R²pool of Σ̂ (no data), and after §6.6's held-out deflation for iid rows; design deflation = population − predicted; bound margin = B − measured; heads above = target heads above the per-head prediction limit; bootstrap (trained) = the measured mean's 95% interval over redraws of the held-out sequences, and the heads above the limit on 95% of them.\n\n| layer | Σ̂ rows (n/d) | measured pooled | measured uniform | predicted ± sd | deviation | tolerance | population | deflated (§6.6) | design deflation | B | bound margin | heads above | bootstrap | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let first_kind = if rows.iter().any(|r| r.kind == crate::capture::HeadKind::K) {
            Some(crate::capture::HeadKind::K)
        } else {
            rows.first().map(|r| r.kind)
        };
        for r in rows
            .iter()
            .filter(|r| Some(r.kind) == first_kind && r.k == 1)
        {
            md.push_str(&format!(
                "| {} | {} ({:.1}, {}) | {} ± {:.4} | {} ± {:.4} | {} ± {:.4} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {}{} |\n",
                r.layer,
                r.covariance_rows,
                r.covariance_rows_per_dimension,
                r.covariance_split,
                fmt(r.r2_pooled_heldout),
                r.r2_pooled_se,
                fmt(r.r2_uniform_heldout),
                r.r2_uniform_se,
                fmt(r.predicted_r2_pooled),
                r.predicted_r2_pooled_sd,
                fmt(r.deviation_pooled),
                fmt(r.prediction_tolerance_pooled),
                fmt(r.monte_carlo_r2_pooled),
                fmt(r.population_heldout_formula),
                fmt(r.design_deflation),
                fmt(r.bound),
                fmt(r.bound_margin),
                r.heads_above_prediction,
                r.target_heads,
                if r.heldout_resamples > 0 {
                    format!(
                        "[{}, {}]; {}/{}",
                        fmt(r.r2_pooled_ci_low),
                        fmt(r.r2_pooled_ci_high),
                        r.heads_above_prediction_bootstrap,
                        r.target_heads
                    )
                } else {
                    NOT_MEASURED.to_string()
                },
                r.verdict,
                if r.failed_checks.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.failed_checks)
                }
            ));
        }
        md.push_str(&absent_at_init_note(&rows));
        md.push('\n');
    }
    if reports.is_empty() {
        md.push_str("No model sources were measured in this run.\n\n");
    }
    md.push_str(&mutation_markdown(mutations));
    md.push_str("## Plots\n\n");
    md.push_str("- `verification_grid.png` (and `.svg`): per spectrum, E R²pool with its 95 % band (±1.96 SE) against k, beside ρ̄, the bound B and the floor m/r.\n");
    if !layers.is_empty() {
        md.push_str("- `verification_layers.png` (and `.svg`): per source and kind, measured held-out pooled R² per layer at k = 1 and the largest k, against the layer's bound.\n");
    }
    md.push_str("\n![Monte Carlo grid](verification_grid.png)\n\n");
    if !layers.is_empty() {
        md.push_str("![Per-layer check](verification_layers.png)\n\n");
    }
    md.push_str("## Provenance\n\n");
    md.push_str(&format!(
        "Tool `{}` {} (git `{}`); Monte Carlo seed {}; weight draws from ChaCha8 streams keyed by (seed, grid cell, draw) as for random init (`src/stats/random.rs`).\n\n",
        tool.name, tool.version, tool.git_sha, check.seed
    ));
    md.push_str("| source | role | kind | revision sha | init | tokenizer | token-set sha256 | sequences (fit) × seq-len | seconds |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | `{}` | {} ({}) × {} | {:.0} |\n",
            r.label,
            r.role.name(),
            r.provenance.kind,
            r.provenance.revision_sha.as_deref().unwrap_or(NOT_MEASURED),
            r.provenance.init.as_deref().unwrap_or(NOT_MEASURED),
            source_label(&r.tokenizer),
            &r.token_set_hash[..16.min(r.token_set_hash.len())],
            r.sequences,
            r.fit_sequences,
            r.seq_len,
            r.seconds
        ));
    }
    md
}

//! `ckpt-scan theory`: verifies the init-time bound of theory/init_bound.md as its §7 specifies —
//! (a) Monte Carlo of the theorems over a grid of (d, d_h, k, spectrum, weight law), (a2) the
//! finite-sample formulas of §6.6 against simulated OLS, (b) models at
//! init per layer against the bound of their measured input spectrum, (c) where trained
//! checkpoints exceed it — and writes verification.md, CSVs, plots and a manifest.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::analysis::finite_sample_check::{
    default_cases, finite_sample_row, FiniteSampleRow, FINITE_SAMPLE_SIGMAS,
};
use crate::analysis::init_check::{
    grid_rows, layer_rows, BoundSink, GridRow, LayerCheckOptions, LayerRow, LayerSpectrum,
    SourceRole, HEAD_SPREAD_SIGMAS, MONTE_CARLO_SIGMAS,
};
use crate::cli::TheoryArgs;
use crate::commands::predict::{build_token_set, TOKENS_PER_BATCH};
use crate::data::corpora::TextSource;
use crate::data::paths::{data_root, smollm2_gguf};
use crate::data::token_set::{Split, TokenSetOptions};
use crate::model::config::ModelConfig;
use crate::model::forward::{forward_streamed, OutputHead};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::atomic::{check_output_dir, write_atomic};
use crate::report::csv::write_csv;
use crate::report::manifest::{tool_version, ToolVersion};
use crate::report::plot::{
    distinct_in_order, write_small_multiples, LegendPosition, LineChart, Series, SmallMultiples,
};
use crate::settings::{describe, Settings};
use crate::source::{open_source_with, Provenance};
use crate::stats::init_bound::{Spectrum, WeightLaw};

/// The init sources checked unless `--no-default-sources`: both init schemes of OLMo-2-1B.
pub const DEFAULT_INIT_SOURCES: [&str; 2] = [
    "init:olmo2-1b?seed=0&scheme=olmo",
    "init:olmo2-1b?seed=0&scheme=hf",
];

/// Largest reference count in the Monte Carlo grid.
const GRID_MAX_K: usize = 5;

/// One cell family of the Monte Carlo grid: a spectrum and law, all k at once.
#[derive(Clone, Debug)]
pub struct GridSpec {
    pub spectrum: Spectrum,
    pub law: WeightLaw,
    pub head_dim: usize,
    pub draws: usize,
}

/// Draws at dimension `d` for `base` draws at d = 64: `base·(64/d)^1.5`, at least 16. A draw
/// costs ∝ d·m² while the spread of R² shrinks like 1/√(d·d_h), so the standard error stays small.
pub fn draws_at(base: usize, dimension: usize) -> usize {
    let scale = (64.0 / dimension.max(1) as f64).powf(1.5).min(1.0);
    ((base as f64 * scale).round() as usize).max(16)
}

/// Runs `f` with libtorch limited to one thread, then restores the previous count. The Monte Carlo
/// is many small LAPACK calls; with several threads on a loaded 2-core machine OpenMP's spinning
/// made them 10–50× slower (measured: a 64×40 QR took 20 ms with 2 threads, 0.4 ms with 1).
fn single_threaded<T>(f: impl FnOnce() -> T) -> T {
    let previous = tch::get_num_threads();
    tch::set_num_threads(1);
    let result = f();
    tch::set_num_threads(previous);
    result
}

/// The model-free grid of §7 check 1: d ∈ {64, 256, 2048} with d_h = d/8, d/8, d/16; isotropic,
/// power-law and rank-deficient spectra; Gaussian and (at d = 64, coordinate-aligned)
/// truncated-normal weights.
pub fn default_grid(base_draws: usize, dims: &[usize]) -> Vec<GridSpec> {
    let mut grid = Vec::new();
    let d = 64;
    let small = [
        Spectrum::Isotropic {
            dimension: d,
            rank: d,
        },
        Spectrum::Isotropic {
            dimension: d,
            rank: 48,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 0.5,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 2.0,
            rank: d,
        },
        Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: 48,
        },
    ];
    let small_laws: &[WeightLaw] = if dims.contains(&d) {
        &[WeightLaw::Gaussian, WeightLaw::TruncatedNormal]
    } else {
        &[]
    };
    for &law in small_laws {
        for spectrum in &small {
            grid.push(GridSpec {
                spectrum: spectrum.clone(),
                law,
                head_dim: 8,
                draws: draws_at(base_draws, d),
            });
        }
    }
    for (d, head_dim) in [(256, 32), (2048, 128)]
        .into_iter()
        .filter(|(d, _)| dims.contains(d))
    {
        for spectrum in Spectrum::isotropic_and_power_law(d) {
            grid.push(GridSpec {
                spectrum,
                law: WeightLaw::Gaussian,
                head_dim,
                draws: draws_at(base_draws, d),
            });
        }
    }
    grid
}

/// What was measured for one model source.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub role: SourceRole,
    /// The spec with the data folder written as `$CKPT_SCAN_DATA`.
    pub label: String,
    pub provenance: Provenance,
    pub config: ModelConfig,
    pub tokenizer: String,
    pub token_set_hash: String,
    pub sequences: usize,
    pub fit_sequences: usize,
    pub seq_len: usize,
    pub seconds: f64,
    #[serde(skip)]
    pub spectra: Vec<LayerSpectrum>,
    #[serde(skip)]
    pub rows: Vec<LayerRow>,
}

/// Settings of the model checks, recorded in the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCheckSettings {
    pub text: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub split: f64,
    pub kinds: Vec<crate::capture::HeadKind>,
    pub max_refs: usize,
    pub layers: Option<Vec<i64>>,
    pub capture: &'static str,
    pub selection: &'static str,
    pub layer_draws: usize,
    pub seed: u64,
}

/// Refuses flag values that cannot work, before any model is opened.
pub fn check_args(args: &TheoryArgs) -> Result<()> {
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if args.seq_len < 2 {
        bail!("--seq-len must be at least 2, got {}", args.seq_len);
    }
    if !(args.split > 0.0 && args.split < 1.0) {
        bail!(
            "--split must lie strictly between 0 and 1, got {}",
            args.split
        );
    }
    if args.max_refs == 0 {
        bail!("--max-refs must be at least 1");
    }
    if args.kinds.is_empty() {
        bail!("--kinds: choose at least one of q, k, v");
    }
    if args.draws < 2 {
        bail!(
            "--draws must be at least 2 (a standard error needs two draws), got {}",
            args.draws
        );
    }
    if args.replications < 2 {
        bail!(
            "--replications must be at least 2 (a standard error needs two), got {}",
            args.replications
        );
    }
    if args.layer_draws == 1 {
        bail!("--layer-draws must be 0 (no Monte Carlo per layer) or at least 2, got 1");
    }
    if let Some(bad) = args
        .grid_dims
        .iter()
        .find(|d| ![64, 256, 2048].contains(*d))
    {
        bail!("--grid-dims: {bad} is not one of 64, 256, 2048");
    }
    if args.layers.as_ref().is_some_and(|l| l.is_empty()) {
        bail!("--layers: name at least one layer");
    }
    Ok(())
}

/// The sources to measure, in order: init defaults, extra init, trained default, extra trained.
pub fn sources(args: &TheoryArgs) -> Vec<(SourceRole, String)> {
    let mut list = Vec::new();
    if !args.no_default_sources {
        list.extend(
            DEFAULT_INIT_SOURCES
                .iter()
                .map(|s| (SourceRole::Init, s.to_string())),
        );
    }
    list.extend(args.init.iter().map(|s| (SourceRole::Init, s.clone())));
    if !args.no_default_sources {
        list.push((
            SourceRole::Trained,
            format!("gguf:{}", smollm2_gguf().display()),
        ));
    }
    list.extend(
        args.trained
            .iter()
            .map(|s| (SourceRole::Trained, s.clone())),
    );
    list
}

/// `spec` with the data folder written as `$CKPT_SCAN_DATA`, so reports do not name a home folder.
pub fn source_label(spec: &str) -> String {
    let root = data_root().display().to_string();
    if root.is_empty() {
        return spec.to_string();
    }
    spec.replace(&root, "$CKPT_SCAN_DATA")
}

/// Opens `spec`, runs its tokens through it with a [`BoundSink`], and compares per layer.
pub fn measure_source(
    role: SourceRole,
    spec: &str,
    check: &ModelCheckSettings,
    tokenizer: Option<&Path>,
    settings: &Settings,
) -> Result<SourceReport> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let source = open_source_with(spec, &settings.hub)?;
    let config = source.config().clone();
    let seq_len = check
        .seq_len
        .min(config.max_position_embeddings.max(2) as usize);
    let token_options = TokenSetOptions {
        tokens: check.tokens,
        seq_len,
        fit_fraction: check.split,
        seed: check.seed,
        separator: config.eos_token_id,
    };
    let text = TextSource::parse(&check.text);
    let (token_set, tokenizer_name) =
        build_token_set(source.as_ref(), &text, &token_options, tokenizer)?;
    let label = source_label(spec);
    printer.note(format!(
        "theory: {} ({}): {} sequences × {seq_len} tokens ({} fit), capture proj, {}",
        label,
        match role {
            SourceRole::Init => "init",
            SourceRole::Trained => "trained",
        },
        token_set.sequences.len(),
        token_set.fit_sequences,
        describe(&settings.load)
    ));
    let batches = token_set.batches(TOKENS_PER_BATCH);
    let splits: Vec<Split> = batches.iter().map(|(_, s)| *s).collect();
    let tokens: Vec<_> = batches.into_iter().map(|(t, _)| t).collect();
    let mut sink = BoundSink::new(
        &check.kinds,
        check.max_refs,
        check.layers.clone(),
        &label,
        &config,
        splits,
    )?;
    let mut progress = Progress::new(&printer, "theory", "layer", config.num_hidden_layers as u64);
    progress.set_message(label.clone());
    progress.set_position(0.0);
    forward_streamed(
        source.as_ref(),
        &tokens,
        &mut sink,
        &settings.load,
        OutputHead::None,
        &settings.hidden_budget,
        Some(&mut |done, _| progress.set_position(done as f64)),
    )?;
    progress.finish();
    let options = LayerCheckOptions {
        role,
        monte_carlo_draws: check.layer_draws,
        seed: check.seed,
    };
    let rows = single_threaded(|| {
        layer_rows(
            &label,
            &config,
            &sink.spectra,
            &sink.prediction_rows(),
            &options,
        )
    });
    Ok(SourceReport {
        role,
        label,
        provenance: source.provenance().clone(),
        config,
        tokenizer: tokenizer_name,
        token_set_hash: token_set.hash.clone(),
        sequences: token_set.sequences.len(),
        fit_sequences: token_set.fit_sequences,
        seq_len,
        seconds: start.elapsed().as_secs_f64(),
        spectra: sink.spectra,
        rows,
    })
}

/// Grid cells of measured spectra: the first and last checked layer of every source.
pub fn measured_grid(reports: &[SourceReport], draws: usize) -> Vec<GridSpec> {
    let mut grid = Vec::new();
    for report in reports {
        let mut picked: Vec<&LayerSpectrum> = report.spectra.iter().take(1).collect();
        if let Some(last) = report.spectra.last().filter(|_| report.spectra.len() > 1) {
            picked.push(last);
        }
        for spectrum in picked {
            grid.push(GridSpec {
                spectrum: Spectrum::Measured {
                    name: format!("{} layer {}", report.label, spectrum.layer),
                    eigenvalues: spectrum.eigenvalues.clone(),
                },
                law: WeightLaw::Gaussian,
                head_dim: report.config.head_dim as usize,
                draws,
            });
        }
    }
    grid
}

#[derive(Serialize)]
struct Manifest<'a> {
    tool: ToolVersion,
    model_checks: &'a ModelCheckSettings,
    grid_draws_at_d64: usize,
    finite_sample_replications: usize,
    finite_sample_sigmas: f64,
    monte_carlo_sigmas: f64,
    head_spread_sigmas: f64,
    sources: &'a [SourceReport],
    device: String,
    seconds: f64,
}

pub fn run(args: &TheoryArgs, settings: &Settings) -> Result<()> {
    check_args(args)?;
    check_output_dir(&args.out, "--out")?;
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let check = ModelCheckSettings {
        text: TextSource::parse(&args.text).name(),
        tokens: args.tokens,
        seq_len: args.seq_len,
        split: args.split,
        kinds: args.kinds.clone(),
        max_refs: args.max_refs,
        layers: args.layers.clone(),
        capture: "proj",
        selection: "topn",
        layer_draws: args.layer_draws,
        seed: args.seed,
    };
    let mut reports = Vec::new();
    for (role, spec) in sources(args) {
        reports.push(measure_source(
            role,
            &spec,
            &check,
            args.tokenizer.as_deref(),
            settings,
        )?);
    }
    let grid_start = Instant::now();
    let mut grid = default_grid(args.draws, &args.grid_dims);
    grid.extend(measured_grid(&reports, draws_at(args.draws, 1024)));
    let grid_out: Vec<GridRow> = single_threaded(|| {
        grid.iter()
            .flat_map(|spec| {
                grid_rows(
                    &spec.spectrum,
                    spec.law,
                    spec.head_dim,
                    GRID_MAX_K,
                    spec.draws,
                    args.seed,
                )
            })
            .collect()
    });
    printer.note(format!(
        "theory: Monte Carlo grid, {} cells in {:.1} s",
        grid_out.len(),
        grid_start.elapsed().as_secs_f64()
    ));
    let finite_start = Instant::now();
    let finite_out = single_threaded(|| {
        default_cases()
            .iter()
            .map(|case| finite_sample_row(case, args.replications, args.seed))
            .collect::<Result<Vec<FiniteSampleRow>>>()
    })?;
    printer.note(format!(
        "theory: finite-sample check, {} cases × {} replications in {:.1} s",
        finite_out.len(),
        args.replications,
        finite_start.elapsed().as_secs_f64()
    ));
    let layer_out: Vec<LayerRow> = reports.iter().flat_map(|r| r.rows.clone()).collect();

    let out = &args.out;
    write_csv(&out.join("verification_grid.csv"), &grid_out)?;
    write_csv(&out.join("verification_layers.csv"), &layer_out)?;
    write_csv(&out.join("verification_finite_sample.csv"), &finite_out)?;
    write_small_multiples(&grid_chart(&grid_out), &out.join("verification_grid"))?;
    if !layer_out.is_empty() {
        write_small_multiples(&layer_chart(&layer_out), &out.join("verification_layers"))?;
    }
    let manifest = Manifest {
        tool: tool_version(),
        model_checks: &check,
        grid_draws_at_d64: args.draws,
        finite_sample_replications: args.replications,
        finite_sample_sigmas: FINITE_SAMPLE_SIGMAS,
        monte_carlo_sigmas: MONTE_CARLO_SIGMAS,
        head_spread_sigmas: HEAD_SPREAD_SIGMAS,
        sources: &reports,
        device: describe(&settings.load),
        seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(
        &out.join("verification_manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let markdown = verification_markdown(
        &grid_out,
        &finite_out,
        &layer_out,
        &reports,
        &check,
        args.draws,
    );
    write_atomic(&out.join("verification.md"), markdown.as_bytes())?;
    let summary = pass_fail_table(&grid_out, &finite_out, &layer_out);
    printer.result(&summary);
    printer.note(format!(
        "wrote {} ({:.1} s)",
        out.join("verification.md").display(),
        start.elapsed().as_secs_f64()
    ));
    let failed_grid = grid_out.iter().filter(|r| !r.passed()).count();
    let failed_finite = finite_out.iter().filter(|r| !r.passed()).count();
    let failed_init = layer_out
        .iter()
        .filter(|r| r.role == SourceRole::Init && r.verdict != "pass")
        .count();
    if failed_grid + failed_finite + failed_init > 0 {
        bail!(
            "theory: {failed_grid} Monte Carlo rows, {failed_finite} finite-sample rows and {failed_init} init rows failed (see {})",
            out.join("verification.md").display()
        );
    }
    Ok(())
}

/// The headline table: per check, rows, passed, and the tolerance used.
pub fn pass_fail_table(
    grid: &[GridRow],
    finite: &[FiniteSampleRow],
    layers: &[LayerRow],
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
        let passed = init.iter().filter(|r| r.verdict == "pass").count();
        md.push_str(&format!(
            "| (b) models at init: held-out R² ≤ B(Σ̂ℓ, k·d_h) | {} | {passed} | selection slack √(2 ln C(H−1,k)/(2 r d_h + 4)) + {HEAD_SPREAD_SIGMAS} × max(standard error across target heads, sd of one head's R² over weight draws) |\n",
            init.len()
        ));
    }
    let trained: Vec<&LayerRow> = layers
        .iter()
        .filter(|r| r.role == SourceRole::Trained)
        .collect();
    if !trained.is_empty() {
        let above = trained
            .iter()
            .filter(|r| r.verdict == "above bound")
            .count();
        md.push_str(&format!(
            "| (c) trained: rows above the init bound (learned structure; not a test) | {} | {above} above | same tolerance as (b) |\n",
            trained.len()
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

fn fmt(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "—".to_string()
    }
}

/// verification.md from the rows (no statistics computed here).
pub fn verification_markdown(
    grid: &[GridRow],
    finite: &[FiniteSampleRow],
    layers: &[LayerRow],
    reports: &[SourceReport],
    check: &ModelCheckSettings,
    grid_draws: usize,
) -> String {
    let tool = tool_version();
    let mut md = String::from("# Verification of the init-time bound\n\n");
    md.push_str("Written by `ckpt-scan theory` (`make theory`); do not edit by hand. The statements and proofs are in [init_bound.md](init_bound.md); this file checks them as its §7 specifies. Notation: $m = k\\,d_h$, $r$ = numerical rank of $\\Sigma$, $B(\\Sigma,m)$ = top-$m$ eigenvalue share, floor = $m/r$, $\\bar\\rho = \\mathbb{E}\\operatorname{tr}(P_M\\Sigma)/\\operatorname{tr}\\Sigma$.\n\n");
    md.push_str("## Pass/fail\n\n");
    md.push_str(&pass_fail_table(grid, finite, layers));
    md.push('\n');

    md.push_str("## (a) Monte Carlo of the theorems\n\n");
    md.push_str(&format!("Exact population $R^2$ (formula (2), no data) of a target head from the first $k$ of 5 reference heads, for independent weight draws in $\\Sigma$'s eigenbasis ($\\Sigma = \\operatorname{{diag}}\\lambda$; for truncated-normal weights this is the coordinate-aligned case of §6.3). Draws: {grid_draws} at $d = 64$, scaled by $64/d$ at larger $d$ (at least 16). `±` is one standard error. Asserted per row ({MONTE_CARLO_SIGMAS} SE): $\\operatorname{{tr}}(P_M\\Sigma)/\\operatorname{{tr}}\\Sigma \\le B$ on every draw (Theorem 1/Ky Fan); isotropic: $\\bar\\rho = m/r$ exactly, $\\mathbb{{E}}R^2 = m/r$, and for Gaussian weights the Beta variance (Theorem 3); Gaussian weights: $m/r \\le \\mathbb{{E}}R^2_{{\\mathrm{{unif}}}}, \\mathbb{{E}}R^2_{{\\mathrm{{pool}}}} \\le \\bar\\rho \\le B$ (Theorem 2(ii)). Measured spectra are the fit-split input covariances of the first and last checked layer of each model below.\n\n"));
    md.push_str("| spectrum | law | d | d_h | k | m/r | E R²pool | E R²unif | ρ̄ | B | Var R²pool / Beta | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in grid {
        let variance = if r.beta_variance.is_finite() {
            format!("{:.3}", r.r2_pooled_variance / r.beta_variance)
        } else {
            "—".into()
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
        "Per layer: the attention input's covariance $\\hat\\Sigma_\\ell$ on the fit split (OLMo-2: the raw residual stream entering self-attention; Llama: the input-normed stream), its bound $B_\\ell = B(\\hat\\Sigma_\\ell, k d_h)$, and the held-out $R^2$ of `predict` at capture point `proj` (pre-norm, pre-RoPE: $y = W_t^\\top x$, the theorems' setting), references chosen by `topn` on the fit split, split by sequence (held-out $R^2$ is then conservative, §6.7). Measured = mean over target heads of the held-out pooled $R^2$ (uniform beside it). A row passes when both are $\\le B_\\ell$ + tolerance; tolerance = selection slack (§6.8) + {HEAD_SPREAD_SIGMAS} × max(SE across target heads, σ_W), where σ_W is the sd of one head's $R^2$ over weight draws — from the Monte Carlo below when drawn, else the isotropic Beta sd — which bounds the weight-draw spread of the mean over heads whatever their correlation (init_bound.md §7 check 3). MC ρ̄ / E R² = Monte Carlo of Gaussian projections of $\\hat\\Sigma_\\ell$ ({} draws), i.e. what Theorem 2 predicts for this spectrum before finite-sample deflation. Settings: text `{}`, {} tokens, seq-len {}, fit split {}, kinds {}, k ≤ {} (capped at heads − 1 per kind), layers {}, seed {}. Every row is in `verification_layers.csv`.\n\n",
        check.layer_draws,
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
        let role = match report.role {
            SourceRole::Init => "init",
            SourceRole::Trained => "trained",
        };
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
            let mut verdicts: Vec<(String, usize)> = Vec::new();
            for r in &sel {
                match verdicts.iter_mut().find(|(v, _)| *v == r.verdict) {
                    Some((_, n)) => *n += 1,
                    None => verdicts.push((r.verdict.clone(), 1)),
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
        md.push_str("\nPer layer at k = 1 (K, or the first kind checked):\n\n| layer | rank | measured pooled | measured uniform | B | floor m/r | MC ρ̄ | MC E R²pool | σ_W | tolerance | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
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
                "| {} | {} | {} ± {:.4} | {} ± {:.4} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.layer,
                r.rank,
                fmt(r.r2_pooled_heldout),
                r.r2_pooled_se,
                fmt(r.r2_uniform_heldout),
                r.r2_uniform_se,
                fmt(r.bound),
                fmt(r.floor),
                fmt(r.monte_carlo_rho_bar),
                fmt(r.monte_carlo_r2_pooled),
                fmt(r.weight_sd),
                fmt(r.tolerance),
                r.verdict
            ));
        }
        md.push('\n');
    }
    if reports.is_empty() {
        md.push_str("No model sources were measured in this run.\n\n");
    }
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
        "Tool `{}` {} (git `{}`); Monte Carlo seed {}; weight draws from ChaCha8 streams keyed by (seed, grid cell, draw) as for random init (`src/source/init.rs`).\n\n",
        tool.name, tool.version, tool.git_sha, check.seed
    ));
    md.push_str("| source | role | kind | revision sha | init | tokenizer | token-set sha256 | sequences (fit) × seq-len | seconds |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in reports {
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | `{}` | {} ({}) × {} | {:.0} |\n",
            r.label,
            match r.role {
                SourceRole::Init => "init",
                SourceRole::Trained => "trained",
            },
            r.provenance.kind,
            r.provenance.revision_sha.as_deref().unwrap_or("—"),
            r.provenance.init.as_deref().unwrap_or("—"),
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

/// One panel per grid spectrum family (Gaussian law): E R²pool with a 95 % band, ρ̄, B and the
/// floor against k.
pub fn grid_chart(rows: &[GridRow]) -> SmallMultiples {
    let keys = distinct_in_order(
        rows.iter()
            .filter(|r| r.law == WeightLaw::Gaussian)
            .map(|r| (r.spectrum.clone(), r.dimension, r.head_dim)),
    );
    let panels = keys
        .iter()
        .map(|(spectrum, d, head_dim)| {
            let sel: Vec<&GridRow> = rows
                .iter()
                .filter(|r| {
                    r.law == WeightLaw::Gaussian
                        && &r.spectrum == spectrum
                        && r.dimension == *d
                        && r.head_dim == *head_dim
                })
                .collect();
            let line = |f: &dyn Fn(&GridRow) -> f64| {
                sel.iter().map(|r| (r.k as f64, f(r))).collect::<Vec<_>>()
            };
            let mut measured = Series::new("E R²pool (MC, 95% band)", line(&|r| r.r2_pooled));
            measured.band = Some(
                sel.iter()
                    .map(|r| {
                        (
                            r.k as f64,
                            r.r2_pooled - 1.96 * r.r2_pooled_se,
                            r.r2_pooled + 1.96 * r.r2_pooled_se,
                        )
                    })
                    .collect(),
            );
            measured.markers = true;
            let rho = Series::new("rho-bar = E tr(PΣ)/trΣ (MC)", line(&|r| r.rho_bar));
            let mut bound = Series::new("bound B", line(&|r| r.bound));
            bound.dashed = true;
            let mut floor = Series::new("floor m/r", line(&|r| r.floor));
            floor.dashed = true;
            let title = if spectrum.chars().count() > 34 {
                format!("{}… d={d}", spectrum.chars().take(33).collect::<String>())
            } else {
                format!("{spectrum}, d={d}, d_h={head_dim}")
            };
            let mut chart = LineChart::new(title, "k (reference heads)", "R²");
            chart.series = vec![measured, rho, bound, floor];
            chart.legend = LegendPosition::LowerRight;
            chart.x_label_count = Some(sel.len().max(2));
            chart
        })
        .collect();
    SmallMultiples {
        title: "Init-time bound: Monte Carlo (Gaussian weights) vs bound and floor".into(),
        panels,
        columns: 4,
        panel_size: (420, 320),
    }
}

/// One panel per (source, kind): measured held-out pooled R² per layer at k = 1 and the largest
/// k, with the bound (dashed) and a band from the bound to bound + tolerance.
pub fn layer_chart(rows: &[LayerRow]) -> SmallMultiples {
    let keys = distinct_in_order(rows.iter().map(|r| (r.source.clone(), r.kind, r.role)));
    let panels = keys
        .iter()
        .map(|(source, kind, role)| {
            let sel: Vec<&LayerRow> = rows
                .iter()
                .filter(|r| &r.source == source && r.kind == *kind)
                .collect();
            let max_k = sel.iter().map(|r| r.k).max().unwrap_or(1);
            let mut series = Vec::new();
            for (index, k) in [1, max_k].into_iter().enumerate() {
                if index == 1 && k == 1 {
                    break;
                }
                let at: Vec<&&LayerRow> = sel.iter().filter(|r| r.k == k).collect();
                let color = crate::report::plot::palette(index);
                let mut measured = Series::new(
                    format!("held-out R², k={k}"),
                    at.iter()
                        .map(|r| (r.layer as f64, r.r2_pooled_heldout))
                        .collect(),
                );
                measured.markers = true;
                measured.color = Some(color);
                let mut bound = Series::new(
                    format!("bound B (band: + tolerance), k={k}"),
                    at.iter().map(|r| (r.layer as f64, r.bound)).collect(),
                );
                bound.band = Some(
                    at.iter()
                        .map(|r| (r.layer as f64, r.bound, r.bound + r.tolerance))
                        .collect(),
                );
                bound.dashed = true;
                bound.color = Some(color);
                series.push(measured);
                series.push(bound);
            }
            let short = if source.chars().count() > 40 {
                format!(
                    "…{}",
                    source
                        .chars()
                        .rev()
                        .take(39)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<String>()
                )
            } else {
                source.clone()
            };
            let role = match role {
                SourceRole::Init => "init",
                SourceRole::Trained => "trained",
            };
            let mut chart = LineChart::new(
                format!("{short} ({role}) {}", kind.name().to_uppercase()),
                "layer",
                "R²",
            );
            chart.series = series;
            // R² ≤ 1: the space above holds the legend, clear of the data.
            chart.legend = LegendPosition::UpperRight;
            chart.y_range = Some((0.0, 1.6));
            let layers = sel
                .iter()
                .map(|r| r.layer)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            chart.x_label_count = Some(layers.clamp(2, 16));
            chart
        })
        .collect();
    SmallMultiples {
        title: "Held-out R² per layer vs the bound of the layer's measured input spectrum".into(),
        panels,
        columns: 3,
        panel_size: (540, 400),
    }
}

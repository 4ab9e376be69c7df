//! `ckpt-scan theory`: verifies the init-time bound of theory/init_bound.md as its §7 specifies —
//! (a) Monte Carlo of the theorems over a grid of (d, d_h, k, spectrum, weight law), (a2) the
//! finite-sample formulas of §6.6 against simulated OLS, (b) models at
//! init per layer against the bound of their measured input spectrum, (c) where trained
//! checkpoints exceed it — and writes verification.md, CSVs, plots and a manifest.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::analysis::finite_sample_check::{
    default_cases, finite_sample_row, FiniteSampleRow, FINITE_SAMPLE_SIGMAS,
};
use crate::analysis::init_check::{
    grid_rows, judge, layer_rows, BatchRole, BoundSink, GridRow, LayerCheckOptions, LayerRow,
    LayerSpectrum, ReplicationSettings, SourceRole, HEAD_SPREAD_SIGMAS, MONTE_CARLO_SIGMAS,
};
use crate::analysis::layer_check::{
    add_bootstrap, init_family_size, BOOTSTRAP_HEAD_QUANTILE, FAMILY_ALPHA, TESTS_PER_INIT_ROW,
};
use crate::analysis::mutation_check::{
    mutation_model_config, run_case, Mutation, MutationRow, COVARIANCE_SEQUENCES, FIT_SEQUENCES,
    HELDOUT_SEQUENCES, MAX_REFS as MUTATION_MAX_REFS, REPLICATIONS as MUTATION_REPLICATIONS,
    SEQ_LEN, TOPIC_COVARIANCE_SEQUENCES,
};
use crate::analysis::predictability_pass::TOKENS_PER_BATCH;
use crate::cli::TheoryArgs;
use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::paths::{data_root, smollm2_gguf};
use crate::data::token_set::token_set_for;
use crate::data::token_set::{TokenSet, TokenSetOptions};
use crate::model::forward::{forward_streamed, OutputHead};
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::output::manifest::{tool_version, ToolVersion};
use crate::printer::Printer;
use crate::progress::Progress;
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
    /// Sequences after the fit and held-out ones whose rows only estimate Σ̂.
    pub covariance_sequences: usize,
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
    /// Extra tokens, after the fit and held-out ones, whose rows only estimate Σ̂.
    pub covariance_tokens: usize,
    pub seq_len: usize,
    pub split: f64,
    pub kinds: Vec<crate::capture::HeadKind>,
    pub max_refs: usize,
    pub layers: Option<Vec<i64>>,
    pub capture: &'static str,
    pub selection: &'static str,
    pub layer_draws: usize,
    /// Conditional (and, in the clean case, population) replications of every layer.
    pub prediction_replications: usize,
    /// Layer-0 rows are iid by construction (`--text random`): the clean population case.
    pub iid_layer0: bool,
    pub family_alpha: f64,
    /// Redraws of the held-out sequences behind each trained row's bootstrap.
    pub heldout_resamples: usize,
    pub seed: u64,
}

/// Redraws of the held-out sequences for a trained row's bootstrap: enough for a 5 % quantile
/// (10 redraws below it) and a 95 % interval of the layer mean.
pub const HELDOUT_RESAMPLES: usize = 200;

/// Fewest replications a prediction may rest on: the Student-t quantiles of the family's
/// critical value are checked for ν ≥ 15 (stats/multiplicity.rs).
pub const MIN_PREDICTION_REPLICATIONS: usize = 16;

/// Split-pure batches of at most `tokens_per_batch` tokens, with their role: the first
/// `fit` sequences fit, the next `heldout` are held out, the rest estimate Σ̂ only.
pub fn role_batches(
    token_set: &TokenSet,
    fit: usize,
    heldout: usize,
    tokens_per_batch: usize,
) -> Vec<(tch::Tensor, BatchRole)> {
    let per_batch = (tokens_per_batch / token_set.seq_len).max(1);
    let total = token_set.sequences.len();
    let mut out = Vec::new();
    for (range, role) in [
        (0..fit.min(total), BatchRole::Fit),
        (
            fit.min(total)..(fit + heldout).min(total),
            BatchRole::Heldout,
        ),
        ((fit + heldout).min(total)..total, BatchRole::Covariance),
    ] {
        for chunk in token_set.sequences[range].chunks(per_batch) {
            let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
            out.push((
                tch::Tensor::from_slice(&flat).view([chunk.len() as i64, token_set.seq_len as i64]),
                role,
            ));
        }
    }
    out
}

/// The law a source's replications draw: its own init law (truncated normal for `scheme=olmo`),
/// Gaussian for HF's scheme and for trained sources (the null of random projections).
pub fn replication_law(role: SourceRole, provenance: &Provenance) -> WeightLaw {
    let olmo = provenance
        .init
        .as_deref()
        .is_some_and(|i| i.contains("scheme=olmo"));
    match (role, olmo) {
        (SourceRole::Init, true) => WeightLaw::TruncatedNormal,
        _ => WeightLaw::Gaussian,
    }
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
    if args.prediction_replications < MIN_PREDICTION_REPLICATIONS {
        bail!(
            "--prediction-replications must be at least {MIN_PREDICTION_REPLICATIONS}, got {}",
            args.prediction_replications
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

/// The key of a source's Monte Carlo streams. Its label, unless the label names a local path
/// outside the data folder (a temp folder, a home folder): then what the source *is* (kind,
/// config, init seed and scheme, Hub revision), so the same model draws the same replications
/// wherever it lies. Two local checkpoints of one config share their streams, i.e. their nulls
/// use common random numbers; their input moments, and so the nulls, still differ.
pub fn stream_key(label: &str, config: &ModelConfig, provenance: &Provenance) -> String {
    let names_local_path = label.starts_with('/') || label.contains(":/");
    if !names_local_path {
        return label.to_string();
    }
    let identity = format!(
        "{}\n{}\n{}\n{}",
        provenance.kind,
        serde_json::to_string(config).unwrap_or_default(),
        provenance.init.as_deref().unwrap_or(""),
        provenance.revision_sha.as_deref().unwrap_or(""),
    );
    let digest = Sha256::digest(identity.as_bytes());
    format!("{}:{}", provenance.kind, &format!("{digest:x}")[..16])
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
        tokens: check.tokens + check.covariance_tokens,
        seq_len,
        fit_fraction: check.split,
        seed: check.seed,
        separator: config.eos_token_id,
    };
    let text = TextSource::parse(&check.text);
    let (token_set, tokenizer_name) =
        token_set_for(source.as_ref(), &text, &token_options, tokenizer)?;
    let label = source_label(spec);
    let stream = stream_key(&label, &config, source.provenance());
    // The fit and held-out sequences come first (as for predict), the covariance ones after.
    let main_sequences = (check.tokens / seq_len).min(token_set.sequences.len());
    let fit_sequences = ((main_sequences as f64 * check.split).round() as usize)
        .clamp(1, main_sequences.saturating_sub(1).max(1));
    let heldout_sequences = main_sequences - fit_sequences;
    if heldout_sequences == 0 {
        bail!("{label}: {main_sequences} sequence(s) cannot be split into fit and held-out parts; raise --tokens or lower --seq-len");
    }
    printer.note(format!(
        "theory: {} ({}): {} sequences × {seq_len} tokens ({fit_sequences} fit, {heldout_sequences} held out, {} for the covariance), capture proj, {}",
        label,
        match role {
            SourceRole::Init => "init",
            SourceRole::Trained => "trained",
        },
        token_set.sequences.len(),
        token_set.sequences.len() - main_sequences,
        describe(&settings.load)
    ));
    let batches = role_batches(
        &token_set,
        fit_sequences,
        heldout_sequences,
        TOKENS_PER_BATCH,
    );
    let roles: Vec<BatchRole> = batches.iter().map(|(_, r)| *r).collect();
    let tokens: Vec<_> = batches.into_iter().map(|(t, _)| t).collect();
    let mut sink = BoundSink::new(
        &check.kinds,
        check.max_refs,
        check.layers.clone(),
        &label,
        &config,
        roles,
        ReplicationSettings {
            law: replication_law(role, source.provenance()),
            replications: check.prediction_replications,
            seed: check.seed,
            stream: stream.clone(),
            heldout_resamples: match role {
                SourceRole::Init => 0,
                SourceRole::Trained => check.heldout_resamples,
            },
        },
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
        iid_layer0: check.iid_layer0,
        population_replications: check.prediction_replications,
        stream,
    };
    let mut rows = single_threaded(|| {
        layer_rows(
            &label,
            &config,
            &sink.spectra,
            &sink.prediction_rows(),
            &sink.replicates,
            &options,
        )
    });
    add_bootstrap(&mut rows, &sink.resampled);
    Ok(SourceReport {
        role,
        label,
        provenance: source.provenance().clone(),
        config,
        tokenizer: tokenizer_name,
        token_set_hash: token_set.hash.clone(),
        sequences: main_sequences,
        fit_sequences,
        covariance_sequences: token_set.sequences.len() - main_sequences,
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
        covariance_tokens: args.covariance_tokens,
        seq_len: args.seq_len,
        split: args.split,
        kinds: args.kinds.clone(),
        max_refs: args.max_refs,
        layers: args.layers.clone(),
        capture: "proj",
        selection: "topn",
        layer_draws: args.layer_draws,
        prediction_replications: args.prediction_replications,
        iid_layer0: TextSource::parse(&args.text) == TextSource::Random,
        family_alpha: FAMILY_ALPHA,
        heldout_resamples: HELDOUT_RESAMPLES,
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
    let mut layer_out: Vec<LayerRow> = reports.iter().flat_map(|r| r.rows.clone()).collect();
    // One family over every init row of every source: the critical value needs its size.
    judge(&mut layer_out, check.family_alpha);

    let mutation_start = Instant::now();
    let mutation_out: Vec<MutationRow> = if args.no_mutations {
        Vec::new()
    } else {
        single_threaded(|| {
            Mutation::ALL
                .iter()
                .map(|&m| run_case(m, args.seed))
                .collect::<Result<Vec<_>>>()
        })?
    };
    printer.note(format!(
        "theory: power check, {} cases in {:.1} s",
        mutation_out.len(),
        mutation_start.elapsed().as_secs_f64()
    ));

    let out = &args.out;
    write_csv(&out.join("verification_grid.csv"), &grid_out)?;
    if !mutation_out.is_empty() {
        write_csv(&out.join("verification_mutations.csv"), &mutation_out)?;
    }
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
        &mutation_out,
        &reports,
        &check,
        args.draws,
    );
    write_atomic(&out.join("verification.md"), markdown.as_bytes())?;
    let summary = pass_fail_table(&grid_out, &finite_out, &layer_out, &mutation_out);
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
    let failed_mutations = mutation_out.iter().filter(|r| !r.as_expected).count();
    if failed_grid + failed_finite + failed_init + failed_mutations > 0 {
        bail!(
            "theory: {failed_grid} Monte Carlo rows, {failed_finite} finite-sample rows, {failed_init} init rows and {failed_mutations} power-check cases failed (see {})",
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
        let passed = init.iter().filter(|r| r.verdict == "pass").count();
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
            .filter(|r| r.verdict == "above bound")
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
        "A tiny OLMo-2 model built in code (d = {}, {} heads of d_h = {}, {} layers, {} token ids; `src/analysis/mutation_check.rs`), {} fit, {} held-out and {} covariance sequences ({} in the topic cases, whose sequences carry 2 token ids each) of {} tokens, k ≤ {}, {} replications, judged as (b) with the family of each case. Honest cases must fail no row; each mutation must fail at least one. `tests/theory.rs` asserts the same for every case.\n\n| case | rows failing / total | failing checks (rows) | as required |\n|---|---|---|---|\n",
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
                "—"
            } else {
                &m.failed_by_check
            },
            if m.as_expected { "yes" } else { "**no**" }
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
                    "—".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::olmo2_preset;

    fn provenance(kind: &str, init: Option<&str>) -> Provenance {
        Provenance {
            spec: String::new(),
            kind: kind.to_string(),
            files: Vec::new(),
            revision_sha: None,
            init: init.map(str::to_string),
        }
    }

    /// CI once failed a tiny-model theory test that passed here: the streams were keyed by a temp
    /// folder's name, so every run drew other replications. Keys now follow the model, not its path.
    #[test]
    fn stream_keys_follow_the_model_not_its_folder() {
        let config = olmo2_preset("olmo2-1b").unwrap();
        let init = provenance("init", Some("seed=5 scheme=olmo"));
        let a = stream_key("init:/tmp/.tmpA/config.json", &config, &init);
        let b = stream_key("init:/tmp/.tmpB/config.json", &config, &init);
        assert_eq!(a, b);
        assert!(a.starts_with("init:") && !a.contains("tmp"), "{a}");
        // Another seed, another config or another kind is another stream.
        let reseeded = provenance("init", Some("seed=6 scheme=olmo"));
        assert_ne!(
            a,
            stream_key("init:/tmp/.tmpA/config.json", &config, &reseeded)
        );
        let mut wider = config.clone();
        wider.hidden_size *= 2;
        assert_ne!(a, stream_key("init:/tmp/.tmpA/config.json", &wider, &init));
        let local = provenance("safetensors", None);
        assert_ne!(a, stream_key("/tmp/.tmpA", &config, &local));
        // Labels without a local path keep their streams (and the committed verification's figures).
        for label in [
            "init:olmo2-1b?seed=0&scheme=olmo",
            "hf:allenai/OLMo-2-0425-1B@main",
            "gguf:$CKPT_SCAN_DATA/smollm2/model.gguf",
        ] {
            assert_eq!(stream_key(label, &config, &init), label);
        }
    }
}

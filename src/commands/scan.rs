//! `ckpt-scan scan SERIES`: every checkpoint of a series through predict, align and sink
//! statistics on one token set, each (checkpoint, analysis) a cached unit, then one report.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::analysis::alignment::AlignmentOptions;
use crate::analysis::alignment_pass::{run_alignment, AlignOutput, MeasuredReferenceSet};
use crate::analysis::inspection::fingerprint;
use crate::analysis::predictability::{Candidates, PredictabilityOptions};
use crate::analysis::predictability_pass::{run_predictability, TOKENS_PER_BATCH};
use crate::analysis::sinks::{SinkStatisticsSink, MIN_VISIBLE_QUERIES, SINK_THRESHOLD};
use crate::capture::HeadKind;
use crate::cli::ScanArgs;
use crate::config::rope_scaling::RopeScaling;
use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::paths::{manifest_var, unit_cache_root};
use crate::data::token_set::{token_set_for, TokenSet, TokenSetOptions};
use crate::model::forward::{forward_streamed, OutputHead};
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::output::digest::sha256_file;
use crate::output::manifest::{tool_version, ToolVersion, ANALYSIS_VERSION};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::scan_report::{write_report, CheckpointRow, ScanTables};
use crate::series::claim::ClaimTimeouts;
use crate::series::manifest::{parse_scheme, SeriesManifest};
use crate::series::plan::{
    init_config, init_spec, resolve_plan, Plan, PlannedCheckpoint, PlannedSource,
};
use crate::series::shard::{partition, Shard};
use crate::series::slurm;
use crate::series::unit_cache::{Table, UnitCache, UnitKey};
use crate::series::units::{
    clear_failure, record_failure, recorded_failure, Acquired, MissingUnit, UnitMode, UnitState,
    UnitWork,
};
use crate::settings::Settings;
use crate::source::hub::HubSource;
use crate::source::init::InitSource;
use crate::source::{open_source_with, Provenance, WeightSource};
use crate::stats::selection::Selection;

/// Marks a report folder whose scan has not finished.
const IN_PROGRESS: &str = ".scan-in-progress";
/// Nominal CPU throughput behind `--dry-run`'s time estimate (f32 matmuls on 2 cores).
const ESTIMATE_FLOPS_PER_SECOND: f64 = 5e10;
/// Nominal download rate behind the shard balance (only the ratio to compute matters).
const ESTIMATE_BYTES_PER_SECOND: f64 = 1e8;

/// The analysis settings of one scan, after manifest defaults and command-line overrides.
#[derive(Clone, Debug, Serialize)]
pub struct ScanOptions {
    pub text: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub sink_sequences: usize,
    pub predictability: PredictabilityOptions,
    pub alignment: AlignmentOptions,
    pub max_refs: usize,
}

/// What happened to one unit in this run.
#[derive(Clone, Debug, Serialize)]
pub struct UnitRun {
    pub analysis: String,
    pub digest: String,
    /// `computed` or `cached`.
    pub status: &'static str,
    pub seconds: f64,
}

impl UnitRun {
    fn new(key: &UnitKey, status: &'static str, seconds: f64) -> Self {
        UnitRun {
            analysis: key.analysis.clone(),
            digest: key.digest(),
            status,
            seconds,
        }
    }
}

/// One checkpoint's record in manifest.json.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointRecord {
    pub label: String,
    pub step: Option<u64>,
    pub tokens: Option<String>,
    pub provenance: Provenance,
    pub identity: String,
    pub config_sha256: String,
    /// The RoPE base and variant the forward ran with (also inside `config_sha256`).
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// sha256 of each weight file (for a Hub cache file, its blob name, which is that hash).
    pub file_sha256: Vec<(String, String)>,
    pub fingerprint: String,
    pub units: Vec<UnitRun>,
}

/// Largest local file hashed for the manifest; bigger ones are recorded by size.
const MAX_HASHED_FILE_BYTES: u64 = 4 << 30;

/// `(file, sha256)` for each file a checkpoint reads: the blob name for a link into an HF cache
/// (blobs are named by their sha256), else the file's hash when it is small enough to read.
fn file_hashes(files: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in files {
        let blob = std::fs::read_link(path)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        let hash = match blob {
            Some(name) => name,
            None => match std::fs::metadata(path) {
                Err(_) => "not present".into(),
                Ok(m) if m.len() > MAX_HASHED_FILE_BYTES => {
                    format!("not hashed ({} bytes)", m.len())
                }
                Ok(_) => sha256_file(path)?,
            },
        };
        out.push((path.display().to_string(), hash));
    }
    Ok(out)
}

#[derive(Serialize)]
struct ScanManifest<'a> {
    tool: ToolVersion,
    series: &'a SeriesManifest,
    manifest_path: String,
    options: &'a ScanOptions,
    token_set: &'a TokenSet,
    tokenizer: String,
    device: String,
    missing_revisions: &'a [String],
    duplicates: &'a [(String, String)],
    checkpoints: &'a [CheckpointRecord],
    /// Checkpoints `--report` found missing or failed (empty for a complete report).
    incomplete: &'a [IncompleteRow],
    seconds: f64,
}

/// Opens every checkpoint's config (headers only) and refuses a series whose checkpoints differ in
/// architecture or shape before any work, rather than after the first checkpoint's analyses.
fn check_series_shapes(plan: &Plan, series_config: &ModelConfig) -> Result<()> {
    for planned in &plan.checkpoints {
        let opened = open_planned(planned, plan, Some(series_config))
            .with_context(|| format!("checkpoint {}", planned.label))?;
        let config = opened.source().config();
        if config.architecture != series_config.architecture
            || config.hidden_size != series_config.hidden_size
            || config.vocab_size != series_config.vocab_size
        {
            bail!(
                "{}: its architecture and shape ({:?}, hidden {}, vocab {}) differ from the series' first checkpoint ({:?}, hidden {}, vocab {}); one scan needs one token set and comparable heads",
                opened.source().provenance().spec,
                config.architecture,
                config.hidden_size,
                config.vocab_size,
                series_config.architecture,
                series_config.hidden_size,
                series_config.vocab_size
            );
        }
    }
    Ok(())
}

pub fn run(args: &ScanArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let (manifest, manifest_path) = SeriesManifest::load(&args.series)?;
    let manifest_dir = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let plan = resolve_plan(&manifest, &manifest_dir, &settings.hub, &manifest_var)?;
    for missing in &plan.missing_revisions {
        printer.warn(format!(
            "series {}: revision {missing} is not in the repo; skipped",
            manifest.name
        ));
    }
    if plan.checkpoints.is_empty() {
        bail!(
            "series {}: no checkpoints to scan (no branch matched, and no sources or inits)",
            manifest.name
        );
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("reports").join(&manifest.name));
    let cache = UnitCache::new(&args.cache_dir.clone().unwrap_or_else(unit_cache_root));
    if !args.dry_run {
        // Both are written only after the computation: find a file or read-only folder now.
        check_output_dir(&out_dir, "--out")?;
        check_output_dir(cache.dir(), "--cache-dir")?;
    }

    // The series' config fixes shapes and the token set: take it from the first real checkpoint.
    let first = plan
        .checkpoints
        .iter()
        .find(|c| !c.is_init())
        .or(plan.checkpoints.first())
        .expect("non-empty plan");
    let series_config = open_planned(first, &plan, None)?.source().config().clone();
    let options = scan_options(args, &manifest, &series_config)?;

    if args.dry_run && !args.slurm {
        return dry_run(&plan, &options, &series_config, &cache, &printer);
    }
    if args.slurm {
        return submit_slurm(
            args,
            &manifest,
            &manifest_path,
            &plan,
            &out_dir,
            &cache,
            &printer,
        );
    }
    let shard = args
        .shard
        .as_deref()
        .map(|text| Shard::parse(text, &|name| std::env::var(name).ok()))
        .transpose()?;
    let mode = if args.report {
        UnitMode::Assemble
    } else if args.status {
        UnitMode::Status
    } else {
        UnitMode::Compute
    };
    // A plain scan stops on a mismatched checkpoint before any work; shards, the report and the
    // status look-up meet it per checkpoint instead, so a failing shard is listed, not fatal.
    if shard.is_none() && mode == UnitMode::Compute {
        check_series_shapes(&plan, &series_config)?;
    }
    // A shard or a status look-up writes no report; only a full run guards its folder.
    let writes_report = shard.is_none() && mode != UnitMode::Status;
    let marker = out_dir.join(IN_PROGRESS);
    // Held until the scan ends: a second scan into the same folder stops here, before any work.
    let _out_lock = writes_report
        .then(|| lock_report_folder(&out_dir))
        .transpose()?;
    if writes_report {
        if marker.exists() && !args.resume && !args.force && mode == UnitMode::Compute {
            bail!(
                "{}: a previous scan into this folder did not finish\nhint: --resume continues it (finished units are reused), --force recomputes everything",
                out_dir.display()
            );
        }
        write_atomic(&marker, b"scan running\n")?;
    }

    let tokenizer_source = open_planned(first, &plan, Some(&series_config))?;
    let (token_set, tokenizer_name) = build_token_set(
        tokenizer_source.source(),
        &manifest,
        &manifest_dir,
        &options,
        &series_config,
    )?;
    drop(tokenizer_source);
    let selected: Vec<&PlannedCheckpoint> = match shard {
        Some(shard) => {
            let costs = checkpoint_costs(&plan, &options, &series_config);
            partition(&costs, shard.count)[shard.index]
                .iter()
                .map(|&i| &plan.checkpoints[i])
                .collect()
        }
        None => plan.checkpoints.iter().collect(),
    };
    printer.note(format!(
        "scan {}{}: {} checkpoints, {} tokens ({} sequences of {}), token set {}",
        manifest.name,
        shard.map_or(String::new(), |s| format!(" shard {}/{}", s.index, s.count)),
        selected.len(),
        token_set.sequences.len() * token_set.seq_len,
        token_set.sequences.len(),
        token_set.seq_len,
        &token_set.hash[..12]
    ));

    let work = UnitWork {
        cache: &cache,
        force: args.force,
        mode,
        timeouts: ClaimTimeouts::new(Duration::from_secs(args.claim_timeout.max(1))),
        printer,
    };
    let bars = Bars::new(&printer, selected.len());
    let mut tables = ScanTables::default();
    let mut records = Vec::new();
    let mut incomplete = Vec::new();
    for planned in &selected {
        bars.checkpoint(&planned.label);
        let result = scan_checkpoint(
            planned,
            &plan,
            &series_config,
            &token_set,
            &options,
            &work,
            args,
            settings,
            &bars,
            &mut tables,
        )
        .with_context(|| format!("checkpoint {}", planned.label));
        match result {
            Ok(record) => {
                if mode == UnitMode::Compute {
                    clear_failure(cache.dir(), &manifest.name, &planned.label);
                }
                records.push(record);
            }
            // A plain scan stops at the first error, as it always has.
            Err(e) if mode == UnitMode::Compute && shard.is_none() => return Err(e),
            Err(e) => {
                let row = incomplete_row(&e, &cache, &manifest.name, &planned.label);
                if mode == UnitMode::Compute {
                    // A shard records the failure for the report job and goes on.
                    record_failure(cache.dir(), &manifest.name, &planned.label, &e)?;
                    bars.note(format!("  {}: failed: {}", planned.label, row.error));
                }
                incomplete.push(row);
            }
        }
        bars.checkpoint_done();
    }
    bars.finish();
    if mode == UnitMode::Status {
        printer.result(status_table(&records, &incomplete));
        return Ok(());
    }
    if let Some(shard) = shard {
        let computed = units_computed(&records);
        printer.note(format!(
            "shard {}/{}: {} checkpoints done ({computed} units computed), {} failed ({:.1} s)",
            shard.index,
            shard.count,
            records.len(),
            incomplete.len(),
            start.elapsed().as_secs_f64()
        ));
        if !incomplete.is_empty() {
            bail!(
                "shard {}/{}: {} of {} checkpoints failed: {}",
                shard.index,
                shard.count,
                incomplete.len(),
                selected.len(),
                incomplete
                    .iter()
                    .map(|r| r.checkpoint.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return Ok(());
    }

    let duplicates = duplicate_checkpoints(&records);
    for (a, b) in &duplicates {
        printer.warn(format!(
            "checkpoints {a} and {b} have identical weights (duplicate branches?)"
        ));
    }
    tables.checkpoints = records
        .iter()
        .map(|r| CheckpointRow {
            checkpoint: r.label.clone(),
            step: r.step,
            tokens: r.tokens.clone().unwrap_or_default(),
            is_init: plan
                .checkpoints
                .iter()
                .any(|p| p.label == r.label && p.is_init()),
            source: r.provenance.spec.clone(),
            revision_sha: r.provenance.revision_sha.clone().unwrap_or_default(),
            fingerprint: r.fingerprint.clone(),
            duplicate_of: duplicates
                .iter()
                .find(|(_, b)| *b == r.label)
                .map(|(a, _)| a.clone())
                .unwrap_or_default(),
        })
        .collect();
    write_report(&out_dir, &manifest, &options, &series_config, &tables)?;
    let manifest_json = ScanManifest {
        tool: tool_version(),
        series: &manifest,
        manifest_path: manifest_path.display().to_string(),
        options: &options,
        token_set: &token_set,
        tokenizer: tokenizer_name,
        device: crate::settings::describe(&settings.load),
        missing_revisions: &plan.missing_revisions,
        duplicates: &duplicates,
        checkpoints: &records,
        incomplete: &incomplete,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest_json)?.as_bytes(),
    )?;
    write_csv(&out_dir.join("incomplete.csv"), &incomplete)?;
    std::fs::remove_file(&marker)
        .with_context(|| format!("{}: cannot remove", marker.display()))?;
    let computed = units_computed(&records);
    printer.note(format!(
        "wrote {} ({} units computed, {} cached, {:.1} s)",
        out_dir.display(),
        computed,
        records.iter().map(|r| r.units.len()).sum::<usize>() - computed,
        start.elapsed().as_secs_f64()
    ));
    if !incomplete.is_empty() {
        for row in &incomplete {
            printer.warn(format!("{}: {} — {}", row.checkpoint, row.state, row.error));
        }
        bail!(
            "report {}: {} of {} checkpoints are missing or failed (listed in incomplete.csv)",
            out_dir.display(),
            incomplete.len(),
            plan.checkpoints.len()
        );
    }
    Ok(())
}

/// An exclusive lock on `<out>/.scan.lock` (released when the file closes, also on a kill).
fn lock_report_folder(out_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create the report folder", out_dir.display()))?;
    let path = out_dir.join(".scan.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("{}: cannot create the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another scan is writing this report folder\nhint: wait for it, or give this one another --out",
            out_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

fn units_computed(records: &[CheckpointRecord]) -> usize {
    records
        .iter()
        .flat_map(|r| &r.units)
        .filter(|u| u.status == "computed")
        .count()
}

/// A checkpoint that `--report` could not assemble, or a shard could not finish.
#[derive(Clone, Debug, Serialize)]
struct IncompleteRow {
    checkpoint: String,
    /// `failed` (a shard recorded an error), `running`, `pending` or `error` (failed here).
    state: String,
    error: String,
}

fn incomplete_row(
    error: &anyhow::Error,
    cache: &UnitCache,
    series: &str,
    checkpoint: &str,
) -> IncompleteRow {
    let missing = error.downcast_ref::<MissingUnit>();
    let recorded = recorded_failure(cache.dir(), series, checkpoint);
    // A shard's recorded failure explains a missing checkpoint best, even when assembling
    // fails the same way here (a bad weights file).
    let (state, error) = match (recorded, missing) {
        (Some(failure), _) => (
            "failed".to_string(),
            format!("{} (on {}:{})", failure.error, failure.host, failure.pid),
        ),
        (None, Some(missing)) => (missing.state.name().to_string(), missing.to_string()),
        (None, None) => ("error".to_string(), format!("{error:#}").replace('\n', " ")),
    };
    IncompleteRow {
        checkpoint: checkpoint.to_string(),
        state,
        error,
    }
}

/// `--status`: one line per checkpoint with each unit's state, then the totals.
fn status_table(records: &[CheckpointRecord], incomplete: &[IncompleteRow]) -> String {
    let mut lines = Vec::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records {
        let states: Vec<String> = record
            .units
            .iter()
            .map(|u| {
                let state = if u.status == "cached" {
                    "done"
                } else {
                    u.status
                };
                *totals.entry(state).or_default() += 1;
                format!("{} {state}", u.analysis)
            })
            .collect();
        lines.push(format!("{:<40} {}", record.label, states.join(", ")));
    }
    for row in incomplete {
        *totals.entry("failed").or_default() += 1;
        lines.push(format!("{:<40} failed: {}", row.checkpoint, row.error));
    }
    let summary: Vec<String> = totals.iter().map(|(k, v)| format!("{v} {k}")).collect();
    lines.push(format!("units: {}", summary.join(", ")));
    lines.join("\n")
}

/// Estimated seconds per planned checkpoint, for balancing shards: two forwards at 2 FLOPs per
/// parameter and token, plus reading the weights (f32) for all but random inits.
fn checkpoint_costs(plan: &Plan, options: &ScanOptions, config: &ModelConfig) -> Vec<f64> {
    let parameters = (config.num_hidden_layers
        * (4 * config.hidden_size * config.hidden_size
            + 3 * config.hidden_size * config.intermediate_size)) as f64;
    let tokens = (options.tokens + options.sink_sequences * options.seq_len) as f64;
    let compute = 2.0 * parameters * tokens / ESTIMATE_FLOPS_PER_SECOND;
    let download = 4.0 * parameters / ESTIMATE_BYTES_PER_SECOND;
    plan.checkpoints
        .iter()
        .map(|c| {
            if c.is_init() {
                compute
            } else {
                compute + download
            }
        })
        .collect()
}

/// `--slurm`: writes the array and report scripts under `<out>/slurm/` and submits them (or, with
/// `--dry-run`, prints them).
fn submit_slurm(
    args: &ScanArgs,
    manifest: &SeriesManifest,
    manifest_path: &Path,
    plan: &Plan,
    out_dir: &Path,
    cache: &UnitCache,
    printer: &Printer,
) -> Result<()> {
    let shards = args.shards.unwrap_or(plan.checkpoints.len());
    if shards == 0 {
        bail!("--shards 0: at least one shard is needed");
    }
    let shards = shards.min(plan.checkpoints.len());
    let options = slurm::resolve(&args.slurm_options.settings(), &manifest.slurm)?;
    let absolute = |path: &Path| -> Result<PathBuf> {
        std::path::absolute(path).with_context(|| format!("{}: no absolute path", path.display()))
    };
    let slurm_dir = absolute(&out_dir.join("slurm"))?;
    let logs = slurm_dir.join("logs");
    let exe = std::env::current_exe().context("cannot locate the ckpt-scan binary")?;
    let mut words: Vec<String> = vec![
        exe.display().to_string(),
        "scan".into(),
        absolute(manifest_path)?.display().to_string(),
        "--out".into(),
        absolute(out_dir)?.display().to_string(),
        "--cache-dir".into(),
        absolute(cache.dir())?.display().to_string(),
        "--claim-timeout".into(),
        args.claim_timeout.to_string(),
        "--capture".into(),
        args.capture.name().to_string(),
    ];
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            words.push(format!("--{name}"));
            words.push(v);
        }
    };
    flag("text", args.text.clone());
    flag("tokens", args.tokens.map(|v| v.to_string()));
    flag("seq-len", args.seq_len.map(|v| v.to_string()));
    flag(
        "kinds",
        args.kinds
            .as_ref()
            .map(|k| k.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")),
    );
    flag("max-refs", args.max_refs.map(|v| v.to_string()));
    flag("sink-sequences", args.sink_sequences.map(|v| v.to_string()));
    flag("seed", args.seed.map(|v| v.to_string()));
    if args.keep_downloads {
        words.push("--keep-downloads".into());
    }
    let command: Vec<String> = words.iter().map(|w| slurm::shell_quote(w)).collect();
    let job = slurm::render(&manifest.name, &command.join(" "), shards, &logs, &options);
    if args.dry_run {
        printer.result(format!(
            "# {}/scan.sbatch\n{}\n# {}/report.sbatch (after the array: --dependency=afterany)\n{}",
            slurm_dir.display(),
            job.array_script,
            slurm_dir.display(),
            job.report_script
        ));
        return Ok(());
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("{}: cannot create", logs.display()))?;
    let (array_path, report_path) = (
        slurm_dir.join("scan.sbatch"),
        slurm_dir.join("report.sbatch"),
    );
    write_atomic(&array_path, job.array_script.as_bytes())?;
    write_atomic(&report_path, job.report_script.as_bytes())?;
    let array_id = slurm::submit(&array_path, &[])?;
    let report_id = slurm::submit(&report_path, &[format!("--dependency=afterany:{array_id}")])?;
    printer.result(format!(
        "submitted array job {array_id} ({shards} shards) and report job {report_id}\n\
         follow: squeue -j {array_id},{report_id}   logs: {}\n\
         units:  ckpt-scan scan {} --cache-dir {} --status\n\
         report: {} (written by job {report_id})",
        logs.display(),
        manifest_path.display(),
        cache.dir().display(),
        out_dir.join("report.md").display()
    ));
    Ok(())
}

fn scan_options(
    args: &ScanArgs,
    manifest: &SeriesManifest,
    config: &ModelConfig,
) -> Result<ScanOptions> {
    let defaults = &manifest.analysis;
    let kinds = match (&args.kinds, &defaults.kinds) {
        (Some(k), _) => k.clone(),
        (None, Some(names)) => names
            .iter()
            .map(|n| match n.as_str() {
                "q" => Ok(HeadKind::Q),
                "k" => Ok(HeadKind::K),
                "v" => Ok(HeadKind::V),
                other => bail!(
                    "series {}: analysis.kinds has {other:?}; use q, k, v",
                    manifest.name
                ),
            })
            .collect::<Result<_>>()?,
        (None, None) => vec![HeadKind::Q, HeadKind::K, HeadKind::V],
    };
    let max_refs = args.max_refs.or(defaults.max_refs).unwrap_or(5);
    let seed = args.seed.or(defaults.seed).unwrap_or(0);
    let seq_len = args
        .seq_len
        .or(defaults.seq_len)
        .unwrap_or_else(|| (config.max_position_embeddings as usize).min(256));
    if seq_len as i64 > config.max_position_embeddings {
        bail!(
            "--seq-len {seq_len}: longer than the model's max_position_embeddings ({})\nhint: use --seq-len {} or less (or analysis.seq_len in the manifest)",
            config.max_position_embeddings,
            config.max_position_embeddings
        );
    }
    if max_refs == 0 {
        bail!(
            "series {}: analysis.max_refs must be at least 1",
            manifest.name
        );
    }
    let sink_sequences = args
        .sink_sequences
        .or(defaults.sink_sequences)
        .unwrap_or(32);
    if sink_sequences == 0 {
        bail!("--sink-sequences must be at least 1");
    }
    let predictability = PredictabilityOptions {
        kinds: kinds.clone(),
        max_refs,
        selection: Selection::Topn,
        candidates: Candidates::SameLayer,
        capture_point: args.capture,
        layers: None,
        store_budget_bytes: 0,
    };
    predictability.check(config)?;
    // Unlike predict, scan does not cap k per kind: its summary and figures compare every
    // k = 1..=max_refs across checkpoints and kinds, which a capped kind would leave empty.
    for &kind in &kinds {
        let largest = predictability.max_k(kind, 0, config);
        if largest < max_refs {
            bail!(
                "--max-refs {max_refs}: scan compares k = 1..={max_refs} for every kind, but a {} head has only {largest} other {} heads in its layer\nhint: use --max-refs {largest} (or `ckpt-scan predict`, which caps k per kind)",
                kind.name().to_uppercase(),
                kind.name().to_uppercase()
            );
        }
    }
    Ok(ScanOptions {
        text: args
            .text
            .clone()
            .or(defaults.text.clone())
            .unwrap_or_else(|| "mix".into()),
        tokens: args.tokens.or(defaults.tokens).unwrap_or(16384),
        seq_len,
        seed,
        sink_sequences,
        alignment: AlignmentOptions {
            kinds,
            fold_norm: false,
            partners: max_refs,
            null_samples: 32,
            seed,
        },
        predictability,
        max_refs,
    })
}

/// An open checkpoint; Hub revisions stay typed so their downloads can be evicted.
enum OpenCheckpoint {
    Hub(Box<HubSource>),
    Other(Box<dyn WeightSource>),
}

impl OpenCheckpoint {
    fn source(&self) -> &dyn WeightSource {
        match self {
            OpenCheckpoint::Hub(h) => h.as_ref(),
            OpenCheckpoint::Other(b) => b.as_ref(),
        }
    }
}

/// Opens a planned checkpoint; inits of "the series' config" need `series_config`.
fn open_planned(
    planned: &PlannedCheckpoint,
    plan: &Plan,
    series_config: Option<&ModelConfig>,
) -> Result<OpenCheckpoint> {
    Ok(match &planned.source {
        PlannedSource::Hub { repo, revision } => OpenCheckpoint::Hub(Box::new(HubSource::open(
            repo,
            revision,
            &format!("hf:{repo}@{revision}"),
            &plan.hub,
        )?)),
        PlannedSource::Spec { spec } => OpenCheckpoint::Other(open_source_with(spec, &plan.hub)?),
        PlannedSource::Init {
            config,
            seed,
            scheme,
        } => {
            let scheme_value = parse_scheme(scheme)?;
            let (config, name) = match config {
                Some(c) => (init_config(c)?, c.as_str()),
                None => (
                    series_config
                        .context("an init of the series' config needs a series checkpoint")?
                        .clone(),
                    "series",
                ),
            };
            OpenCheckpoint::Other(Box::new(InitSource::new(
                config,
                *seed,
                scheme_value,
                &init_spec(name, *seed, scheme),
            )))
        }
    })
}

fn build_token_set(
    source: &dyn WeightSource,
    manifest: &SeriesManifest,
    manifest_dir: &Path,
    options: &ScanOptions,
    config: &ModelConfig,
) -> Result<(TokenSet, String)> {
    let token_options = TokenSetOptions {
        tokens: options.tokens,
        seq_len: options.seq_len,
        fit_fraction: 0.75,
        seed: options.seed,
        separator: config.eos_token_id,
    };
    let text = TextSource::parse(&options.text);
    let explicit = manifest
        .analysis
        .tokenizer
        .as_deref()
        .map(|t| -> Result<PathBuf> {
            Ok(manifest_dir.join(crate::series::manifest::expand(t, &manifest_var)?))
        })
        .transpose()?;
    token_set_for(source, &text, &token_options, explicit.as_deref())
}

/// sha256 of the config as JSON, hex.
fn config_digest(config: &ModelConfig) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(&config.to_hf_json()).expect("config serialises");
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn scan_checkpoint(
    planned: &PlannedCheckpoint,
    plan: &Plan,
    series_config: &ModelConfig,
    token_set: &TokenSet,
    options: &ScanOptions,
    work: &UnitWork,
    args: &ScanArgs,
    settings: &Settings,
    bars: &Bars,
    tables: &mut ScanTables,
) -> Result<CheckpointRecord> {
    let mut opened = open_planned(planned, plan, Some(series_config))?;
    let source = opened.source();
    let config = source.config().clone();
    if config.hidden_size != series_config.hidden_size
        || config.vocab_size != series_config.vocab_size
    {
        bail!(
            "{}: its shape (hidden {}, vocab {}) differs from the series' first checkpoint (hidden {}, vocab {}); one scan needs one token set and comparable heads",
            source.provenance().spec,
            config.hidden_size,
            config.vocab_size,
            series_config.hidden_size,
            series_config.vocab_size
        );
    }
    let provenance = source.provenance().clone();
    let config_sha256 = config_digest(&config);
    // What the results depend on: the commit for Hub revisions, else the spec and config (weights
    // of a local file are pinned by the fingerprint unit below).
    let identity = match &provenance.revision_sha {
        Some(sha) => format!("{}#{sha}", provenance.spec),
        None => format!("{}#{config_sha256}", provenance.spec),
    };
    // Units are keyed by the analysis version, not the build: workers built from different
    // commits share units as long as no result changed.
    let tool = format!("{} analysis v{ANALYSIS_VERSION}", tool_version().name);
    let key = |analysis: &str, options: serde_json::Value, token_set: Option<&str>| UnitKey {
        checkpoint: identity.clone(),
        analysis: analysis.to_string(),
        options,
        token_set: token_set.map(str::to_string),
        tool: tool.clone(),
    };
    let mut units = Vec::new();
    let label = &planned.label;

    // Fingerprint: a content hash of two tensors, to flag duplicate branches.
    let fingerprint_key = key("fingerprint", serde_json::Value::Null, None);
    let fingerprint_rows: Vec<FingerprintRow> = run_unit(
        work,
        &fingerprint_key,
        label,
        &mut units,
        |_| {
            let last = config.num_hidden_layers - 1;
            let names = [
                "model.layers.0.self_attn.k_proj.weight".to_string(),
                format!("model.layers.{last}.mlp.down_proj.weight"),
            ];
            let mut parts = Vec::new();
            for name in &names {
                parts.push(fingerprint(&source.read(name)?)?);
            }
            Ok(vec![FingerprintRow {
                fingerprint: parts.join(":"),
            }])
        },
        "rows",
    )?;
    let checkpoint_fingerprint = fingerprint_rows
        .first()
        .map(|r| r.fingerprint.clone())
        .unwrap_or_default();

    // Predictability.
    let predict_key = key(
        "predict",
        serde_json::to_value(&options.predictability)?,
        Some(&token_set.hash),
    );
    let mut prediction_rows: Vec<crate::analysis::predictability::PredictionRow> = run_unit(
        work,
        &predict_key,
        label,
        &mut units,
        |_| {
            bars.analysis("predict", config.num_hidden_layers);
            let output = run_predictability(
                source,
                token_set.clone(),
                &options.predictability,
                &settings.forward(),
                &Printer { quiet: true },
                &mut |layer, _| bars.layer(layer),
            )?;
            Ok(output.rows)
        },
        "predictability",
    )?;

    // Alignment, with weight-only R² on the measured reference sets.
    let measured: Vec<MeasuredReferenceSet> = prediction_rows
        .iter()
        .map(MeasuredReferenceSet::from)
        .collect();
    let align_key = key(
        "align",
        serde_json::json!({"options": &options.alignment, "max_refs": options.max_refs, "predict": predict_key.digest()}),
        None,
    );
    let align = run_unit_tables(work, &align_key, label, &mut units, || {
        bars.analysis("align", config.num_hidden_layers);
        let mut progress = |layer: i64, _: i64| bars.layer(layer);
        run_alignment(
            source,
            &options.alignment,
            options.max_refs,
            &measured,
            &mut progress,
        )
    })?;

    // Sink statistics on the first sequences of the token set.
    let sink_key = key(
        "sinks",
        serde_json::json!({"threshold": SINK_THRESHOLD, "min_visible_queries": MIN_VISIBLE_QUERIES, "sequences": options.sink_sequences}),
        Some(&token_set.hash),
    );
    let mut sink_rows: Vec<crate::analysis::sinks::SinkRow> = run_unit(
        work,
        &sink_key,
        label,
        &mut units,
        |_| {
            bars.analysis("sinks", config.num_hidden_layers);
            let sequences = options.sink_sequences.min(token_set.sequences.len());
            let subset = TokenSet {
                sequences: token_set.sequences[..sequences].to_vec(),
                fit_sequences: sequences,
                ..token_set.clone()
            };
            let batches: Vec<tch::Tensor> = subset
                .batches(TOKENS_PER_BATCH)
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            let mut sink = SinkStatisticsSink::new(
                label,
                config.num_hidden_layers,
                SINK_THRESHOLD,
                MIN_VISIBLE_QUERIES,
            );
            let mut progress = |layer: i64, _: i64| bars.layer(layer);
            forward_streamed(
                source,
                &batches,
                &mut sink,
                &settings.load,
                OutputHead::None,
                &settings.hidden_budget,
                Some(&mut progress),
            )?;
            sink.rows()
        },
        "sinks",
    )?;

    // Before eviction: downloaded files are gone after it.
    let file_sha256 = file_hashes(&provenance.files)?;
    if let OpenCheckpoint::Hub(hub) = &mut opened {
        // A local series folder is the series itself, never a download to evict.
        if !args.keep_downloads && !plan.hub.offline {
            let freed = hub.evict()?;
            bars.note(format!(
                "  {label}: evicted {:.1} MB of downloads",
                freed as f64 / 1e6
            ));
        }
    }

    // Rows carry the checkpoint's label, whatever spec produced them.
    for row in &mut prediction_rows {
        row.checkpoint = label.clone();
    }
    for row in &mut sink_rows {
        row.checkpoint = label.clone();
    }
    let mut align = align;
    for row in &mut align.layers {
        row.checkpoint = label.clone();
    }
    for row in &mut align.pairs {
        row.checkpoint = label.clone();
    }
    for row in &mut align.weight_rows {
        row.checkpoint = label.clone();
    }
    for row in &mut align.versus {
        row.checkpoint = label.clone();
    }
    tables.add(label, prediction_rows, align, sink_rows);
    Ok(CheckpointRecord {
        label: label.clone(),
        step: planned.step,
        tokens: planned.tokens.clone(),
        provenance,
        identity,
        config_sha256,
        rope_theta: config.rope_theta,
        rope_scaling: config.rope_scaling.clone(),
        file_sha256,
        fingerprint: checkpoint_fingerprint,
        units,
    })
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct FingerprintRow {
    fingerprint: String,
}

/// A single-table unit: read from the cache, or claimed, computed and stored.
fn run_unit<T: Serialize + serde::de::DeserializeOwned>(
    work: &UnitWork,
    key: &UnitKey,
    checkpoint: &str,
    units: &mut Vec<UnitRun>,
    compute: impl FnOnce(()) -> Result<Vec<T>>,
    table: &str,
) -> Result<Vec<T>> {
    let claim = match work.acquire(key, checkpoint)? {
        Acquired::Cached(unit) => {
            units.push(UnitRun::new(key, "cached", unit.seconds));
            return unit.table(table);
        }
        Acquired::Absent(state) => return absent(work, key, state, units).map(|()| Vec::new()),
        Acquired::Compute(claim) => claim,
    };
    let start = Instant::now();
    let rows = compute(())?;
    let seconds = start.elapsed().as_secs_f64();
    work.cache.put(key, &[Table::new(table, &rows)?], seconds)?;
    drop(claim);
    units.push(UnitRun::new(key, "computed", seconds));
    Ok(rows)
}

/// A unit this run does not compute: its state is recorded (`--status`), or it is missing (`--report`).
fn absent(
    work: &UnitWork,
    key: &UnitKey,
    state: UnitState,
    units: &mut Vec<UnitRun>,
) -> Result<()> {
    if work.mode == UnitMode::Status {
        units.push(UnitRun::new(key, state.name(), 0.0));
        return Ok(());
    }
    Err(MissingUnit {
        analysis: key.analysis.clone(),
        state,
    }
    .into())
}

/// The alignment unit: four tables.
fn run_unit_tables(
    work: &UnitWork,
    key: &UnitKey,
    checkpoint: &str,
    units: &mut Vec<UnitRun>,
    compute: impl FnOnce() -> Result<AlignOutput>,
) -> Result<AlignOutput> {
    let claim = match work.acquire(key, checkpoint)? {
        Acquired::Cached(unit) => {
            units.push(UnitRun::new(key, "cached", unit.seconds));
            return Ok(AlignOutput {
                layers: unit.table("layers")?,
                pairs: unit.table("pairs")?,
                weight_rows: unit.table("weight_r2")?,
                versus: unit.table("versus")?,
            });
        }
        Acquired::Absent(state) => {
            absent(work, key, state, units)?;
            return Ok(AlignOutput::default());
        }
        Acquired::Compute(claim) => claim,
    };
    let start = Instant::now();
    let output = compute()?;
    let seconds = start.elapsed().as_secs_f64();
    work.cache.put(
        key,
        &[
            Table::new("layers", &output.layers)?,
            Table::new("pairs", &output.pairs)?,
            Table::new("weight_r2", &output.weight_rows)?,
            Table::new("versus", &output.versus)?,
        ],
        seconds,
    )?;
    drop(claim);
    units.push(UnitRun::new(key, "computed", seconds));
    Ok(output)
}

/// Pairs (earlier, later) of checkpoints whose weights hash the same.
fn duplicate_checkpoints(records: &[CheckpointRecord]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, b) in records.iter().enumerate() {
        if let Some(a) = records[..i]
            .iter()
            .find(|a| !a.fingerprint.is_empty() && a.fingerprint == b.fingerprint)
        {
            out.push((a.label.clone(), b.label.clone()));
        }
    }
    out
}

fn dry_run(
    plan: &Plan,
    options: &ScanOptions,
    config: &ModelConfig,
    cache: &UnitCache,
    printer: &Printer,
) -> Result<()> {
    let mut total_bytes = 0u64;
    let mut lines = vec![format!(
        "{:<40} {:>8} {:>12}  source",
        "checkpoint", "step", "weights MB"
    )];
    for planned in &plan.checkpoints {
        let opened = open_planned(planned, plan, Some(config))?;
        let source = opened.source();
        let bytes: u64 = if planned.is_init() {
            0
        } else {
            source.tensor_infos().iter().map(|t| t.bytes).sum()
        };
        total_bytes += bytes;
        lines.push(format!(
            "{:<40} {:>8} {:>12.1}  {}",
            planned.label,
            planned.step.map_or("-".into(), |s| s.to_string()),
            bytes as f64 / 1e6,
            source.provenance().spec
        ));
    }
    // Two forwards (predict over all tokens, sinks over a subset) at 2 FLOPs per parameter and token.
    let parameters = (config.num_hidden_layers
        * (4 * config.hidden_size * config.hidden_size
            + 3 * config.hidden_size * config.intermediate_size)) as f64;
    let tokens = (options.tokens + options.sink_sequences * options.seq_len) as f64;
    let seconds =
        plan.checkpoints.len() as f64 * 2.0 * parameters * tokens / ESTIMATE_FLOPS_PER_SECOND;
    lines.push(format!(
        "{} checkpoints; {:.1} MB of weights to read (Hub files already cached are not fetched again); unit cache {}",
        plan.checkpoints.len(),
        total_bytes as f64 / 1e6,
        cache.dir().display()
    ));
    lines.push(format!(
        "estimated compute ≈ {:.0} s at a nominal {:.0} GFLOP/s (forwards only; downloads extra)",
        seconds,
        ESTIMATE_FLOPS_PER_SECOND / 1e9
    ));
    printer.result(lines.join("\n"));
    Ok(())
}

/// Scan progress: checkpoints done, with the checkpoint, analysis and layer under way as the message
/// (a bar on a terminal, plain lines otherwise; hidden with --quiet). Interior mutability because
/// the analyses report layers through `Fn` callbacks.
struct Bars {
    progress: RefCell<Progress>,
    checkpoints_done: Cell<usize>,
    checkpoint: RefCell<String>,
    analysis: RefCell<(String, i64)>,
}

impl Bars {
    fn new(printer: &Printer, checkpoints: usize) -> Self {
        Bars {
            progress: RefCell::new(Progress::new(
                printer,
                "scan",
                "checkpoint",
                checkpoints as u64,
            )),
            checkpoints_done: Cell::new(0),
            checkpoint: RefCell::new(String::new()),
            analysis: RefCell::new((String::new(), 0)),
        }
    }

    fn checkpoint(&self, label: &str) {
        *self.checkpoint.borrow_mut() = label.to_string();
        *self.analysis.borrow_mut() = (String::new(), 0);
        self.show(None);
    }

    fn checkpoint_done(&self) {
        self.checkpoints_done.set(self.checkpoints_done.get() + 1);
        self.show(None);
    }

    fn analysis(&self, name: &str, layers: i64) {
        *self.analysis.borrow_mut() = (name.to_string(), layers);
        self.show(Some(0));
    }

    fn layer(&self, done: i64) {
        self.show(Some(done));
    }

    fn show(&self, layer: Option<i64>) {
        let mut message = self.checkpoint.borrow().clone();
        let (analysis, layers) = &*self.analysis.borrow();
        if let (Some(done), false) = (layer, analysis.is_empty()) {
            message.push_str(&format!(" · {analysis} layer {done}/{layers}"));
        }
        let mut progress = self.progress.borrow_mut();
        progress.set_message(message);
        progress.set_position(self.checkpoints_done.get() as f64);
    }

    fn note(&self, message: String) {
        self.progress.borrow().println(message);
    }

    fn finish(&self) {
        self.progress.borrow().finish();
    }
}

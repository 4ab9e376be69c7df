//! One checkpoint of a scan: open it, run its units (fingerprint, predictability, alignment, sink
//! statistics) through the unit cache, and record what produced them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::alignment_pass::{run_alignment, AlignOutput, MeasuredReferenceSet};
use crate::analysis::inspection::fingerprint;
use crate::analysis::predictability::PredictionRow;
use crate::analysis::predictability_pass::{run_predictability, TOKENS_PER_BATCH};
use crate::analysis::sinks::{SinkRow, SinkStatisticsSink, MIN_VISIBLE_QUERIES, SINK_THRESHOLD};
use crate::config::rope_scaling::RopeScaling;
use crate::config::ModelConfig;
use crate::data::token_set::TokenSet;
use crate::model::forward::{forward_streamed, ForwardSettings, OutputHead};
use crate::output::digest::{is_sha256_hex, sha256_file, sha256_hex};
use crate::output::manifest::{tool_version, ANALYSIS_VERSION};
use crate::printer::Printer;
use crate::series::checkpoint_open::{open_planned, OpenCheckpoint};
use crate::series::plan::{Plan, PlannedCheckpoint};
use crate::series::scan_options::ScanOptions;
use crate::series::scan_progress::ScanProgress;
use crate::series::scan_tables::{CheckpointRow, ScanTables};
use crate::series::shard::Shard;
use crate::series::unit_cache::{Table, UnitCache, UnitKey};
use crate::series::units::{
    clear_failure, record_failure, recorded_failure, MissingUnit, UnitMode, UnitRun, UnitState,
    UnitStatus, UnitWork,
};
use crate::source::Provenance;

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
            .filter(|n| is_sha256_hex(n));
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

/// Units this run computed (not read from the cache).
pub fn units_computed(records: &[CheckpointRecord]) -> usize {
    records
        .iter()
        .flat_map(|r| &r.units)
        .filter(|u| u.status == UnitStatus::Computed)
        .count()
}

/// A checkpoint that `--report` could not assemble, or a shard could not finish.
#[derive(Clone, Debug, Serialize)]
pub struct IncompleteRow {
    pub checkpoint: String,
    pub state: IncompleteState,
    pub error: String,
}

/// Why a checkpoint is incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncompleteState {
    /// A shard recorded an error for it.
    Failed,
    /// A unit it needs is claimed by a live worker.
    Running,
    /// A unit it needs is neither finished nor claimed.
    Pending,
    /// A unit it needs is finished, but `--force` set it aside and this run computes nothing.
    Done,
    /// It failed here.
    Error,
}

impl IncompleteState {
    pub fn name(self) -> &'static str {
        match self {
            IncompleteState::Failed => "failed",
            IncompleteState::Running => "running",
            IncompleteState::Pending => "pending",
            IncompleteState::Done => "done",
            IncompleteState::Error => "error",
        }
    }
}

/// The incomplete-row of a checkpoint that failed with `error` (here, or in a shard).
pub fn incomplete_row(
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
            IncompleteState::Failed,
            format!("{} (on {}:{})", failure.error, failure.host, failure.pid),
        ),
        (None, Some(missing)) => (
            match missing.state {
                UnitState::Done => IncompleteState::Done,
                UnitState::Running => IncompleteState::Running,
                UnitState::Pending => IncompleteState::Pending,
            },
            missing.to_string(),
        ),
        (None, None) => (
            IncompleteState::Error,
            format!("{error:#}").replace('\n', " "),
        ),
    };
    IncompleteRow {
        checkpoint: checkpoint.to_string(),
        state,
        error,
    }
}

/// sha256 of the config as JSON, hex.
fn config_digest(config: &ModelConfig) -> String {
    sha256_hex(&serde_json::to_vec(&config.to_hf_json()).expect("config serialises"))
}

/// What every checkpoint of one scan shares: the plan, the series' config and token set, the
/// options, the unit cache, how forwards run, and the progress display.
pub struct SeriesScan<'a> {
    pub plan: &'a Plan,
    pub series_config: &'a ModelConfig,
    pub token_set: &'a TokenSet,
    pub options: &'a ScanOptions,
    pub work: &'a UnitWork<'a>,
    /// Keep a Hub revision's downloads after its units (`--keep-downloads`).
    pub keep_downloads: bool,
    pub forward: ForwardSettings,
    pub progress: &'a ScanProgress,
}

/// What one pass over the selected checkpoints produced.
pub struct ScanOutcome {
    pub records: Vec<CheckpointRecord>,
    pub incomplete: Vec<IncompleteRow>,
    pub tables: ScanTables,
}

impl ScanOutcome {
    /// A shard's end: its counts as a note, and an error naming the checkpoints that failed
    /// (each recorded for the report job).
    pub fn finish_shard(
        &self,
        shard: Shard,
        selected: usize,
        elapsed: Duration,
        printer: &Printer,
    ) -> Result<()> {
        let (records, incomplete) = (&self.records, &self.incomplete);
        printer.note(format!(
            "shard {}/{}: {} checkpoints done ({} units computed), {} failed ({:.1} s)",
            shard.index,
            shard.count,
            records.len(),
            units_computed(records),
            incomplete.len(),
            elapsed.as_secs_f64()
        ));
        if !incomplete.is_empty() {
            let failed: Vec<&str> = incomplete.iter().map(|r| r.checkpoint.as_str()).collect();
            bail!(
                "shard {}/{}: {} of {} checkpoints failed: {}",
                shard.index,
                shard.count,
                incomplete.len(),
                selected,
                failed.join(", ")
            );
        }
        Ok(())
    }

    /// A report's end: each missing or failed checkpoint as a warning, then one error for them.
    pub fn check_complete(&self, out_dir: &Path, planned: usize, printer: &Printer) -> Result<()> {
        if self.incomplete.is_empty() {
            return Ok(());
        }
        for row in &self.incomplete {
            printer.warn(format!(
                "{}: {} — {}",
                row.checkpoint,
                row.state.name(),
                row.error
            ));
        }
        bail!(
            "report {}: {} of {} checkpoints are missing or failed (listed in incomplete.csv)",
            out_dir.display(),
            self.incomplete.len(),
            planned
        )
    }
}

impl SeriesScan<'_> {
    /// Scans `selected` in order. A failing checkpoint stops the pass when `stop_at_first_error`
    /// (a plain scan); otherwise (a shard, `--report`, `--status`) it is listed and the pass goes
    /// on, and a computing shard records the failure for the report job.
    pub fn run(
        &self,
        selected: &[&PlannedCheckpoint],
        series_name: &str,
        stop_at_first_error: bool,
    ) -> Result<ScanOutcome> {
        let (work, bars) = (self.work, self.progress);
        let mut outcome = ScanOutcome {
            records: Vec::new(),
            incomplete: Vec::new(),
            tables: ScanTables::default(),
        };
        for planned in selected {
            bars.checkpoint(&planned.label);
            let result = self
                .checkpoint(planned, &mut outcome.tables)
                .with_context(|| format!("checkpoint {}", planned.label));
            match result {
                Ok(record) => {
                    if work.mode == UnitMode::Compute {
                        clear_failure(work.cache.dir(), series_name, &planned.label);
                    }
                    outcome.records.push(record);
                }
                Err(e) if stop_at_first_error => return Err(e),
                Err(e) => {
                    let row = incomplete_row(&e, work.cache, series_name, &planned.label);
                    if work.mode == UnitMode::Compute {
                        record_failure(work.cache.dir(), series_name, &planned.label, &e)?;
                        bars.note(format!("  {}: failed: {}", planned.label, row.error));
                    }
                    outcome.incomplete.push(row);
                }
            }
            bars.checkpoint_done();
        }
        bars.finish();
        Ok(outcome)
    }

    /// Runs one checkpoint's units, adds their rows to `tables`, and returns its record.
    pub fn checkpoint(
        &self,
        planned: &PlannedCheckpoint,
        tables: &mut ScanTables,
    ) -> Result<CheckpointRecord> {
        let SeriesScan {
            plan,
            series_config,
            token_set,
            options,
            work,
            keep_downloads,
            ref forward,
            progress: bars,
        } = *self;
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
        let fingerprint_rows: Vec<FingerprintRow> =
            work.get_or_compute_rows(&fingerprint_key, label, &mut units, "rows", || {
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
            })?;
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
        let mut prediction_rows: Vec<PredictionRow> =
            work.get_or_compute_rows(&predict_key, label, &mut units, "predictability", || {
                bars.analysis("predict", config.num_hidden_layers);
                let output = run_predictability(
                    source,
                    token_set.clone(),
                    &options.predictability,
                    forward,
                    &Printer { quiet: true },
                    &mut |layer, _| bars.layer(layer),
                )?;
                Ok(output.rows)
            })?;

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
        let align = work
            .get_or_compute(
                &align_key,
                label,
                &mut units,
                alignment_from_unit,
                alignment_tables,
                || {
                    bars.analysis("align", config.num_hidden_layers);
                    let mut progress = |layer: i64, _: i64| bars.layer(layer);
                    run_alignment(
                        source,
                        &options.alignment,
                        options.max_refs,
                        &measured,
                        &mut progress,
                    )
                },
            )?
            .unwrap_or_default();

        // Sink statistics on the first sequences of the token set.
        let sink_key = key(
            "sinks",
            serde_json::json!({"threshold": SINK_THRESHOLD, "min_visible_queries": MIN_VISIBLE_QUERIES, "sequences": options.sink_sequences}),
            Some(&token_set.hash),
        );
        let mut sink_rows: Vec<SinkRow> =
            work.get_or_compute_rows(&sink_key, label, &mut units, "sinks", || {
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
                    &forward.load,
                    OutputHead::None,
                    &forward.hidden_budget,
                    Some(&mut progress),
                )?;
                sink.rows()
            })?;

        // Before eviction: downloaded files are gone after it.
        let file_sha256 = file_hashes(&provenance.files)?;
        if let OpenCheckpoint::Hub(hub) = &mut opened {
            // A local series folder is the series itself, never a download to evict.
            if !keep_downloads && !plan.hub.offline {
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
}

/// The alignment unit's four tables.
fn alignment_tables(output: &AlignOutput) -> Result<Vec<Table>> {
    Ok(vec![
        Table::new("layers", &output.layers)?,
        Table::new("pairs", &output.pairs)?,
        Table::new("weight_r2", &output.weight_rows)?,
        Table::new("versus", &output.versus)?,
    ])
}

fn alignment_from_unit(unit: &crate::series::unit_cache::CachedUnit) -> Result<AlignOutput> {
    Ok(AlignOutput {
        layers: unit.table("layers")?,
        pairs: unit.table("pairs")?,
        weight_rows: unit.table("weight_r2")?,
        versus: unit.table("versus")?,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct FingerprintRow {
    fingerprint: String,
}

/// Pairs (earlier, later) of checkpoints whose weights hash the same.
pub fn duplicate_checkpoints(records: &[CheckpointRecord]) -> Vec<(String, String)> {
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

/// The report's checkpoint table: one row per record, with its init flag and duplicate.
pub fn checkpoint_rows(
    records: &[CheckpointRecord],
    plan: &Plan,
    duplicates: &[(String, String)],
) -> Vec<CheckpointRow> {
    records
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
        .collect()
}

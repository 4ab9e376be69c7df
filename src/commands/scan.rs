//! `ckpt-scan scan SERIES`: every checkpoint of a series through predict, align and sink
//! statistics on one token set, each (checkpoint, analysis) a cached unit, then one report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::analysis::alignment::AlignmentOptions;
use crate::analysis::predictability::{Candidates, PredictabilityOptions};
use crate::analysis::sinks::{SinkStatisticsSink, MIN_VISIBLE_QUERIES, SINK_THRESHOLD};
use crate::capture::HeadKind;
use crate::cli::ScanArgs;
use crate::commands::align::{run_alignment, AlignOutput, MeasuredReferenceSet};
use crate::commands::inspect::fingerprint;
use crate::commands::predict::{run_predictability, TOKENS_PER_BATCH};
use crate::data::corpora::{load_documents, TextSource};
use crate::data::token_set::{TokenSet, TokenSetOptions};
use crate::data::tokenizer::tokenizer_for;
use crate::model::config::ModelConfig;
use crate::model::forward::{forward_streamed, OutputHead};
use crate::model::rope_scaling::RopeScaling;
use crate::printer::Printer;
use crate::report::atomic::write_atomic;
use crate::report::manifest::{tool_version, ToolVersion};
use crate::report::scan_report::{write_report, CheckpointRow, ScanTables};
use crate::report::unit_cache::{Table, UnitCache, UnitKey};
use crate::series::manifest::{parse_scheme, SeriesManifest};
use crate::series::plan::{
    init_config, init_spec, resolve_plan, Plan, PlannedCheckpoint, PlannedSource,
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
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    for path in files {
        let blob = std::fs::read_link(path)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        let hash = match blob {
            Some(name) => name,
            None => {
                let Ok(metadata) = std::fs::metadata(path) else {
                    out.push((path.display().to_string(), "not present".into()));
                    continue;
                };
                let size = metadata.len();
                if size > MAX_HASHED_FILE_BYTES {
                    format!("not hashed ({size} bytes)")
                } else {
                    let mut hasher = Sha256::new();
                    let mut file =
                        std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
                    std::io::copy(&mut file, &mut hasher)?;
                    hasher
                        .finalize()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                }
            }
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
    seconds: f64,
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
    let var = |name: &str| std::env::var(name).ok();
    let plan = resolve_plan(&manifest, &manifest_dir, &settings.hub, &var)?;
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
    let cache = UnitCache::new(&args.cache_dir.clone().unwrap_or_else(default_unit_cache));

    // The series' config fixes shapes and the token set: take it from the first real checkpoint.
    let first = plan
        .checkpoints
        .iter()
        .find(|c| !c.is_init())
        .or(plan.checkpoints.first())
        .expect("non-empty plan");
    let series_config = open_planned(first, &plan, None)?.source().config().clone();
    let options = scan_options(args, &manifest, &series_config)?;

    if args.dry_run {
        return dry_run(&plan, &options, &series_config, &cache, &printer);
    }
    let marker = out_dir.join(IN_PROGRESS);
    if marker.exists() && !args.resume && !args.force {
        bail!(
            "{}: a previous scan into this folder did not finish\nhint: --resume continues it (finished units are reused), --force recomputes everything",
            out_dir.display()
        );
    }
    write_atomic(&marker, b"scan running\n")?;

    let tokenizer_source = open_planned(first, &plan, Some(&series_config))?;
    let (token_set, tokenizer_name) = build_token_set(
        tokenizer_source.source(),
        &manifest,
        &manifest_dir,
        &options,
        &series_config,
    )?;
    drop(tokenizer_source);
    printer.note(format!(
        "scan {}: {} checkpoints, {} tokens ({} sequences of {}), token set {}",
        manifest.name,
        plan.checkpoints.len(),
        token_set.sequences.len() * token_set.seq_len,
        token_set.sequences.len(),
        token_set.seq_len,
        &token_set.hash[..12]
    ));

    let bars = Bars::new(settings.quiet, plan.checkpoints.len());
    let mut tables = ScanTables::default();
    let mut records = Vec::new();
    for planned in &plan.checkpoints {
        bars.checkpoint(&planned.label);
        let record = scan_checkpoint(
            planned,
            &plan,
            &series_config,
            &token_set,
            &options,
            &cache,
            args,
            settings,
            &bars,
            &mut tables,
        )
        .with_context(|| format!("checkpoint {}", planned.label))?;
        records.push(record);
        bars.checkpoint_done();
    }
    bars.finish();

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
        seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest_json)?.as_bytes(),
    )?;
    std::fs::remove_file(&marker)
        .with_context(|| format!("{}: cannot remove", marker.display()))?;
    let computed: usize = records
        .iter()
        .flat_map(|r| &r.units)
        .filter(|u| u.status == "computed")
        .count();
    printer.note(format!(
        "wrote {} ({} units computed, {} cached, {:.1} s)",
        out_dir.display(),
        computed,
        records.iter().map(|r| r.units.len()).sum::<usize>() - computed,
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn default_unit_cache() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/ckpt-scan/units")
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
    if text == TextSource::Random {
        return Ok((
            TokenSet::uniform_random(config.vocab_size, &token_options)?,
            "none (random ids)".into(),
        ));
    }
    let explicit = manifest
        .analysis
        .tokenizer
        .as_deref()
        .map(|t| -> Result<PathBuf> {
            let var = |name: &str| std::env::var(name).ok();
            Ok(manifest_dir.join(crate::series::manifest::expand(t, &var)?))
        })
        .transpose()?;
    let (tokenizer, name) = tokenizer_for(source, explicit.as_deref())?;
    let documents = load_documents(&text)?;
    Ok((
        TokenSet::build(&documents, &tokenizer, &token_options)?,
        name,
    ))
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
    cache: &UnitCache,
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
    let tool = {
        let t = tool_version();
        format!("{} {} {}", t.name, t.version, t.git_sha)
    };
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
        cache,
        &fingerprint_key,
        args.force,
        &mut units,
        |_| {
            let last = config.num_hidden_layers - 1;
            let names = [
                "model.layers.0.self_attn.k_proj.weight".to_string(),
                format!("model.layers.{last}.mlp.down_proj.weight"),
            ];
            let mut parts = Vec::new();
            for name in &names {
                parts.push(fingerprint(&source.read(name)?));
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
        cache,
        &predict_key,
        args.force,
        &mut units,
        |_| {
            bars.analysis("predict", config.num_hidden_layers);
            let quiet = Settings {
                quiet: true,
                ..settings.clone()
            };
            let output =
                run_predictability(source, token_set.clone(), &options.predictability, &quiet)?;
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
    let align = run_unit_tables(cache, &align_key, args.force, &mut units, || {
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
        cache,
        &sink_key,
        args.force,
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

/// A single-table unit: read from the cache, or computed and stored.
fn run_unit<T: Serialize + serde::de::DeserializeOwned>(
    cache: &UnitCache,
    key: &UnitKey,
    force: bool,
    units: &mut Vec<UnitRun>,
    compute: impl FnOnce(()) -> Result<Vec<T>>,
    table: &str,
) -> Result<Vec<T>> {
    if !force {
        if let Some(unit) = cache.get(key) {
            units.push(UnitRun::new(key, "cached", unit.seconds));
            return unit.table(table);
        }
    }
    let start = Instant::now();
    let rows = compute(())?;
    let seconds = start.elapsed().as_secs_f64();
    cache.put(key, &[Table::new(table, &rows)?], seconds)?;
    units.push(UnitRun::new(key, "computed", seconds));
    Ok(rows)
}

/// The alignment unit: four tables.
fn run_unit_tables(
    cache: &UnitCache,
    key: &UnitKey,
    force: bool,
    units: &mut Vec<UnitRun>,
    compute: impl FnOnce() -> Result<AlignOutput>,
) -> Result<AlignOutput> {
    if !force {
        if let Some(unit) = cache.get(key) {
            units.push(UnitRun::new(key, "cached", unit.seconds));
            return Ok(AlignOutput {
                layers: unit.table("layers")?,
                pairs: unit.table("pairs")?,
                weight_rows: unit.table("weight_r2")?,
                versus: unit.table("versus")?,
            });
        }
    }
    let start = Instant::now();
    let output = compute()?;
    let seconds = start.elapsed().as_secs_f64();
    cache.put(
        key,
        &[
            Table::new("layers", &output.layers)?,
            Table::new("pairs", &output.pairs)?,
            Table::new("weight_r2", &output.weight_rows)?,
            Table::new("versus", &output.versus)?,
        ],
        seconds,
    )?;
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

/// Progress bars: checkpoints, and layers of the current analysis (hidden with --quiet).
struct Bars {
    checkpoints: ProgressBar,
    layers: ProgressBar,
    _multi: MultiProgress,
}

impl Bars {
    fn new(quiet: bool, checkpoints: usize) -> Self {
        let multi = MultiProgress::with_draw_target(if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let checkpoints_bar = multi.add(ProgressBar::new(checkpoints as u64));
        checkpoints_bar.set_style(style.clone());
        checkpoints_bar.set_prefix("checkpoints");
        let layers = multi.add(ProgressBar::new(0));
        layers.set_style(style);
        Bars {
            checkpoints: checkpoints_bar,
            layers,
            _multi: multi,
        }
    }

    fn checkpoint(&self, label: &str) {
        self.checkpoints.set_message(label.to_string());
    }

    fn checkpoint_done(&self) {
        self.checkpoints.inc(1);
    }

    fn analysis(&self, name: &str, layers: i64) {
        self.layers.reset();
        self.layers.set_length(layers as u64);
        self.layers.set_prefix(name.to_string());
    }

    fn layer(&self, done: i64) {
        self.layers.set_position(done as u64);
    }

    fn note(&self, message: String) {
        self.checkpoints.println(message);
    }

    fn finish(&self) {
        self.layers.finish_and_clear();
        self.checkpoints.finish_and_clear();
    }
}

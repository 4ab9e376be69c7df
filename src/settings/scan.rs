//! Resolving `scan`: flags over the series manifest's `[analysis]` over the built-in defaults,
//! checked against the series' config, into [`ScanOptions`]; and the flags a Slurm worker repeats.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::analysis::alignment::AlignmentOptions;
use crate::analysis::predictability::{Candidates, PredictabilityOptions};
use crate::capture::HeadKind;
use crate::cli::ScanArgs;
use crate::config::ModelConfig;
use crate::data::paths::{manifest_var, unit_cache_root};
use crate::defaults::{
    seq_len_within, DEFAULT_MAX_REFS, DEFAULT_SEED, DEFAULT_TEXT, SCAN_NULL_SAMPLES,
    SCAN_SEQ_LEN_CAP, SCAN_SINK_SEQUENCES, SCAN_TOKENS,
};
use crate::output::atomic::check_output_dir;
use crate::printer::Printer;
use crate::series::checkpoint_open::open_planned;
use crate::series::manifest::expand;
use crate::series::manifest::SeriesManifest;
use crate::series::plan::{resolve_plan, Plan};
use crate::series::scan_options::ScanOptions;
use crate::series::shard::Shard;
use crate::series::slurm;
use crate::series::slurm_submission::SlurmSubmission;
use crate::series::unit_cache::UnitCache;
use crate::series::units::UnitMode;
use crate::settings::{check_seq_len, Settings};
use crate::stats::selection::Selection;

/// The scan's analysis settings: each from its flag, else the manifest's `[analysis]`, else the
/// default; checked against the series' config (`config`).
pub fn scan_options(
    args: &ScanArgs,
    seed: Option<u64>,
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
    let max_refs = args
        .max_refs
        .or(defaults.max_refs)
        .unwrap_or(DEFAULT_MAX_REFS);
    let seed = seed.or(defaults.seed).unwrap_or(DEFAULT_SEED);
    let seq_len = args
        .seq_len
        .or(defaults.seq_len)
        .unwrap_or_else(|| seq_len_within(config.max_position_embeddings, SCAN_SEQ_LEN_CAP));
    check_seq_len(seq_len, config, " (or analysis.seq_len in the manifest)")?;
    if max_refs == 0 {
        bail!(
            "series {}: analysis.max_refs must be at least 1",
            manifest.name
        );
    }
    let sink_sequences = args
        .sink_sequences
        .or(defaults.sink_sequences)
        .unwrap_or(SCAN_SINK_SEQUENCES);
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
            .unwrap_or_else(|| DEFAULT_TEXT.into()),
        tokens: args.tokens.or(defaults.tokens).unwrap_or(SCAN_TOKENS),
        seq_len,
        seed,
        sink_sequences,
        alignment: AlignmentOptions {
            kinds,
            fold_norm: false,
            partners: max_refs,
            null_samples: SCAN_NULL_SAMPLES,
            seed,
        },
        predictability,
        max_refs,
    })
}

/// The tokenizer the manifest names (`analysis.tokenizer`, relative to the manifest's folder), if
/// any; otherwise the token set uses the first checkpoint's own.
pub fn series_tokenizer(manifest: &SeriesManifest, manifest_dir: &Path) -> Result<Option<PathBuf>> {
    manifest
        .analysis
        .tokenizer
        .as_deref()
        .map(|t| -> Result<PathBuf> { Ok(manifest_dir.join(expand(t, &manifest_var)?)) })
        .transpose()
}

/// The analysis flags a Slurm worker repeats, so every shard measures what this scan would.
fn worker_flags(args: &ScanArgs, seed: Option<u64>) -> Vec<String> {
    let mut words: Vec<String> = vec![
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
    flag("seed", seed.map(|v| v.to_string()));
    if args.keep_downloads {
        words.push("--keep-downloads".into());
    }
    words
}

/// What this run does with units not in the cache: `--report` assembles, `--status` looks up,
/// otherwise compute.
pub fn unit_mode(args: &ScanArgs) -> UnitMode {
    match (args.report, args.status) {
        (true, _) => UnitMode::Assemble,
        (_, true) => UnitMode::Status,
        _ => UnitMode::Compute,
    }
}

/// `--slurm`: the submission for this series, one shard per checkpoint unless `--shards`.
pub fn slurm_submission(
    args: &ScanArgs,
    manifest: &SeriesManifest,
    manifest_path: &Path,
    checkpoints: usize,
    out_dir: &Path,
    cache_dir: &Path,
    seed: Option<u64>,
) -> Result<SlurmSubmission> {
    let shards = args.shards.unwrap_or(checkpoints);
    if shards == 0 {
        bail!("--shards 0: at least one shard is needed");
    }
    Ok(SlurmSubmission {
        series_name: manifest.name.clone(),
        manifest_path: manifest_path.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        cache_dir: cache_dir.to_path_buf(),
        shards: shards.min(checkpoints),
        options: slurm::resolve(&args.slurm_options.settings(), &manifest.slurm)?,
        worker_flags: worker_flags(args, seed),
        dry_run: args.dry_run,
    })
}

/// Everything a scan run resolves before it touches a unit: the series and its plan, where the
/// report and units go, the series' config and the analysis options, the shard and unit mode.
pub struct ScanSettings {
    pub manifest: SeriesManifest,
    pub manifest_path: PathBuf,
    pub manifest_dir: PathBuf,
    pub plan: Plan,
    pub out_dir: PathBuf,
    pub cache: UnitCache,
    /// The config of the series' first real checkpoint: it fixes shapes and the token set.
    pub series_config: ModelConfig,
    pub options: ScanOptions,
    pub shard: Option<Shard>,
    pub mode: UnitMode,
}

impl ScanSettings {
    pub fn resolve(args: &ScanArgs, settings: &Settings, printer: &Printer) -> Result<Self> {
        let hub = &settings.hub;
        let (manifest, manifest_path) = SeriesManifest::load(&args.series)?;
        let manifest_dir = manifest_path
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let plan = resolve_plan(&manifest, &manifest_dir, hub, &manifest_var)?;
        for missing in &plan.missing_revisions {
            let name = &manifest.name;
            printer.warn(format!(
                "series {name}: revision {missing} is not in the repo; skipped"
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
        // The series' config fixes shapes and the token set.
        let first = plan.series_checkpoint();
        let series_config = open_planned(first, &plan, None)?.source().config().clone();
        let options = scan_options(args, settings.seed, &manifest, &series_config)?;
        // A dry run and a submission scan no shard: its variables need not be set.
        let runs_here = !args.dry_run && !args.slurm;
        let shard = match args.shard.as_deref() {
            Some(text) if runs_here => Some(Shard::parse(text, &|name| std::env::var(name).ok())?),
            _ => None,
        };
        Ok(ScanSettings {
            manifest,
            manifest_path,
            manifest_dir,
            plan,
            out_dir,
            cache,
            series_config,
            options,
            shard,
            mode: unit_mode(args),
        })
    }
}

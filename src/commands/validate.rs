//! `ckpt-scan validate SOURCE --tasks …`: multiple-choice accuracy with 95% intervals per task and
//! mode (baseline, and ACT when given), prefill/decode speed with the KV cache, KV bytes per token,
//! peak memory → reports/validate-<source>/{report.md, accuracy.csv, choices.csv, speed.csv, manifest.json}.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cli::ValidateArgs;
use crate::commands::validate_tasks::{ExtraManifest, ExtraResults, ExtraTasks};
use crate::data::tasks::{eval_request_file, read_mc_items, select_items, McItem};
use crate::data::tokenizer::{encode, tokenizer_for};
use crate::edit::AttentionEdit;
use crate::infer::generate::{generate, GenerationOptions};
use crate::infer::harness::{accuracy, score_items, ItemScore, Metric};
use crate::model::config::ModelConfig;
use crate::model::kv_cache::KvCache;
use crate::model::resident::ResidentModel;
use crate::printer::Printer;
use crate::report::atomic::write_atomic;
use crate::report::csv::write_csv;
use crate::report::default_out_dir;
use crate::report::manifest::{tool_version, ToolVersion};
use crate::settings::{describe, Settings};
use crate::source::{open_source_with, Provenance};

/// Prompts the decode-speed measurement generates from (the first items of the first task).
const DECODE_PROMPTS: usize = 4;

/// One evaluation mode: a name and the attention edit it runs with.
pub struct Mode<'a> {
    pub name: &'static str,
    pub edit: Option<&'a dyn AttentionEdit>,
}

#[derive(Serialize)]
pub struct AccuracyRow {
    pub task: String,
    pub variant: String,
    pub mode: String,
    pub metric: String,
    pub items: u64,
    pub correct: u64,
    pub accuracy: f64,
    pub low_95: f64,
    pub high_95: f64,
    /// Accuracy minus the baseline's on the same items (0 for the baseline).
    pub delta_vs_baseline: f64,
}

#[derive(Serialize)]
pub struct ChoiceRow {
    pub task: String,
    pub variant: String,
    pub mode: String,
    pub doc_id: i64,
    pub choice: usize,
    pub gold: usize,
    pub loglik: f64,
    pub continuation_tokens: usize,
    pub continuation_chars: usize,
}

#[derive(Serialize)]
pub struct SpeedRow {
    pub mode: String,
    /// Scoring forwards (prefill only) over every task's requests.
    pub scoring_tokens: i64,
    pub scoring_tokens_per_second: f64,
    /// KV-cached generation from a few prompts: prefill then greedy decode.
    pub prefill_tokens: i64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens: i64,
    pub decode_tokens_per_second: f64,
    pub kv_bytes_per_token: f64,
}

#[derive(Serialize)]
struct TaskManifest {
    task: String,
    variant: String,
    request_file: PathBuf,
    request_file_sha256: String,
    items_available: usize,
    items_used: usize,
    /// sha256 of the chosen doc ids, comma-separated in order.
    items_sha256: String,
}

#[derive(Serialize)]
struct Manifest<'a> {
    tool: ToolVersion,
    source: &'a Provenance,
    config: &'a ModelConfig,
    tokenizer: String,
    tasks: Vec<TaskManifest>,
    limit: Option<usize>,
    seed: u64,
    batch_tokens: usize,
    decode_tokens: usize,
    act: Option<PathBuf>,
    device: String,
    peak_rss_bytes: Option<u64>,
    seconds: f64,
    /// gsm8k and bpb settings (absent keys when not run).
    #[serde(flatten)]
    extra: ExtraManifest,
}

pub fn run(args: &ValidateArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    if args.tasks.is_empty() {
        bail!("--tasks: name at least one task (e.g. arc_easy)");
    }
    if args.batch_tokens == 0 {
        bail!("--batch-tokens must be at least 1");
    }
    let started = std::time::Instant::now();
    let source = open_source_with(&args.source, &settings.hub)?;
    let (tokenizer, tokenizer_name) = tokenizer_for(source.as_ref(), args.tokenizer.as_deref())?;
    let mut task_items = Vec::new();
    let mut task_manifests = Vec::new();
    for task in args.tasks.iter().filter(|t| !ExtraTasks::handles(t)) {
        let path = eval_request_file(task, &args.variant);
        let all = read_mc_items(&path)
            .with_context(|| format!("--tasks {task} --variant {}", args.variant))?;
        let available = all.len();
        let items = select_items(all, args.limit, args.seed);
        let ids: Vec<String> = items.iter().map(|i| i.doc_id.to_string()).collect();
        task_manifests.push(TaskManifest {
            task: task.clone(),
            variant: args.variant.clone(),
            request_file_sha256: sha256_file(&path)?,
            request_file: path,
            items_available: available,
            items_used: items.len(),
            items_sha256: hex(&Sha256::digest(ids.join(",").as_bytes())),
        });
        task_items.push((task.clone(), items));
    }
    let extra = ExtraTasks::plan(args, &tokenizer, source.config())?;
    let act = match &args.act {
        Some(path) => Some(crate::edit::act::Act::from_file(path, source.config())?),
        None => None,
    };
    let mut modes = vec![Mode {
        name: "baseline",
        edit: None,
    }];
    if let Some(act) = &act {
        modes.push(Mode {
            name: "act",
            edit: Some(act),
        });
    }
    printer.note(format!(
        "validate {}: {} ({}), modes {}, {}",
        args.source,
        task_items
            .iter()
            .map(|(t, i)| format!("{t} {} items", i.len()))
            .chain(extra.describe())
            .collect::<Vec<_>>()
            .join(", "),
        args.variant,
        modes.iter().map(|m| m.name).collect::<Vec<_>>().join("+"),
        describe(&settings.load)
    ));
    let model = ResidentModel::load(source.as_ref(), &settings.load)?;

    let mut accuracy_rows = Vec::new();
    let mut choice_rows = Vec::new();
    let mut speed_rows = Vec::new();
    let mut extra_results = ExtraResults::default();
    for mode in &modes {
        let mut scoring_tokens = 0;
        let mut scoring_seconds = 0.0;
        for (task, items) in &task_items {
            let (scores, stats) =
                score_items(&model, &tokenizer, items, args.batch_tokens, mode.edit)?;
            scoring_tokens += stats.tokens;
            scoring_seconds += stats.seconds;
            for metric in Metric::ALL {
                let summary = accuracy(&scores, metric);
                let baseline = accuracy_rows
                    .iter()
                    .find(|r: &&AccuracyRow| {
                        r.mode == "baseline" && &r.task == task && r.metric == metric.name()
                    })
                    .map_or(summary.accuracy, |r| r.accuracy);
                printer.note(format!(
                    "{task} {} {}: {:.4} [{:.4}, {:.4}] ({}/{})",
                    mode.name,
                    metric.name(),
                    summary.accuracy,
                    summary.low_95,
                    summary.high_95,
                    summary.correct,
                    summary.items
                ));
                accuracy_rows.push(AccuracyRow {
                    task: task.clone(),
                    variant: args.variant.clone(),
                    mode: mode.name.into(),
                    metric: metric.name().into(),
                    items: summary.items,
                    correct: summary.correct,
                    accuracy: summary.accuracy,
                    low_95: summary.low_95,
                    high_95: summary.high_95,
                    delta_vs_baseline: summary.accuracy - baseline,
                });
            }
            choice_rows.extend(choice_rows_of(task, &args.variant, mode.name, &scores));
        }
        extra.run_mode(
            &model,
            &tokenizer,
            mode,
            &printer,
            &mut accuracy_rows,
            &mut extra_results,
        )?;
        let mut speed = SpeedRow {
            mode: mode.name.into(),
            scoring_tokens,
            scoring_tokens_per_second: scoring_tokens as f64 / scoring_seconds.max(1e-9),
            prefill_tokens: 0,
            prefill_tokens_per_second: f64::NAN,
            decode_tokens: 0,
            decode_tokens_per_second: f64::NAN,
            kv_bytes_per_token: f64::NAN,
        };
        if args.decode_tokens > 0 && !task_items.is_empty() {
            measure_decode(&model, &tokenizer, &task_items[0].1, args, mode, &mut speed)?;
        }
        speed_rows.push(speed);
    }

    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir("validate", &args.source));
    write_csv(&out_dir.join("accuracy.csv"), &accuracy_rows)?;
    write_csv(&out_dir.join("choices.csv"), &choice_rows)?;
    write_csv(&out_dir.join("speed.csv"), &speed_rows)?;
    extra_results.write(&out_dir)?;
    let manifest = Manifest {
        tool: tool_version(),
        source: source.provenance(),
        config: source.config(),
        tokenizer: tokenizer_name,
        tasks: task_manifests,
        limit: args.limit,
        seed: args.seed,
        batch_tokens: args.batch_tokens,
        decode_tokens: args.decode_tokens,
        act: args.act.clone(),
        device: describe(&settings.load),
        peak_rss_bytes: peak_rss_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        extra: extra.manifest(),
    };
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let report = report_markdown(
        &accuracy_rows,
        &speed_rows,
        &manifest_line(&manifest),
        manifest.peak_rss_bytes,
    );
    let report = report + &extra_results.markdown();
    write_atomic(&out_dir.join("report.md"), report.as_bytes())?;
    printer.result(report);
    printer.note(format!("wrote {}", out_dir.display()));
    Ok(())
}

fn choice_rows_of<'a>(
    task: &'a str,
    variant: &'a str,
    mode: &'a str,
    scores: &'a [ItemScore],
) -> impl Iterator<Item = ChoiceRow> + 'a {
    scores.iter().flat_map(move |item| {
        item.choices
            .iter()
            .enumerate()
            .map(move |(choice, c)| ChoiceRow {
                task: task.into(),
                variant: variant.into(),
                mode: mode.into(),
                doc_id: item.doc_id,
                choice,
                gold: item.gold,
                loglik: c.loglik,
                continuation_tokens: c.continuation_tokens,
                continuation_chars: c.continuation_chars,
            })
    })
}

/// Greedy KV-cached generation from the first items' gold-choice prompts, for decode speed and KV size.
fn measure_decode(
    model: &ResidentModel,
    tokenizer: &tokenizers::Tokenizer,
    items: &[McItem],
    args: &ValidateArgs,
    mode: &Mode,
    speed: &mut SpeedRow,
) -> Result<()> {
    let prompts = items
        .iter()
        .take(DECODE_PROMPTS)
        .map(|item| encode(tokenizer, &item.choices[item.gold].context))
        .collect::<Result<Vec<_>>>()?;
    if prompts.is_empty() {
        return Ok(());
    }
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let options = GenerationOptions {
        pad_token_id: model.config.pad_token_id.unwrap_or(0),
        ..GenerationOptions::greedy(args.decode_tokens)
    };
    let (_, stats) = generate(
        model, &prompts, &options, &mut cache, &mut rng, mode.edit, None,
    )?;
    speed.prefill_tokens = stats.prefill_tokens;
    speed.prefill_tokens_per_second = stats.prefill_tokens as f64 / stats.prefill_seconds.max(1e-9);
    speed.decode_tokens = stats.decode_tokens;
    speed.decode_tokens_per_second = stats.decode_tokens as f64 / stats.decode_seconds.max(1e-9);
    speed.kv_bytes_per_token = stats.kv_bytes as f64 / stats.kv_positions.max(1) as f64;
    Ok(())
}

fn manifest_line(m: &Manifest) -> String {
    format!(
        "source `{}`{}; tokenizer {}; items seed {}{}; {} {} ({})",
        m.source.spec,
        m.source
            .revision_sha
            .as_deref()
            .map(|s| format!(" @ `{s}`"))
            .unwrap_or_default(),
        m.tokenizer,
        m.seed,
        m.limit.map(|l| format!(", limit {l}")).unwrap_or_default(),
        m.tool.name,
        m.tool.version,
        m.tool.git_sha,
    )
}

/// The report from plain rows: accuracy table per task, metric and mode, then speed and memory.
pub fn report_markdown(
    accuracy: &[AccuracyRow],
    speed: &[SpeedRow],
    provenance: &str,
    peak_rss_bytes: Option<u64>,
) -> String {
    let mut md = String::from("# Inference validation\n\n");
    md.push_str(&format!("{provenance}.\n\n"));
    md.push_str("Accuracy with its 95% Wilson interval; `acc` picks the highest summed log-likelihood, `acc_per_char` the highest per character (OLMo's `len_norm`). Δ is against the baseline on the same items.\n\n");
    md.push_str("| task | variant | mode | metric | items | accuracy | 95% interval | Δ vs baseline |\n|---|---|---|---|---|---|---|---|\n");
    for r in accuracy {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.4} | [{:.4}, {:.4}] | {:+.4} |\n",
            r.task,
            r.variant,
            r.mode,
            r.metric,
            r.items,
            r.accuracy,
            r.low_95,
            r.high_95,
            r.delta_vs_baseline
        ));
    }
    md.push_str("\n| mode | scoring tokens/s | prefill tokens/s | decode tokens/s | KV bytes per token |\n|---|---|---|---|---|\n");
    for s in speed {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} |\n",
            s.mode,
            s.scoring_tokens_per_second,
            s.prefill_tokens_per_second,
            s.decode_tokens_per_second,
            s.kv_bytes_per_token
        ));
    }
    if let Some(bytes) = peak_rss_bytes {
        md.push_str(&format!(
            "\nPeak resident memory: {:.1} MiB.\n",
            bytes as f64 / (1u64 << 20) as f64
        ));
    }
    md
}

/// The process's peak resident set (VmHWM in /proc/self/status; `None` off Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(super) fn sha256_file(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

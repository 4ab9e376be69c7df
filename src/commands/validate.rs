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
use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::tasks::{check_eval_task, eval_request_file, read_mc_items, select_items, McItem};
use crate::data::token_set::TokenSetOptions;
use crate::data::tokenizer::{encode, tokenizer_for};
use crate::infer::generate::{generate, GenerationOptions};
use crate::infer::harness::{accuracy, score_items, Accuracy, ItemScore, Metric};
use crate::infer::kv_calibration::{calibrate, plan as kv_plan, CalibrationRecord};
use crate::infer::reference_heads::{
    CompressionOptions, CompressionPlan, KindPlan, KvMode, TargetRow,
};
use crate::model::attention_edit::AttentionEdit;
use crate::model::kv_cache::KvCache;
use crate::model::resident::ResidentModel;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::output::default_out_dir;
use crate::output::digest::{hex, sha256_file};
use crate::output::manifest::{tool_version, ToolVersion};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::settings::{describe, Settings};
use crate::source::{open_source_with, Provenance};
use crate::stats::interval::{paired_interval_of, Z_95};

/// Prompts the decode-speed measurement generates from (the first items of the first task).
const DECODE_PROMPTS: usize = 4;

/// One evaluation mode: a name, the attention edit it runs with, and its KV cache layout.
pub struct Mode<'a> {
    pub name: String,
    pub edit: Option<&'a dyn AttentionEdit>,
    /// `None`: the plain cache holding every head.
    pub kv: Option<&'a CompressionPlan>,
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
    /// Accuracy minus the baseline's on the same items (NaN for the baseline itself).
    pub delta_vs_baseline: f64,
    /// Paired 95% interval of that difference (Agresti–Min; see `stats::interval`).
    pub delta_low_95: f64,
    pub delta_high_95: f64,
}

impl AccuracyRow {
    /// A row for `summary`; `paired` is `None` for the baseline, else the (correct now, correct in
    /// the baseline) outcome of every item, for the Δ and its paired interval.
    pub fn new(
        [task, variant, mode, metric]: [&str; 4],
        summary: &Accuracy,
        paired: Option<Vec<(bool, bool)>>,
    ) -> Self {
        let (delta_vs_baseline, (delta_low_95, delta_high_95)) = match paired {
            None => (f64::NAN, (f64::NAN, f64::NAN)),
            Some(pairs) => {
                let before = pairs.iter().filter(|(_, b)| *b).count() as f64;
                (
                    summary.accuracy - before / pairs.len().max(1) as f64,
                    paired_interval_of(pairs, Z_95),
                )
            }
        };
        AccuracyRow {
            task: task.into(),
            variant: variant.into(),
            mode: mode.into(),
            metric: metric.into(),
            items: summary.items,
            correct: summary.correct,
            accuracy: summary.accuracy,
            low_95: summary.low_95,
            high_95: summary.high_95,
            delta_vs_baseline,
            delta_low_95,
            delta_high_95,
        }
    }
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
    /// Map parameters held by a compressed cache (shared by all sequences).
    pub kv_map_bytes: i64,
    /// Cached positions (all sequences) of the decode run, where the bytes below were measured.
    pub kv_positions: i64,
    /// (cache + maps) ÷ the baseline cache at those positions.
    pub kv_bytes_vs_baseline: f64,
    /// 1 / (1 − dropped fraction of K and V heads): the paper's accounting, maps not counted.
    pub claimed_compression: f64,
    /// Baseline bytes ÷ (cache + maps) bytes at the measured positions.
    pub measured_compression: f64,
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
struct KvManifest {
    options: CompressionOptions,
    modes: Vec<KvMode>,
    calibration: CalibrationRecord,
    /// Rebuilt heads per mode: (K targets, V targets) and the heads per kind.
    targets: Vec<(String, usize, usize)>,
    heads_per_kind: usize,
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
    kv_compression: Option<KvManifest>,
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
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir("validate", &args.source));
    // Written only after the computation: a file or read-only folder in the way is found now.
    check_output_dir(&out_dir, "--out")?;
    if args.tasks.is_empty() {
        bail!("--tasks: name at least one task (e.g. arc_easy)");
    }
    if args.batch_tokens == 0 {
        bail!("--batch-tokens must be at least 1");
    }
    for task in args.tasks.iter().filter(|t| !ExtraTasks::handles(t)) {
        check_eval_task(task, &args.variant, &ExtraTasks::NAMES)?;
    }
    let compression = args.kv_compress.map(|fraction| CompressionOptions {
        fraction,
        min_refs: args.kv_min_refs,
        max_refs: args.kv_max_refs,
        key_space: args.kv_keys,
    });
    if let Some(options) = &compression {
        options.check()?;
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
    let model = ResidentModel::load(source.as_ref(), &settings.load)?;
    let kv_plans = match compression {
        Some(options) => {
            printer.note(format!(
                "calibrating the compressed KV cache on {} tokens of {}",
                args.kv_calibration_tokens, args.kv_calibration_text
            ));
            let calibration = calibrate(
                source.as_ref(),
                &tokenizer,
                &TextSource::parse(&args.kv_calibration_text),
                &TokenSetOptions {
                    tokens: args.kv_calibration_tokens,
                    seq_len: args.kv_calibration_seq_len,
                    fit_fraction: 0.75,
                    seed: args.seed,
                    separator: model.config.eos_token_id,
                },
                args.kv_keys,
                &settings.load,
                &settings.hidden_budget,
            )
            .context("--kv-compress calibration")?;
            let plans = args
                .kv_mode
                .iter()
                .map(|&mode| Ok((mode, kv_plan(&calibration, mode, &model.config, &options)?)))
                .collect::<Result<Vec<_>>>()?;
            Some((calibration.record, options, plans))
        }
        None => None,
    };
    let mut modes = vec![Mode {
        name: "baseline".into(),
        edit: None,
        kv: None,
    }];
    if let Some(act) = &act {
        modes.push(Mode {
            name: "act".into(),
            edit: Some(act),
            kv: None,
        });
    }
    for (mode, plan) in kv_plans.iter().flat_map(|(_, _, plans)| plans) {
        modes.push(Mode {
            name: format!("kv-{}", mode.name()),
            edit: None,
            kv: Some(plan),
        });
        if let Some(act) = &act {
            modes.push(Mode {
                name: format!("act+kv-{}", mode.name()),
                edit: Some(act),
                kv: Some(plan),
            });
        }
    }
    // The request-file variant applies to the multiple-choice tasks only.
    let multiple_choice = (!task_items.is_empty()).then(|| {
        let tasks: Vec<String> = task_items
            .iter()
            .map(|(t, i)| format!("{t} {} items", i.len()))
            .collect();
        format!("{} ({})", tasks.join(", "), args.variant)
    });
    printer.note(format!(
        "validate {}: {}, modes {}, {}",
        args.source,
        multiple_choice
            .into_iter()
            .chain(extra.describe())
            .collect::<Vec<_>>()
            .join(", "),
        modes
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        describe(&settings.load)
    ));

    let mut accuracy_rows = Vec::new();
    let mut baseline_scores: Vec<Vec<ItemScore>> = Vec::new();
    let mut choice_rows = Vec::new();
    let mut speed_rows = Vec::new();
    let mut extra_results = ExtraResults::default();
    // One unit per (mode, task); GSM8K and bits per byte count as one unit per mode.
    let extra_tasks = extra.describe();
    let units_per_mode = task_items.len() + usize::from(!extra_tasks.is_empty());
    let mut progress = Progress::new(
        &printer,
        "validate",
        "task",
        (modes.len() * units_per_mode) as u64,
    );
    let mut units_done = 0;
    for mode in &modes {
        let mut scoring_tokens = 0;
        let mut scoring_seconds = 0.0;
        for (task_index, (task, items)) in task_items.iter().enumerate() {
            progress.set_message(format!("{task} · {}", mode.name));
            progress.set_position(units_done as f64);
            let (scores, stats) = score_items(
                &model,
                &tokenizer,
                items,
                args.batch_tokens,
                mode.edit,
                mode.kv,
            )?;
            scoring_tokens += stats.tokens;
            scoring_seconds += stats.seconds;
            // The first mode is the baseline: later modes are paired against its items.
            let is_baseline = baseline_scores.len() <= task_index;
            if is_baseline {
                baseline_scores.push(scores.clone());
            }
            for metric in Metric::ALL {
                let summary = accuracy(&scores, metric);
                progress.println(format!(
                    "{task} {} {}: {:.4} [{:.4}, {:.4}] ({}/{})",
                    mode.name,
                    metric.name(),
                    summary.accuracy,
                    summary.low_95,
                    summary.high_95,
                    summary.correct,
                    summary.items
                ));
                let paired = (!is_baseline).then(|| {
                    scores
                        .iter()
                        .zip(&baseline_scores[task_index])
                        .map(|(now, before)| (now.correct(metric), before.correct(metric)))
                        .collect()
                });
                accuracy_rows.push(AccuracyRow::new(
                    [task, &args.variant, &mode.name, metric.name()],
                    &summary,
                    paired,
                ));
            }
            choice_rows.extend(choice_rows_of(task, &args.variant, &mode.name, &scores));
            units_done += 1;
        }
        if !extra_tasks.is_empty() {
            progress.set_message(format!("{} · {}", extra_tasks.join(", "), mode.name));
            progress.set_position(units_done as f64);
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
            mode: mode.name.clone(),
            scoring_tokens,
            scoring_tokens_per_second: scoring_tokens as f64 / scoring_seconds.max(1e-9),
            prefill_tokens: 0,
            prefill_tokens_per_second: f64::NAN,
            decode_tokens: 0,
            decode_tokens_per_second: f64::NAN,
            kv_bytes_per_token: f64::NAN,
            kv_map_bytes: 0,
            kv_positions: 0,
            kv_bytes_vs_baseline: f64::NAN,
            claimed_compression: 1.0 / (1.0 - mode.kv.map_or(0.0, |p| p.dropped_fraction())),
            measured_compression: f64::NAN,
        };
        if args.decode_tokens > 0 && !task_items.is_empty() {
            measure_decode(&model, &tokenizer, &task_items[0].1, args, mode, &mut speed)?;
            let baseline = speed_rows
                .first()
                .map_or(speed.kv_bytes_per_token, |b: &SpeedRow| {
                    b.kv_bytes_per_token
                });
            let held =
                speed.kv_bytes_per_token * speed.kv_positions as f64 + speed.kv_map_bytes as f64;
            let plain = baseline * speed.kv_positions as f64;
            speed.kv_bytes_vs_baseline = held / plain;
            speed.measured_compression = plain / held;
        }
        speed_rows.push(speed);
        units_done = units_per_mode * speed_rows.len();
        progress.set_position(units_done as f64);
    }
    progress.finish();

    write_csv(&out_dir.join("accuracy.csv"), &accuracy_rows)?;
    write_csv(&out_dir.join("choices.csv"), &choice_rows)?;
    write_csv(&out_dir.join("speed.csv"), &speed_rows)?;
    if let Some((_, _, plans)) = &kv_plans {
        let rows: Vec<TargetRow> = plans.iter().flat_map(|(_, plan)| plan.rows()).collect();
        write_csv(&out_dir.join("kv_targets.csv"), &rows)?;
    }
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
        kv_compression: kv_plans
            .as_ref()
            .map(|(record, options, plans)| KvManifest {
                options: options.clone(),
                modes: plans.iter().map(|(m, _)| *m).collect(),
                calibration: record.clone(),
                targets: plans
                    .iter()
                    .map(|(m, p)| {
                        let count = |k: &Option<KindPlan>| k.as_ref().map_or(0, KindPlan::targets);
                        (m.name().to_string(), count(&p.keys), count(&p.values))
                    })
                    .collect(),
                heads_per_kind: (model.config.num_hidden_layers * model.config.num_key_value_heads)
                    as usize,
            }),
        device: describe(&settings.load),
        peak_rss_bytes: peak_rss_bytes(),
        seconds: started.elapsed().as_secs_f64(),
        extra: extra.manifest(),
    };
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let mut report = report_markdown(
        &accuracy_rows,
        &speed_rows,
        &manifest_line(&manifest),
        manifest.peak_rss_bytes,
    );
    if let Some((record, options, plans)) = &kv_plans {
        report.push_str(&kv_section(record, options, plans));
    }
    report.push_str(&extra_results.markdown());
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
    let mut cache = match mode.kv {
        Some(plan) => plan.cache(),
        None => KvCache::new(model.config.num_hidden_layers),
    };
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
    speed.kv_positions = stats.kv_positions;
    speed.kv_map_bytes = cache.map_bytes();
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
    md.push_str("Accuracy with its 95% Wilson interval; `acc` picks the highest summed log-likelihood, `acc_per_char` the highest per character (OLMo's `len_norm`). Δ is against the baseline on the same items, with a paired 95% interval (Agresti–Min: only items one mode gets right and the other wrong carry information).\n\n");
    md.push_str("| task | variant | mode | metric | items | accuracy | 95% interval | Δ vs baseline | paired 95% interval of Δ |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in accuracy {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.4} | [{:.4}, {:.4}] | {} | {} |\n",
            r.task,
            r.variant,
            r.mode,
            r.metric,
            r.items,
            r.accuracy,
            r.low_95,
            r.high_95,
            signed_or_dash(r.delta_vs_baseline),
            if r.delta_low_95.is_nan() {
                "—".to_string()
            } else {
                format!("[{:+.4}, {:+.4}]", r.delta_low_95, r.delta_high_95)
            }
        ));
    }
    md.push_str("\nKV memory is measured on the decode run's cache: bytes per cached position (stored heads, plus positions when keys are rebuilt before RoPE), the maps' parameters once, and (cache + maps) against the baseline cache at the same positions. *Claimed* is the paper's accounting, 1/(1 − fraction of K and V heads dropped), without maps.\n\n");
    md.push_str("| mode | scoring tokens/s | prefill tokens/s | decode tokens/s | KV bytes per position | map bytes | positions | KV + maps vs baseline | claimed compression | measured compression |\n|---|---|---|---|---|---|---|---|---|---|\n");
    // Without a decode run (`--decode-tokens 0`) the cache figures are not measured: "—".
    let or_dash = |value: f64, text: String| {
        if value.is_nan() {
            "—".to_string()
        } else {
            text
        }
    };
    for s in speed {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.2}× | {} |\n",
            s.mode,
            s.scoring_tokens_per_second,
            or_dash(
                s.prefill_tokens_per_second,
                format!("{:.0}", s.prefill_tokens_per_second)
            ),
            or_dash(
                s.decode_tokens_per_second,
                format!("{:.1}", s.decode_tokens_per_second)
            ),
            or_dash(s.kv_bytes_per_token, format!("{:.0}", s.kv_bytes_per_token)),
            s.kv_map_bytes,
            s.kv_positions,
            or_dash(
                s.kv_bytes_vs_baseline,
                format!("{:.3}", s.kv_bytes_vs_baseline)
            ),
            s.claimed_compression,
            or_dash(
                s.measured_compression,
                format!("{:.2}×", s.measured_compression)
            )
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

/// What the compressed modes rebuild: targets asked and reached per kind, and how well the maps
/// predict them on held-out calibration text.
fn kv_section(
    record: &CalibrationRecord,
    options: &CompressionOptions,
    plans: &[(KvMode, CompressionPlan)],
) -> String {
    let mut md = format!(
        "\n## Compressed KV cache\n\nMaps fitted on {} tokens of `{}` (sequences of {}, {} of {} sequences fit, the rest held out; token set sha256 `{}`); keys rebuilt {:?}; {}–{} same-layer references per rebuilt head. Per-head rows: kv_targets.csv.\n\n",
        record.tokens,
        record.text,
        record.seq_len,
        record.fit_sequences,
        record.sequences,
        record.token_set_sha256,
        options.key_space,
        options.min_refs,
        options.max_refs
    );
    md.push_str("| mode | kind | heads | rebuilt (asked) | rebuilt (reached) | mean held-out R² of rebuilt heads | worst |\n|---|---|---|---|---|---|---|\n");
    for (mode, plan) in plans {
        for kind_plan in [&plan.keys, &plan.values].into_iter().flatten() {
            let r2: Vec<f64> = kind_plan.rows.iter().map(|r| r.r2_heldout).collect();
            let mean = r2.iter().sum::<f64>() / r2.len().max(1) as f64;
            let worst = r2.iter().copied().fold(f64::INFINITY, f64::min);
            md.push_str(&format!(
                "| kv-{} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
                mode.name(),
                kind_plan.kind.name(),
                kind_plan.heads_total,
                kind_plan.targets_wanted,
                kind_plan.targets(),
                mean,
                worst
            ));
        }
    }
    if plans.iter().any(|(_, p)| {
        [&p.keys, &p.values]
            .into_iter()
            .flatten()
            .any(|k| k.targets() < k.targets_wanted)
    }) {
        md.push_str(&format!("\nFewer heads were rebuilt than asked: every layer keeps at least {} cached heads as references (`--kv-min-refs`).\n", options.min_refs));
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

/// A signed difference to four places, or "—" where there is none (the baseline against itself).
pub fn signed_or_dash(value: f64) -> String {
    if value.is_nan() {
        "—".to_string()
    } else {
        format!("{value:+.4}")
    }
}

//! `validate`'s report.md and manifest.json, rendered from plain rows: accuracy per task, metric
//! and mode; speed and KV memory; the compressed cache's maps; GSM8K and bits per byte.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::infer::accuracy_row::AccuracyRow;
use crate::infer::bpb_task::{BpbManifest, BpbRow};
use crate::infer::compressed_kv::CompressedKv;
use crate::infer::eval_task::{EvalTask, TaskManifest, TaskSummary};
use crate::infer::gsm8k_task::{Gsm8kManifest, Gsm8kSummary};
use crate::infer::kv_calibration::CalibrationRecord;
use crate::infer::kv_variant::KvVariantManifest;
use crate::infer::mode_speed::SpeedRow;
use crate::infer::multiple_choice_task::MultipleChoiceManifest;
use crate::infer::reference_heads::{CompressionOptions, KindPlan, KvMode};
use crate::output::manifest::ToolVersion;
use crate::report::markdown::{table, NOT_MEASURED};
use crate::source::Provenance;

/// The gsm8k and bpb tasks' provenance, flattened into manifest.json (absent keys when not run).
#[derive(Default, Serialize)]
pub struct ExtraManifest {
    #[serde(skip_serializing_if = "Option::is_none")]
    gsm8k: Option<Gsm8kManifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bpb: Option<BpbManifest>,
}

#[derive(Serialize)]
pub struct KvManifest {
    options: CompressionOptions,
    modes: Vec<KvMode>,
    calibration: CalibrationRecord,
    /// Rebuilt heads per mode: (K targets, V targets) and the heads per kind.
    targets: Vec<(String, usize, usize)>,
    heads_per_kind: usize,
}

impl KvManifest {
    pub fn of(kv: &CompressedKv, config: &ModelConfig) -> Self {
        let count = |k: &Option<KindPlan>| k.as_ref().map_or(0, KindPlan::targets);
        KvManifest {
            options: kv.options.clone(),
            modes: kv.plans.iter().map(|(m, _)| *m).collect(),
            calibration: kv.record.clone(),
            targets: kv
                .plans
                .iter()
                .map(|(m, p)| (m.name().to_string(), count(&p.keys), count(&p.values)))
                .collect(),
            heads_per_kind: (config.num_hidden_layers * config.num_key_value_heads) as usize,
        }
    }
}

#[derive(Serialize)]
pub struct ValidateManifest<'a> {
    pub tool: ToolVersion,
    pub source: &'a Provenance,
    pub config: &'a ModelConfig,
    pub tokenizer: String,
    pub tasks: Vec<MultipleChoiceManifest>,
    pub limit: Option<usize>,
    pub seed: u64,
    pub batch_tokens: usize,
    pub decode_tokens: usize,
    pub act: Option<PathBuf>,
    pub kv_compression: Option<KvManifest>,
    /// `--kv` variants, and the calibration the fitted ones were planned on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kv_variants: Vec<KvVariantManifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_calibration: Option<CalibrationRecord>,
    pub device: String,
    pub peak_rss_bytes: Option<u64>,
    pub seconds: f64,
    /// gsm8k and bpb settings (absent keys when not run).
    #[serde(flatten)]
    pub extra: ExtraManifest,
}

/// The tasks' manifest entries: the multiple-choice ones listed, gsm8k and bpb as their own keys.
pub fn task_manifests(tasks: &[Box<dyn EvalTask>]) -> (Vec<MultipleChoiceManifest>, ExtraManifest) {
    let (mut listed, mut extra) = (Vec::new(), ExtraManifest::default());
    for task in tasks {
        match task.manifest_entry() {
            TaskManifest::MultipleChoice(m) => listed.push(m),
            TaskManifest::Gsm8k(m) => extra.gsm8k = Some(m),
            TaskManifest::Bpb(m) => extra.bpb = Some(m),
        }
    }
    (listed, extra)
}

/// The report's provenance line: source, tokenizer, item selection and tool version.
pub fn manifest_line(m: &ValidateManifest) -> String {
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
    let accuracy_rows = accuracy.iter().map(|r| {
        vec![
            r.task.clone(),
            r.variant.clone(),
            r.mode.clone(),
            r.metric.clone(),
            r.items.to_string(),
            format!("{:.4}", r.accuracy),
            format!("[{:.4}, {:.4}]", r.low_95, r.high_95),
            signed_or_dash(r.delta_vs_baseline),
            if r.delta_low_95.is_nan() {
                NOT_MEASURED.to_string()
            } else {
                format!("[{:+.4}, {:+.4}]", r.delta_low_95, r.delta_high_95)
            },
        ]
    });
    md.push_str(&table(
        &[
            "task",
            "variant",
            "mode",
            "metric",
            "items",
            "accuracy",
            "95% interval",
            "Δ vs baseline",
            "paired 95% interval of Δ",
        ],
        accuracy_rows,
    ));
    md.push_str("\nKV memory is measured on the decode run's cache: bytes per cached position (stored heads, plus positions when keys are rebuilt before RoPE), the maps' parameters once, and (cache + maps) against the baseline cache at the same positions. *Claimed* is the paper's accounting, 1/(1 − fraction of K and V heads dropped), without maps.\n\n");
    // Without a decode run (`--decode-tokens 0`) the cache figures are not measured.
    let or_dash = |value: f64, text: String| {
        if value.is_nan() {
            NOT_MEASURED.to_string()
        } else {
            text
        }
    };
    let speed_rows = speed.iter().map(|s| {
        vec![
            s.mode.clone(),
            format!("{:.0}", s.scoring_tokens_per_second),
            or_dash(
                s.prefill_tokens_per_second,
                format!("{:.0}", s.prefill_tokens_per_second),
            ),
            or_dash(
                s.decode_tokens_per_second,
                format!("{:.1}", s.decode_tokens_per_second),
            ),
            or_dash(s.kv_bytes_per_token, format!("{:.0}", s.kv_bytes_per_token)),
            s.kv_map_bytes.to_string(),
            s.kv_positions.to_string(),
            or_dash(
                s.kv_bytes_vs_baseline,
                format!("{:.3}", s.kv_bytes_vs_baseline),
            ),
            or_dash(
                s.claimed_compression,
                format!("{:.2}×", s.claimed_compression),
            ),
            or_dash(
                s.measured_compression,
                format!("{:.2}×", s.measured_compression),
            ),
        ]
    });
    md.push_str(&table(
        &[
            "mode",
            "scoring tokens/s",
            "prefill tokens/s",
            "decode tokens/s",
            "KV bytes per position",
            "map bytes",
            "positions",
            "KV + maps vs baseline",
            "claimed compression",
            "measured compression",
        ],
        speed_rows,
    ));
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
pub fn kv_section(kv: &CompressedKv) -> String {
    let (record, options) = (&kv.record, &kv.options);
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
    let rows = kv.plans.iter().flat_map(|(mode, plan)| {
        [&plan.keys, &plan.values]
            .into_iter()
            .flatten()
            .map(move |kind_plan| {
                let r2: Vec<f64> = kind_plan.rows.iter().map(|r| r.r2_heldout).collect();
                let mean = r2.iter().sum::<f64>() / r2.len().max(1) as f64;
                let worst = r2.iter().copied().fold(f64::INFINITY, f64::min);
                vec![
                    format!("kv-{}", mode.name()),
                    kind_plan.kind.name().to_string(),
                    kind_plan.heads_total.to_string(),
                    kind_plan.targets_wanted.to_string(),
                    kind_plan.targets().to_string(),
                    format!("{mean:.3}"),
                    format!("{worst:.3}"),
                ]
            })
    });
    md.push_str(&table(
        &[
            "mode",
            "kind",
            "heads",
            "rebuilt (asked)",
            "rebuilt (reached)",
            "mean held-out R² of rebuilt heads",
            "worst",
        ],
        rows,
    ));
    if kv.plans.iter().any(|(_, p)| {
        [&p.keys, &p.values]
            .into_iter()
            .flatten()
            .any(|k| k.targets() < k.targets_wanted)
    }) {
        md.push_str(&format!("\nFewer heads were rebuilt than asked: every layer keeps at least {} cached heads as references (`--kv-min-refs`).\n", options.min_refs));
    }
    md
}

/// The tasks' own report sections, in task order (GSM8K, then bits per byte).
pub fn task_sections(tasks: &[Box<dyn EvalTask>]) -> String {
    tasks
        .iter()
        .map(|task| match task.summary() {
            TaskSummary::AccuracyOnly => String::new(),
            TaskSummary::Gsm8k(summaries) => generation_markdown(summaries),
            TaskSummary::Bpb(rows) => bpb_markdown(rows),
        })
        .collect()
}

/// The GSM8K section of the report (empty without gsm8k).
pub fn generation_markdown(summaries: &[Gsm8kSummary]) -> String {
    if summaries.is_empty() {
        return String::new();
    }
    let rows = summaries.iter().map(|s| {
        vec![
            s.mode.clone(),
            s.items.to_string(),
            s.correct.to_string(),
            format!("{:.4}", s.correct as f64 / s.items.max(1) as f64),
            format!("[{:.4}, {:.4}]", s.low_95, s.high_95),
            s.no_answer.to_string(),
            s.stopped_by_length.to_string(),
            format!("{:.1}", s.mean_new_tokens),
            format!("{:.0}", s.seconds),
            format!("{:.1}", s.decode_tokens_per_second),
        ]
    });
    format!(
        "\n## GSM8K (8-shot chain of thought, greedy)\n\nExact match of the last number in the output (per question in `generations.csv`).\n\n{}",
        table(
            &["mode", "items", "correct", "exact match", "95% interval", "no number", "hit the token limit", "mean new tokens", "wall s", "decode tokens/s"],
            rows
        )
    )
}

/// The bits-per-byte section of the report (empty without bpb).
pub fn bpb_markdown(rows: &[BpbRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cells = rows.iter().map(|r| {
        vec![
            r.text.clone(),
            r.mode.clone(),
            r.documents.to_string(),
            r.scored_tokens.to_string(),
            r.bytes.to_string(),
            r.window.to_string(),
            r.stride.to_string(),
            format!("{:.4}", r.bits_per_byte),
            signed_or_dash(r.delta_vs_baseline),
            interval_or_dash(r.delta_low_95, r.delta_high_95),
        ]
    });
    format!(
        "\n## Bits per byte on held-out text\n\nΣ −log₂ p over every text token ÷ UTF-8 bytes; documents joined by a separator token (context only), windows of `window` tokens every `stride`, each token scored once. The paired interval of Δ takes documents as the units (ratio estimator, t quantile).\n\n{}",
        table(
            &["text", "mode", "documents", "tokens", "bytes", "window", "stride", "bits per byte", "Δ vs baseline", "paired 95% interval of Δ"],
            cells
        )
    )
}

/// `[low, high]` signed to four places, or "—" where there is none.
pub fn interval_or_dash(low: f64, high: f64) -> String {
    if low.is_finite() && high.is_finite() {
        format!("[{low:+.4}, {high:+.4}]")
    } else {
        NOT_MEASURED.to_string()
    }
}

/// A signed difference to four places, or "—" where there is none (the baseline against itself).
pub fn signed_or_dash(value: f64) -> String {
    if value.is_nan() {
        NOT_MEASURED.to_string()
    } else {
        format!("{value:+.4}")
    }
}

//! Snapshot tests of `validate`'s report (`report/validate_report.rs`) and of the CSV rows it
//! writes, in the style of `report_snapshots.rs`: each renderer is fed a few fixed rows built here
//! (no model, no fixtures, no randomness), so any change to the report's text or the CSVs' columns
//! shows up as a diff against `tests/it/snapshots/`. Regenerate with
//! `INSTA_UPDATE=always cargo test --test it validate_snapshots` and read the diff.
//!
//! The rows go through the same constructors `validate` uses where those need no model
//! (`AccuracyRow::new`, `Accuracy::from_counts`, `SpeedRow::scoring`/`compare_with`,
//! `CompressedKv::target_rows`); the figures a model run would measure are set by hand.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::Result;
use ckpt_scan::capture::HeadKind;
use ckpt_scan::config::Architecture;
use ckpt_scan::data::gsm8k::{GSM8K_TASK, GSM8K_VARIANT};
use ckpt_scan::infer::accuracy_row::AccuracyRow;
use ckpt_scan::infer::bpb_task::{BpbRow, BPB_TASK};
use ckpt_scan::infer::compressed_kv::CompressedKv;
use ckpt_scan::infer::eval_task::{EvalTask, ModeRun, TaskManifest, TaskSummary};
use ckpt_scan::infer::gsm8k_task::{GenerationRow, Gsm8kSummary};
use ckpt_scan::infer::harness::Accuracy;
use ckpt_scan::infer::kv_calibration::CalibrationRecord;
use ckpt_scan::infer::kv_variant::KvLayout;
use ckpt_scan::infer::mode::{Mode, ModeKind};
use ckpt_scan::infer::mode_speed::SpeedRow;
use ckpt_scan::infer::multiple_choice_task::ChoiceRow;
use ckpt_scan::infer::reference_heads::{
    CompressionOptions, CompressionPlan, KindPlan, KvMode, TargetRow,
};
use ckpt_scan::model::head_map::{HeadMap, KeySpace};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::output::csv::write_csv;
use ckpt_scan::output::manifest::ToolVersion;
use ckpt_scan::report::validate_report::{
    bpb_markdown, generation_markdown, kv_section, manifest_line, report_markdown, signed_or_dash,
    task_sections, ExtraManifest, ValidateManifest,
};
use ckpt_scan::source::Provenance;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use crate::common::tiny_config;

/// The multiple-choice task and request-file variant of the accuracy rows.
const TASK: &str = "arc_easy";
const VARIANT: &str = "rc_0shot";

// ---------------------------------------------------------------------------------------------
// Builders

/// A fixed tool version, so no snapshot depends on the commit it was built from.
fn fixed_tool() -> ToolVersion {
    ToolVersion {
        name: "ckpt-scan",
        version: "0.0.0-snapshot",
        git_sha: "0000000",
    }
}

fn provenance(spec: &str, kind: &str, revision_sha: Option<&str>) -> Provenance {
    Provenance {
        spec: spec.to_string(),
        kind: kind.to_string(),
        files: Vec::new(),
        revision_sha: revision_sha.map(str::to_string),
        init: None,
    }
}

fn hub_source() -> Provenance {
    provenance(
        "hf:allenai/OLMo-2-0425-1B@main",
        "hub",
        Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"),
    )
}

/// validate's provenance line for `source`, items `limit` (the tool version fixed).
fn validate_manifest_line(source: &Provenance, limit: Option<usize>) -> String {
    let config = tiny_config(Architecture::Olmo2);
    let manifest = ValidateManifest {
        tool: fixed_tool(),
        source,
        config: &config,
        tokenizer: "hf:allenai/OLMo-2-0425-1B".into(),
        tasks: Vec::new(),
        limit,
        seed: 1234,
        batch_tokens: 8192,
        decode_tokens: 32,
        act: None,
        kv_compression: None,
        kv_variants: Vec::new(),
        kv_calibration: None,
        device: "cpu".into(),
        peak_rss_bytes: None,
        seconds: 1.5,
        extra: ExtraManifest::default(),
    };
    manifest_line(&manifest)
}

/// `both` items right in this mode and the baseline, `only_now`, `only_before`, `neither`.
fn outcomes([both, only_now, only_before, neither]: [usize; 4]) -> Vec<(bool, bool)> {
    [
        ((true, true), both),
        ((true, false), only_now),
        ((false, true), only_before),
        ((false, false), neither),
    ]
    .into_iter()
    .flat_map(|(pair, n)| std::iter::repeat_n(pair, n))
    .collect()
}

/// The baseline's row: `correct` of `items`, no Δ.
fn baseline_accuracy(
    task: &str,
    variant: &str,
    metric: &str,
    correct: u64,
    items: u64,
) -> AccuracyRow {
    AccuracyRow::new(
        [task, variant, "baseline", metric],
        &Accuracy::from_counts(correct, items),
        None,
    )
}

/// A later mode's row, paired against the baseline on the same items (see [`outcomes`]).
fn paired_accuracy(
    task: &str,
    variant: &str,
    mode: &str,
    metric: &str,
    counts: [usize; 4],
) -> AccuracyRow {
    let pairs = outcomes(counts);
    let correct = pairs.iter().filter(|(now, _)| *now).count() as u64;
    AccuracyRow::new(
        [task, variant, mode, metric],
        &Accuracy::from_counts(correct, pairs.len() as u64),
        Some(pairs),
    )
}

/// accuracy.csv as `validate` fills it (modes outer, tasks inner): arc_easy's two metrics on 40
/// items (baseline 26 and 28 right) and GSM8K on 20 questions (baseline 9 right), under the
/// baseline, kv-k and kv-kv. kv-k ties the baseline on `acc_per_char` (Δ +0.0000).
fn accuracy_rows() -> Vec<AccuracyRow> {
    let (acc, per_char, exact) = ("acc", "acc_per_char", "exact_match");
    vec![
        baseline_accuracy(TASK, VARIANT, acc, 26, 40),
        baseline_accuracy(TASK, VARIANT, per_char, 28, 40),
        baseline_accuracy(GSM8K_TASK, GSM8K_VARIANT, exact, 9, 20),
        paired_accuracy(TASK, VARIANT, "kv-k", acc, [24, 1, 2, 13]),
        paired_accuracy(TASK, VARIANT, "kv-k", per_char, [27, 1, 1, 11]),
        paired_accuracy(GSM8K_TASK, GSM8K_VARIANT, "kv-k", exact, [8, 1, 1, 10]),
        paired_accuracy(TASK, VARIANT, "kv-kv", acc, [22, 1, 4, 13]),
        paired_accuracy(TASK, VARIANT, "kv-kv", per_char, [25, 2, 3, 10]),
        paired_accuracy(GSM8K_TASK, GSM8K_VARIANT, "kv-kv", exact, [6, 0, 3, 11]),
    ]
}

/// The options the fixed plans were "fitted" with: in the tiny config (2 layers of 4 KV heads)
/// `min_refs` 2 allows 2 targets per layer, 3 only 1.
fn compression_options(fraction: f64, min_refs: usize) -> CompressionOptions {
    CompressionOptions {
        fraction,
        min_refs,
        max_refs: 3,
        key_space: KeySpace::PreRope,
    }
}

/// One kind's plan over the tiny config: `targets[layer]` rebuilt with zero maps (only their
/// shape matters to the report), their held-out R² taken in order from `r2`.
fn kind_plan(
    kind: HeadKind,
    targets: [&[usize]; 2],
    targets_wanted: usize,
    r2: &[f64],
) -> KindPlan {
    let (heads, d) = (4usize, 8i64);
    let mut r2 = r2.iter().copied();
    let mut rows = Vec::new();
    let maps = targets
        .iter()
        .enumerate()
        .map(|(layer, targets)| {
            if targets.is_empty() {
                return None;
            }
            let stored: Vec<usize> = (0..heads).filter(|h| !targets.contains(h)).collect();
            for &target in *targets {
                let r2 = r2.next().expect("one R² per target");
                rows.push(TargetRow {
                    mode: String::new(),
                    kind: kind.name().into(),
                    layer: layer as i64,
                    target,
                    references: stored
                        .iter()
                        .take(3)
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    rank_r2_heldout: r2 + 0.0625,
                    r2_heldout: r2,
                    r2_pooled_heldout: r2 - 0.015625,
                    r2_insample: r2 + 0.125,
                });
            }
            let coefficients = Tensor::zeros(
                [stored.len() as i64 * d, targets.len() as i64 * d],
                (Kind::Float, Device::Cpu),
            );
            let intercept = Tensor::zeros([targets.len() as i64 * d], (Kind::Float, Device::Cpu));
            Some(Rc::new(HeadMap::new(
                heads,
                d as usize,
                stored,
                targets.to_vec(),
                coefficients,
                intercept,
            )))
        })
        .collect();
    KindPlan {
        kind,
        maps,
        rows,
        heads_total: 2 * heads,
        targets_wanted,
    }
}

fn compression_plan(
    mode: KvMode,
    options: &CompressionOptions,
    keys: Option<KindPlan>,
    values: Option<KindPlan>,
) -> CompressionPlan {
    CompressionPlan {
        mode,
        options: options.clone(),
        num_layers: 2,
        keys,
        values,
    }
}

fn calibration_record() -> CalibrationRecord {
    CalibrationRecord {
        text: "wikitext".into(),
        tokens: 4096,
        seq_len: 64,
        seed: 1234,
        fit_sequences: 48,
        sequences: 64,
        token_set_sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
    }
}

/// Modes k and kv with every asked head rebuilt: fraction 0.25 of 8 heads per kind = 2, one
/// per layer.
fn kv_all_reached() -> CompressedKv {
    let options = compression_options(0.25, 2);
    let keys = || kind_plan(HeadKind::K, [&[1], &[3]], 2, &[0.8125, 0.75]);
    let values = kind_plan(HeadKind::V, [&[2], &[0]], 2, &[0.5, 0.625]);
    compressed_kv(
        options.clone(),
        vec![
            (
                KvMode::K,
                compression_plan(KvMode::K, &options, Some(keys()), None),
            ),
            (
                KvMode::Kv,
                compression_plan(KvMode::Kv, &options, Some(keys()), Some(values)),
            ),
        ],
    )
}

/// Modes k and kv asked to rebuild half of the heads (4 per kind) while every layer keeps 3 of
/// its 4 heads cached: only 2 per kind are rebuilt, and the report says why.
fn kv_fewer_than_asked() -> CompressedKv {
    let options = compression_options(0.5, 3);
    let keys = || kind_plan(HeadKind::K, [&[1], &[3]], 4, &[0.8125, 0.6875]);
    let values = kind_plan(HeadKind::V, [&[], &[0]], 4, &[0.4375]);
    compressed_kv(
        options.clone(),
        vec![
            (
                KvMode::K,
                compression_plan(KvMode::K, &options, Some(keys()), None),
            ),
            (
                KvMode::Kv,
                compression_plan(KvMode::Kv, &options, Some(keys()), Some(values)),
            ),
        ],
    )
}

fn compressed_kv(
    options: CompressionOptions,
    plans: Vec<(KvMode, CompressionPlan)>,
) -> CompressedKv {
    CompressedKv {
        record: calibration_record(),
        options,
        layouts: plans.iter().map(|(_, p)| p.layout()).collect(),
        plans,
    }
}

fn mode(kind: ModeKind, kv: Option<&KvLayout>) -> Mode<'_> {
    Mode {
        kind,
        edit: None,
        kv,
        spec: None,
    }
}

/// The modes `validate` runs for `kv`'s plans (no ACT): the baseline, then one per plan.
fn kv_modes(kv: &CompressedKv) -> Vec<Mode<'_>> {
    std::iter::once(mode(ModeKind::Baseline, None))
        .chain(
            kv.plans
                .iter()
                .zip(&kv.layouts)
                .map(|((m, _), layout)| mode(ModeKind::CompressedKv(*m), Some(layout))),
        )
        .collect()
}

/// speed.csv before any decode run (`--decode-tokens 0`): scoring throughput only.
fn scoring_speed(modes: &[Mode]) -> Vec<SpeedRow> {
    modes
        .iter()
        .enumerate()
        .map(|(i, m)| SpeedRow::scoring(m, 12_000, 1.5 + 0.5 * i as f64))
        .collect()
}

/// speed.csv after the decode run: each mode's figures as `measure_decode` would set them
/// (decode bytes per position shrinking with the heads dropped, plus the plan's map bytes),
/// then compared with the baseline's row as `validate` does.
fn decoded_speed(modes: &[Mode]) -> Vec<SpeedRow> {
    let mut rows: Vec<SpeedRow> = Vec::new();
    for (i, (m, mut row)) in modes.iter().zip(scoring_speed(modes)).enumerate() {
        let dropped = m.kv.map_or(0.0, |l| 1.0 - 1.0 / l.claimed_compression);
        row.prefill_tokens = 256;
        row.prefill_tokens_per_second = 2048.0 - 128.0 * i as f64;
        row.decode_tokens = 128;
        row.decode_tokens_per_second = 64.25 - 4.0 * i as f64;
        // 2 layers × 2 kinds × 4 heads × 8 dims × 4 bytes; positions (8 bytes) when keys are
        // rebuilt before RoPE.
        row.kv_bytes_per_token = 512.0 * (1.0 - dropped) + if m.kv.is_some() { 8.0 } else { 0.0 };
        row.kv_positions = 384;
        row.kv_map_bytes = m.kv.map_or(0, |p| p.cache().map_bytes());
        row.compare_with(rows.first());
        rows.push(row);
    }
    rows
}

fn gsm8k_summary(
    mode: &str,
    correct: u64,
    no_answer: usize,
    stopped_by_length: usize,
) -> Gsm8kSummary {
    let accuracy = Accuracy::from_counts(correct, 20);
    Gsm8kSummary {
        mode: mode.into(),
        items: accuracy.items,
        correct: accuracy.correct,
        low_95: accuracy.low_95,
        high_95: accuracy.high_95,
        no_answer,
        stopped_by_length,
        mean_new_tokens: 118.25 + 10.0 * stopped_by_length as f64,
        seconds: 96.4 + 3.0 * no_answer as f64,
        decode_tokens_per_second: 24.55,
    }
}

/// GSM8K's report rows, matching the exact-match counts of [`accuracy_rows`].
fn gsm8k_summaries() -> Vec<Gsm8kSummary> {
    vec![
        gsm8k_summary("baseline", 9, 1, 0),
        gsm8k_summary("kv-k", 9, 1, 1),
        gsm8k_summary("kv-kv", 6, 3, 2),
    ]
}

fn bpb_row(mode: &str, bits_per_byte: f64, delta_vs_baseline: f64) -> BpbRow {
    BpbRow {
        text: "wikitext".into(),
        mode: mode.into(),
        documents: 12,
        bytes: 65_536,
        scored_tokens: 16_384,
        windows: 40,
        window: 512,
        stride: 256,
        separator: 2,
        bits: bits_per_byte * 65_536.0,
        bits_per_byte,
        delta_vs_baseline,
        delta_low_95: delta_vs_baseline - 0.0078125,
        delta_high_95: delta_vs_baseline + 0.0078125,
        forward_tokens_per_second: 3072.0,
    }
}

/// bpb.csv as the task fills it: NaN Δ for the baseline.
fn bpb_rows() -> Vec<BpbRow> {
    vec![
        bpb_row("baseline", 0.9375, f64::NAN),
        bpb_row("kv-k", 0.953125, 0.015625),
        bpb_row("kv-kv", 1.0, 0.0625),
    ]
}

fn choice_rows() -> Vec<ChoiceRow> {
    let mut rows = Vec::new();
    for (mode, shift) in [("baseline", 0.0), ("kv-k", -0.25)] {
        for (choice, loglik) in [-4.5, -2.25, -7.0, -3.125].into_iter().enumerate() {
            rows.push(ChoiceRow {
                task: TASK.into(),
                variant: VARIANT.into(),
                mode: mode.into(),
                doc_id: 17,
                choice,
                gold: 1,
                loglik: loglik + shift,
                continuation_tokens: 2 + choice,
                continuation_chars: 9 + 4 * choice,
            });
        }
    }
    rows
}

/// generations.csv rows; the outputs carry a comma, quotes and line breaks, as real ones do.
fn generation_rows() -> Vec<GenerationRow> {
    let row = |mode: &str, answer: &str, stop_reason: &str, output: &str| GenerationRow {
        task: GSM8K_TASK.into(),
        mode: mode.into(),
        doc_id: 42,
        gold: "72".into(),
        answer: answer.into(),
        correct: answer == "72",
        prompt_tokens: 812,
        prompt_tokens_cut: 0,
        new_tokens: output.len() / 4,
        stop_reason: stop_reason.into(),
        output: output.into(),
    };
    vec![
        row(
            "baseline",
            "72",
            "StopText",
            "Natalia sold 48/2 = 24 clips in May.\nShe sold 48 + 24 = 72 clips \"altogether\", in April and May.\n#### 72",
        ),
        row("kv-k", "", "Length", "Natalia sold clips in April, and then"),
    ]
}

/// A task that only hands back fixed report rows, to drive `task_sections` without a model: the
/// real tasks' constructors read request files (multiple choice, GSM8K) or need a tokenizer
/// (bits per byte), and only their `run` on a loaded model fills the rows the sections show.
enum FixedTask {
    MultipleChoice,
    Gsm8k(Vec<Gsm8kSummary>),
    Bpb(Vec<BpbRow>),
}

impl EvalTask for FixedTask {
    fn name(&self) -> &str {
        match self {
            FixedTask::MultipleChoice => TASK,
            FixedTask::Gsm8k(_) => GSM8K_TASK,
            FixedTask::Bpb(_) => BPB_TASK,
        }
    }

    fn describe(&self) -> String {
        self.name().into()
    }

    fn run(&mut self, _: &ResidentModel, _: &Tokenizer, _: &Mode) -> Result<ModeRun> {
        unreachable!("the report snapshots run no model")
    }

    fn write_rows(&self, _: &Path) -> Result<()> {
        unreachable!("the report snapshots write no task rows")
    }

    fn summary(&self) -> TaskSummary<'_> {
        match self {
            FixedTask::MultipleChoice => TaskSummary::AccuracyOnly,
            FixedTask::Gsm8k(summaries) => TaskSummary::Gsm8k(summaries),
            FixedTask::Bpb(rows) => TaskSummary::Bpb(rows),
        }
    }

    fn manifest_entry(&self) -> TaskManifest {
        unreachable!("the manifest entries need request files")
    }
}

/// The tasks of the full report, in `--tasks` order.
fn fixed_tasks() -> Vec<Box<dyn EvalTask>> {
    vec![
        Box::new(FixedTask::MultipleChoice),
        Box::new(FixedTask::Gsm8k(gsm8k_summaries())),
        Box::new(FixedTask::Bpb(bpb_rows())),
    ]
}

// ---------------------------------------------------------------------------------------------
// report.md

#[test]
fn validate_manifest_line_hub_and_local() {
    insta::assert_snapshot!(
        "validate_manifest_line_hub_limit",
        validate_manifest_line(&hub_source(), Some(100))
    );
    insta::assert_snapshot!(
        "validate_manifest_line_local_all_items",
        validate_manifest_line(&provenance("/models/tiny/step100", "local", None), None)
    );
}

#[test]
fn validate_report_full() {
    // What `validate` assembles with --kv-compress, GSM8K and bpb tasks and a decode run:
    // report_markdown, then kv_section, then the tasks' sections.
    let kv = kv_fewer_than_asked();
    let modes = kv_modes(&kv);
    let mut md = report_markdown(
        &accuracy_rows(),
        &decoded_speed(&modes),
        &validate_manifest_line(&hub_source(), Some(100)),
        Some(1_288_490_189),
    );
    md.push_str(&kv_section(&kv));
    md.push_str(&task_sections(&fixed_tasks()));
    insta::assert_snapshot!("validate_report_full", md);
}

#[test]
fn validate_report_without_decode_or_kv() {
    // Baseline and ACT, `--decode-tokens 0`, no peak memory: every cache figure is "—", and no
    // KV, GSM8K or bpb section follows.
    let modes = [mode(ModeKind::Baseline, None), mode(ModeKind::Act, None)];
    let accuracy = vec![
        baseline_accuracy(TASK, VARIANT, "acc", 26, 40),
        baseline_accuracy(TASK, VARIANT, "acc_per_char", 28, 40),
        paired_accuracy(TASK, VARIANT, "act", "acc", [25, 3, 1, 11]),
        paired_accuracy(TASK, VARIANT, "act", "acc_per_char", [26, 0, 2, 12]),
    ];
    let tasks: Vec<Box<dyn EvalTask>> = vec![Box::new(FixedTask::MultipleChoice)];
    let mut md = report_markdown(
        &accuracy,
        &scoring_speed(&modes),
        &validate_manifest_line(&provenance("/models/tiny/step100", "local", None), None),
        None,
    );
    md.push_str(&task_sections(&tasks));
    insta::assert_snapshot!("validate_report_without_decode_or_kv", md);
}

#[test]
fn validate_kv_section_all_reached() {
    insta::assert_snapshot!(
        "validate_kv_section_all_reached",
        kv_section(&kv_all_reached())
    );
}

#[test]
fn validate_generation_and_bpb_sections() {
    insta::assert_snapshot!(
        "validate_generation_markdown",
        generation_markdown(&gsm8k_summaries())
    );
    insta::assert_snapshot!("validate_bpb_markdown", bpb_markdown(&bpb_rows()));
    // Tasks not run: no section at all.
    assert_eq!(generation_markdown(&[]), "");
    assert_eq!(bpb_markdown(&[]), "");
    let only_choice: Vec<Box<dyn EvalTask>> = vec![Box::new(FixedTask::MultipleChoice)];
    assert_eq!(task_sections(&only_choice), "");
}

#[test]
fn validate_task_sections_in_task_order() {
    // bpb listed before GSM8K: the sections follow the tasks' order.
    let tasks: Vec<Box<dyn EvalTask>> = vec![
        Box::new(FixedTask::Bpb(bpb_rows())),
        Box::new(FixedTask::MultipleChoice),
        Box::new(FixedTask::Gsm8k(gsm8k_summaries())),
    ];
    let sections = task_sections(&tasks);
    insta::assert_snapshot!("validate_task_sections_bpb_first", sections);
}

#[test]
fn validate_signed_or_dash() {
    let lines = [
        0.0,
        -0.0,
        0.025,
        -0.025,
        0.00004,
        -0.00005,
        1.5,
        f64::NAN,
        f64::INFINITY,
    ]
    .map(|v| format!("{v:?} → {}", signed_or_dash(v)))
    .join("\n");
    insta::assert_snapshot!("validate_signed_or_dash", lines);
}

// ---------------------------------------------------------------------------------------------
// The CSVs validate writes

#[test]
fn validate_csvs() {
    let kv = kv_fewer_than_asked();
    let modes = kv_modes(&kv);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    write_csv(&path("accuracy.csv"), &accuracy_rows()).unwrap();
    write_csv(&path("choices.csv"), &choice_rows()).unwrap();
    write_csv(&path("speed.csv"), &decoded_speed(&modes)).unwrap();
    write_csv(&path("speed_without_decode.csv"), &scoring_speed(&modes)).unwrap();
    write_csv(&path("kv_targets.csv"), &kv.target_rows()).unwrap();
    write_csv(&path("generations.csv"), &generation_rows()).unwrap();
    write_csv(&path("bpb.csv"), &bpb_rows()).unwrap();
    let csvs = [
        "accuracy.csv",
        "choices.csv",
        "speed.csv",
        "speed_without_decode.csv",
        "kv_targets.csv",
        "generations.csv",
        "bpb.csv",
    ]
    .map(|name| {
        format!(
            "== {name} ==\n{}",
            std::fs::read_to_string(path(name)).unwrap()
        )
    })
    .join("\n");
    insta::assert_snapshot!("validate_csvs", csvs);
}

// ---------------------------------------------------------------------------------------------
// KV Pareto section

/// The Pareto rows, section and figures `validate` builds for the fixed kv-k / kv-kv modes plus a
/// `--kv` eviction variant, on sequences of known lengths: bytes are the layouts' closed forms at
/// 16 bits per entry (plain: 2 layers × 2 kinds × 32 values × 2 bytes = 256 per token).
#[test]
fn validate_kv_pareto() {
    use ckpt_scan::infer::kv_pareto::{pareto_rows, ParetoInputs};
    use ckpt_scan::infer::kv_spec::KvSpec;
    use ckpt_scan::infer::kv_variant::KvVariant;
    use ckpt_scan::report::kv_pareto_report::{pareto_charts, pareto_section};
    use std::collections::BTreeMap;

    let config = tiny_config(Architecture::Olmo2);
    let kv = kv_all_reached();
    let evict = KvVariant::build(
        &KvSpec::parse("evict:2+6").unwrap(),
        &config,
        None,
        &compression_options(0.0, 1),
    )
    .unwrap();
    let mut modes = kv_modes(&kv);
    modes.push(Mode {
        kind: ModeKind::KvVariant,
        edit: None,
        kv: Some(&evict.layout),
        spec: Some(evict.name()),
    });
    let mut accuracy = accuracy_rows();
    accuracy.push(paired_accuracy(
        TASK,
        VARIANT,
        "evict:2+6",
        "acc",
        [20, 2, 6, 12],
    ));
    let mut bpb = bpb_rows();
    bpb.push(bpb_row("evict:2+6", 1.125, 0.1875));
    let speed = decoded_speed(&modes);
    let layouts: Vec<(&str, Option<&KvLayout>)> = modes.iter().map(|m| (m.name(), m.kv)).collect();
    let mut lengths = BTreeMap::new();
    for mode in ["baseline", "kv-k", "kv-kv", "evict:2+6"] {
        lengths.insert((TASK.to_string(), mode.to_string()), vec![4, 12]);
        lengths.insert((GSM8K_TASK.to_string(), mode.to_string()), vec![20]);
        lengths.insert((BPB_TASK.to_string(), mode.to_string()), vec![16, 16]);
    }
    let rows = pareto_rows(&ParetoInputs {
        accuracy: &accuracy,
        bpb: &bpb,
        speed: &speed,
        layouts: &layouts,
        sequence_lengths: &lengths,
        config: &config,
    });
    // Eviction holds min(n, 8) of n positions: (4 + 8) / 16 of plain on TASK, 8 / 16 on bpb.
    let evict_task = rows
        .iter()
        .find(|r| r.task == TASK && r.mode == "evict:2+6")
        .unwrap();
    assert_eq!(evict_task.kv_bytes_per_token, 256.0 * 12.0 / 16.0);
    assert_eq!(evict_task.compresses, "keys and values");
    let evict_bpb = rows
        .iter()
        .find(|r| r.task == BPB_TASK && r.mode == "evict:2+6")
        .unwrap();
    assert_eq!(evict_bpb.kv_fraction_of_plain, 0.5);
    let charts = pareto_charts(&rows);
    let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("pareto-{TASK}"),
            format!("pareto-{GSM8K_TASK}"),
            format!("pareto-{BPB_TASK}")
        ]
    );
    assert_eq!(charts[0].1.points.len(), 4, "acc only, one point per mode");
    insta::assert_snapshot!(
        "validate_kv_pareto",
        pareto_section(&rows, &["pareto-arc_easy.png".into()])
    );
}

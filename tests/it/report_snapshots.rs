//! Snapshot tests of every markdown and CSV renderer of `report/` and `output/csv.rs`: each is fed
//! a few fixed rows built here (no model, no fixtures, no randomness), so any change to a
//! report's text shows up as a diff against `tests/it/snapshots/`. Regenerate with
//! `INSTA_UPDATE=always cargo test --test it report_snapshots` and read the diff.

use std::path::Path;

use ckpt_scan::analysis::alignment::{
    AlignmentOptions, LayerRow as AlignLayerRow, PairRow, WeightR2Row,
};
use ckpt_scan::analysis::alignment_pass::WeightVsMeasuredRow;
use ckpt_scan::analysis::finite_sample_check::FiniteSampleRow;
use ckpt_scan::analysis::init_check::{LayerRow, SourceRole};
use ckpt_scan::analysis::model_check::{ModelCheckSettings, SourceReport};
use ckpt_scan::analysis::mutation_check::{Mutation, MutationRow};
use ckpt_scan::analysis::predictability::{Candidates, PredictabilityOptions, PredictionRow};
use ckpt_scan::analysis::sinks::SinkRow;
use ckpt_scan::capture::{CapturePoint, HeadKind};
use ckpt_scan::config::rope_scaling::RopeScaling;
use ckpt_scan::config::{Architecture, ModelConfig};
use ckpt_scan::data::token_set::TokenSet;
use ckpt_scan::output::manifest::{tool_version, ToolVersion};
use ckpt_scan::report::theory_section::{theory_rows_path, TheoryRow};
use ckpt_scan::report::{
    align_report, markdown, predict_report, scan_report, scan_status, theory_report, theory_section,
};
use ckpt_scan::series::checkpoint_scan::{CheckpointRecord, IncompleteRow, IncompleteState};
use ckpt_scan::series::manifest::SeriesManifest;
use ckpt_scan::series::scan_options::ScanOptions;
use ckpt_scan::series::scan_tables::{CheckpointRow, ScanTables};
use ckpt_scan::series::units::{UnitRun, UnitStatus};
use ckpt_scan::source::Provenance;
use ckpt_scan::stats::init_bound::WeightLaw;
use ckpt_scan::stats::selection::Selection;
use serde::Serialize;

use crate::common::{grid_row, tiny_config};

use HeadKind::{K, Q, V};

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

/// verification.md with its tool line's version and git sha (baked in at build time by
/// `tool_version()`) replaced by placeholders, so the snapshot does not change with every commit.
fn without_build_identity(text: &str) -> String {
    let tool = tool_version();
    let built = format!("`{}` {} (git `{}`)", tool.name, tool.version, tool.git_sha);
    assert!(text.contains(&built), "no tool line {built:?} in:\n{text}");
    text.replace(
        &built,
        &format!("`{}` <version> (git `<git-sha>`)", tool.name),
    )
}

fn provenance(
    spec: &str,
    kind: &str,
    revision_sha: Option<&str>,
    init: Option<&str>,
) -> Provenance {
    Provenance {
        spec: spec.to_string(),
        kind: kind.to_string(),
        files: Vec::new(),
        revision_sha: revision_sha.map(str::to_string),
        init: init.map(str::to_string),
    }
}

fn token_set() -> TokenSet {
    TokenSet {
        sequences: Vec::new(),
        seq_len: 32,
        fit_sequences: 6,
        documents_used: 3,
        hash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
    }
}

fn predict_options(
    kinds: Vec<HeadKind>,
    max_refs: usize,
    candidates: Candidates,
) -> PredictabilityOptions {
    PredictabilityOptions {
        kinds,
        max_refs,
        selection: Selection::Topn,
        candidates,
        capture_point: CapturePoint::Rope,
        layers: None,
        store_budget_bytes: 0,
    }
}

/// One predictability row; in-sample and pooled R² follow from held-out by fixed offsets.
#[allow(clippy::too_many_arguments)]
fn prediction(
    checkpoint: &str,
    kind: HeadKind,
    layer: i64,
    target_head: usize,
    k: usize,
    max_k: usize,
    references: &str,
    r2_heldout: f64,
) -> PredictionRow {
    let reference_layers = references
        .split(';')
        .map(|r| {
            r.split_once(':')
                .map_or(layer.to_string(), |(l, _)| l.into())
        })
        .collect::<Vec<_>>()
        .join(";");
    let reference_heads = references
        .split(';')
        .map(|r| r.split_once(':').map_or(r, |(_, h)| h))
        .collect::<Vec<_>>()
        .join(";");
    PredictionRow {
        checkpoint: checkpoint.into(),
        kind,
        layer,
        target_head,
        k,
        reference_heads,
        reference_layers,
        r2_heldout,
        r2_insample: r2_heldout + 0.05,
        r2_pooled_heldout: r2_heldout - 0.01,
        r2_pooled_insample: r2_heldout + 0.04,
        n_fit: 192,
        n_heldout: 64,
        status: if r2_heldout.is_finite() {
            String::new()
        } else {
            "constant target".into()
        },
        max_k,
    }
}

fn align_layer(
    checkpoint: &str,
    kind: HeadKind,
    layer: i64,
    cos2: f64,
    overlap: i64,
) -> AlignLayerRow {
    AlignLayerRow {
        checkpoint: checkpoint.into(),
        kind,
        layer,
        heads: 4,
        head_dim: 8,
        d_model: 32,
        mean_pairwise_cos2: cos2,
        null_mean_cos2: 0.25,
        null_sampled_mean: 0.2512,
        null_sampled_std: 0.0125,
        rank_sum: 32,
        joint_rank: 32 - overlap,
        overlap_dimension: overlap,
        rank_tolerance: 1e-6,
        anchor_mean_angle_degrees: 55.5,
        anchor_max_angle_degrees: 80.25,
        anchor_sum_sin2: 6.5,
        anchor_shared_directions: 1.5,
    }
}

fn weight_r2(
    checkpoint: &str,
    kind: HeadKind,
    layer: i64,
    k: usize,
    references: &str,
    value: f64,
) -> WeightR2Row {
    WeightR2Row {
        checkpoint: checkpoint.into(),
        kind,
        layer,
        target_head: 0,
        k,
        reference_heads: references.into(),
        weight_r2: value,
    }
}

fn versus(
    checkpoint: &str,
    kind: HeadKind,
    layer: i64,
    k: usize,
    measured: f64,
    weights: f64,
) -> WeightVsMeasuredRow {
    WeightVsMeasuredRow {
        checkpoint: checkpoint.into(),
        kind,
        layer,
        target_head: 0,
        k,
        reference_heads: if k == 1 { "1".into() } else { "1;2".into() },
        r2_heldout: measured,
        weight_r2: weights,
    }
}

fn alignment_options(kinds: Vec<HeadKind>) -> AlignmentOptions {
    AlignmentOptions {
        kinds,
        fold_norm: true,
        partners: 2,
        null_samples: 16,
        seed: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// report::markdown and output::csv

#[test]
fn markdown_table() {
    let md = markdown::table(
        &["kind", "layer", "R²"],
        [
            vec!["Q".into(), "0".into(), "0.1250".into()],
            vec![
                "K".into(),
                "1".into(),
                markdown::or_not_measured(None::<f64>, |v| format!("{v:.4}")),
            ],
        ],
    );
    insta::assert_snapshot!("markdown_table", md);
    insta::assert_snapshot!(
        "markdown_table_without_rows",
        markdown::table(&["only", "a header"], Vec::<Vec<String>>::new())
    );
}

#[derive(Serialize)]
struct CsvRow {
    name: &'static str,
    kind: HeadKind,
    step: Option<u64>,
    value: f64,
    passed: bool,
}

#[test]
fn csv_header_and_float_formatting() {
    let rows = [
        ("round", Some(0), 1.0, true),
        ("tenth", Some(100), 0.1, true),
        ("third", None, 1.0 / 3.0, false),
        ("tiny", Some(1), 1e-12, true),
        ("large", Some(2), 12_345_678.9, true),
        ("negative zero", None, -0.0, true),
        ("not a number", None, f64::NAN, false),
        ("infinite", None, f64::INFINITY, false),
    ]
    .map(|(name, step, value, passed)| CsvRow {
        name,
        kind: K,
        step,
        value,
        passed,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.csv");
    ckpt_scan::output::csv::write_csv(&path, &rows).unwrap();
    insta::assert_snapshot!("csv_write_csv", std::fs::read_to_string(&path).unwrap());
}

// ---------------------------------------------------------------------------------------------
// report::predict_report

fn predict_manifest_line(source: &Provenance) -> String {
    let config = tiny_config(Architecture::Olmo2);
    let options = predict_options(vec![Q, K], 2, Candidates::SameLayer);
    let token_set = token_set();
    let manifest = predict_report::PredictManifest {
        tool: fixed_tool(),
        source,
        config: &config,
        text: "wikitext".into(),
        tokenizer: "hf:allenai/OLMo-2-0425-1B".into(),
        token_set: &token_set,
        n_sequences: 8,
        seed: 7,
        options: &options,
        device: "cpu".into(),
        seconds: 1.5,
        activation_store_bytes: 0,
    };
    predict_report::manifest_line(&manifest)
}

#[test]
fn predict_manifest_line_hub_and_init() {
    let hub = provenance(
        "hf:allenai/OLMo-2-0425-1B@stage1-step1000-tokens3B",
        "hub",
        Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"),
        None,
    );
    insta::assert_snapshot!("predict_manifest_line_hub", predict_manifest_line(&hub));
    let init = provenance(
        "init:tiny:seed=3",
        "init",
        None,
        Some("seed 3, scheme olmo"),
    );
    insta::assert_snapshot!("predict_manifest_line_init", predict_manifest_line(&init));
}

#[test]
fn predict_summary_same_layer() {
    // Tiny OLMo-2: 2 layers of 4 query and 4 KV heads (head_dim 8, d_model 32); k ≤ 2.
    let config = tiny_config(Architecture::Olmo2);
    let options = predict_options(vec![Q, K], 2, Candidates::SameLayer);
    let mut rows = Vec::new();
    for (kind, base) in [(Q, 0.30), (K, 0.50)] {
        for layer in 0..2 {
            let lift = 0.1 * layer as f64;
            rows.push(prediction("ckpt", kind, layer, 0, 1, 2, "1", base + lift));
            rows.push(prediction(
                "ckpt",
                kind,
                layer,
                1,
                1,
                2,
                "0",
                base + lift + 0.02,
            ));
            rows.push(prediction(
                "ckpt",
                kind,
                layer,
                0,
                2,
                2,
                "1;2",
                base + lift + 0.1,
            ));
            rows.push(prediction(
                "ckpt",
                kind,
                layer,
                1,
                2,
                2,
                "0;3",
                base + lift + 0.12,
            ));
        }
    }
    // One target with a constant output: counted in the NaN column, left out of the means.
    rows.push(prediction("ckpt", K, 1, 2, 1, 2, "0", f64::NAN));
    let md = predict_report::summary_markdown(
        &rows,
        &options,
        &config,
        "source `init:tiny`; text `random`",
    );
    insta::assert_snapshot!("predict_summary_same_layer", md);
}

#[test]
fn predict_summary_earlier_layers_with_k_capped() {
    // Tiny Llama: 2 KV heads per layer. Earlier-layer candidates for K: 1 in layer 0 (k capped
    // at 1 below --max-refs 2), 3 in layer 1.
    let config = tiny_config(Architecture::Llama);
    let options = predict_options(vec![K], 2, Candidates::EarlierLayers);
    let rows = vec![
        prediction("ckpt", K, 0, 0, 1, 1, "0:1", 0.40),
        prediction("ckpt", K, 0, 1, 1, 1, "0:0", 0.42),
        prediction("ckpt", K, 1, 0, 1, 2, "0:0", 0.55),
        prediction("ckpt", K, 1, 1, 1, 2, "1:0", 0.57),
        prediction("ckpt", K, 1, 0, 2, 2, "0:0;1:1", 0.65),
        prediction("ckpt", K, 1, 1, 2, 2, "1:0;0:1", 0.67),
    ];
    let md = predict_report::summary_markdown(&rows, &options, &config, "source `init:tiny-llama`");
    insta::assert_snapshot!("predict_summary_earlier_layers_k_capped", md);
}

// ---------------------------------------------------------------------------------------------
// report::align_report

fn align_rows() -> (Vec<AlignLayerRow>, Vec<WeightR2Row>) {
    let layers = vec![
        align_layer("ckpt", Q, 0, 0.2600, 0),
        align_layer("ckpt", Q, 1, 0.3125, 2),
        align_layer("ckpt", K, 0, 0.2550, 0),
        align_layer("ckpt", K, 1, 0.4000, 4),
    ];
    let mut weights = Vec::new();
    for (kind, base) in [(Q, 0.25), (K, 0.30)] {
        for layer in 0..2 {
            weights.push(weight_r2("ckpt", kind, layer, 1, "1", base));
            weights.push(weight_r2("ckpt", kind, layer, 2, "1;2", base + 0.25));
        }
    }
    (layers, weights)
}

#[test]
fn align_summary_weights_only() {
    let config = tiny_config(Architecture::Olmo2);
    let (layers, weights) = align_rows();
    let md = align_report::summary_markdown(
        &layers,
        &weights,
        &[],
        &[],
        &alignment_options(vec![Q, K]),
        &config,
        "init:tiny",
    );
    insta::assert_snapshot!("align_summary_weights_only", md);
}

#[test]
fn align_summary_with_measured_predictions() {
    let config = tiny_config(Architecture::Olmo2);
    let (layers, weights) = align_rows();
    let measured = vec![
        versus("ckpt", Q, 0, 1, 0.30, 0.25),
        versus("ckpt", Q, 1, 2, 0.60, 0.50),
        versus("ckpt", K, 0, 1, 0.45, 0.30),
        versus("ckpt", K, 1, 2, 0.70, 0.55),
    ];
    let spearman = [(Q, 0.8, 2), (K, -0.5, 2)];
    let md = align_report::summary_markdown(
        &layers,
        &weights,
        &measured,
        &spearman,
        &alignment_options(vec![Q, K]),
        &config,
        "hf:allenai/OLMo-2-0425-1B@main",
    );
    insta::assert_snapshot!("align_summary_with_measured", md);
}

// ---------------------------------------------------------------------------------------------
// report::theory_section

fn theory_row(
    role: &str,
    source: &str,
    layer: i64,
    kind: &str,
    measured: f64,
    verdict: &str,
    above: (usize, usize),
) -> TheoryRow {
    TheoryRow {
        role: role.into(),
        source: source.into(),
        layer,
        kind: kind.into(),
        k: 1,
        target_heads: 4,
        r2_pooled_heldout: measured,
        predicted_r2_pooled: 0.012,
        prediction_tolerance_pooled: 0.004,
        monte_carlo_r2_pooled: 0.35,
        verdict: verdict.parse().unwrap(),
        failed_checks: if verdict == "FAIL" {
            "prediction pooled".into()
        } else {
            String::new()
        },
        heads_above_prediction: above.0,
        heads_above_prediction_bootstrap: above.1,
        heldout_resamples: if role == "trained" { 200 } else { 0 },
    }
}

fn theory_rows() -> Vec<TheoryRow> {
    let (init, trained) = ("init:tiny:seed=1", "ckpt:step100");
    vec![
        theory_row("init", init, 0, "k", 0.010, "pass", (0, 0)),
        theory_row("init", init, 1, "k", 0.050, "FAIL", (1, 0)),
        theory_row("init", init, 0, "q", 0.011, "pass", (0, 0)),
        theory_row("trained", trained, 0, "k", 0.600, "above bound", (4, 3)),
        theory_row("trained", trained, 1, "k", f64::NAN, "", (2, 2)),
    ]
}

#[test]
fn theory_section_with_and_without_rows() {
    let out = Path::new("reports/scan-tiny");
    let rows = theory_rows();
    insta::assert_snapshot!(
        "theory_section_with_rows",
        theory_section::theory_markdown(Some(&rows), "tiny", out)
    );
    insta::assert_snapshot!(
        "theory_section_not_run",
        theory_section::theory_markdown(None, "tiny", out)
    );
}

// ---------------------------------------------------------------------------------------------
// report::scan_status

fn unit(analysis: &str, status: UnitStatus) -> UnitRun {
    UnitRun {
        analysis: analysis.into(),
        digest: format!("{analysis}-digest"),
        status,
        seconds: 0.0,
    }
}

fn record(label: &str, step: Option<u64>, units: Vec<UnitRun>) -> CheckpointRecord {
    CheckpointRecord {
        label: label.into(),
        step,
        tokens: None,
        provenance: provenance(label, "safetensors", None, None),
        identity: format!("{label}-identity"),
        config_sha256: "c0ffee".into(),
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::Default,
        file_sha256: Vec::new(),
        fingerprint: format!("{label}-fingerprint"),
        units,
    }
}

#[test]
fn scan_status_table() {
    let records = vec![
        record(
            "init-olmo-seed1",
            None,
            vec![
                unit("predict", UnitStatus::Cached),
                unit("align", UnitStatus::Done),
                unit("sinks", UnitStatus::Computed),
            ],
        ),
        record(
            "step1000",
            Some(1000),
            vec![
                unit("predict", UnitStatus::Running),
                unit("align", UnitStatus::Pending),
                unit("sinks", UnitStatus::Pending),
            ],
        ),
    ];
    let incomplete = vec![IncompleteRow {
        checkpoint: "step2000".into(),
        state: IncompleteState::Failed,
        error: "shard 3: out of memory".into(),
    }];
    insta::assert_snapshot!(
        "scan_status_table",
        scan_status::status_table(&records, &incomplete)
    );
    insta::assert_snapshot!(
        "scan_status_table_empty",
        scan_status::status_table(&[], &[])
    );
}

// ---------------------------------------------------------------------------------------------
// report::scan_report (through write_report: report.md and every CSV it writes)

const SCAN_MANIFEST: &str = r#"
name = "tiny"
description = "  A tiny series for the report snapshots.  "

[[sources]]
label = "step0"
source = "/models/tiny/step0"
step = 0

[[sources]]
label = "step100"
source = "/models/tiny/step100"
step = 100

[[sources]]
label = "step200"
source = "/models/tiny/step200"
step = 200

[[init]]
config = "series"
seeds = [1]
"#;

fn checkpoint_row(
    label: &str,
    step: Option<u64>,
    tokens: &str,
    duplicate_of: &str,
) -> CheckpointRow {
    CheckpointRow {
        checkpoint: label.into(),
        step,
        tokens: tokens.into(),
        is_init: step.is_none(),
        source: if step.is_none() {
            "init:series:seed=1:scheme=olmo".into()
        } else {
            format!("/models/tiny/{label}")
        },
        revision_sha: String::new(),
        fingerprint: format!("{label}-fingerprint"),
        duplicate_of: duplicate_of.into(),
    }
}

fn sink(checkpoint: &str, layer: i64, head: usize, first: f64, beyond: f64, share: f64) -> SinkRow {
    SinkRow {
        checkpoint: checkpoint.into(),
        layer,
        head,
        sequences: 4,
        seq_len: 32,
        first_column_score: first,
        sinks_beyond_first: beyond + 0.5,
        sinks_beyond_first_evidenced: beyond,
        share_with_extra_sink: share,
    }
}

/// Four checkpoints (a random init, steps 0, 100 and 200, the last a duplicate of step 100),
/// one layer of K rows each, so every table and figure of the report has a row.
fn scan_tables() -> ScanTables {
    let checkpoints = vec![
        checkpoint_row("init-olmo-seed1", None, "", ""),
        checkpoint_row("step0", Some(0), "0", ""),
        checkpoint_row("step100", Some(100), "0.4B", ""),
        checkpoint_row("step200", Some(200), "0.8B", "step100"),
    ];
    let mut tables = ScanTables {
        labels: checkpoints.iter().map(|c| c.checkpoint.clone()).collect(),
        checkpoints,
        ..ScanTables::default()
    };
    for (i, label) in tables.labels.clone().iter().enumerate() {
        let r2 = 0.1 + 0.2 * i as f64;
        for layer in 0..2 {
            tables
                .predictions
                .push(prediction(label, K, layer, 0, 1, 2, "1", r2));
            tables
                .predictions
                .push(prediction(label, K, layer, 0, 2, 2, "1;2", r2 + 0.1));
            tables.alignment_layers.push(align_layer(
                label,
                K,
                layer,
                0.25 + 0.05 * i as f64,
                i as i64,
            ));
            tables
                .weight_r2
                .push(weight_r2(label, K, layer, 1, "1", r2 - 0.05));
            tables
                .weight_vs_measured
                .push(versus(label, K, layer, 1, r2, r2 - 0.05));
            tables
                .weight_vs_measured
                .push(versus(label, K, layer, 2, r2 + 0.1, r2));
            tables.sinks.push(sink(
                label,
                layer,
                0,
                0.2 + 0.1 * i as f64,
                0.25 * i as f64,
                0.25 * i as f64,
            ));
        }
        tables.alignment_pairs.push(PairRow {
            checkpoint: label.clone(),
            kind: K,
            layer: 0,
            head_a: 0,
            head_b: 1,
            mean_cos2: 0.25 + 0.05 * i as f64,
            grassmann_distance: 2.5,
            min_angle_degrees: 30.0,
            mean_angle_degrees: 60.0,
            max_angle_degrees: 89.5,
            weight_r2_a_to_b: 0.25,
            weight_r2_b_to_a: 0.26,
        });
    }
    tables
}

fn scan_options() -> ScanOptions {
    ScanOptions {
        text: "random".into(),
        tokens: 256,
        seq_len: 32,
        seed: 3,
        sink_sequences: 4,
        predictability: predict_options(vec![K], 2, Candidates::SameLayer),
        alignment: alignment_options(vec![K]),
        max_refs: 2,
    }
}

/// Runs `write_report` into a fresh folder (with the theory rows when given); returns
/// report.md with the folder's path replaced by `<out>`, and every CSV under a `== name ==` line.
fn scan_report_text(theory_csv: Option<&str>) -> (String, String) {
    let manifest = SeriesManifest::parse(SCAN_MANIFEST, Path::new("tiny.toml")).unwrap();
    let config = tiny_config(Architecture::Olmo2);
    let dir = tempfile::tempdir().unwrap();
    if let Some(csv) = theory_csv {
        let path = theory_rows_path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, csv).unwrap();
    }
    scan_report::write_report(
        dir.path(),
        &manifest,
        &scan_options(),
        &config,
        &scan_tables(),
    )
    .unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let report = read("report.md").replace(&dir.path().display().to_string(), "<out>");
    let csvs = crate::common::SCAN_CSVS
        .iter()
        .map(|name| format!("== {name} ==\n{}", read(name)))
        .collect::<Vec<_>>()
        .join("\n");
    (report, csvs)
}

#[test]
fn scan_report_markdown_and_csvs() {
    let (report, csvs) = scan_report_text(None);
    insta::assert_snapshot!("scan_report_md", report);
    insta::assert_snapshot!("scan_report_csvs", csvs);
}

#[test]
fn scan_report_markdown_with_theory_rows() {
    let csv = "role,source,layer,kind,k,target_heads,r2_pooled_heldout,predicted_r2_pooled,prediction_tolerance_pooled,monte_carlo_r2_pooled,verdict,failed_checks,heads_above_prediction,heads_above_prediction_bootstrap,heldout_resamples\n\
init,init-olmo-seed1,0,k,1,4,0.010,0.012,0.004,0.35,pass,,0,0,0\n\
trained,step200,0,k,1,4,0.600,0.013,0.004,0.33,above bound,,3,2,200\n";
    let (report, _) = scan_report_text(Some(csv));
    // Only the init-time section differs from scan_report_md: snapshot that part.
    let start = report.find("## Init-time check").unwrap();
    let end = report.find("## Integrity").unwrap();
    insta::assert_snapshot!("scan_report_md_theory_section", &report[start..end]);
}

// ---------------------------------------------------------------------------------------------
// report::theory_report

fn finite_row(spectrum: &str, k: usize, failures: &str) -> FiniteSampleRow {
    FiniteSampleRow {
        spectrum: spectrum.into(),
        dimension: 64,
        head_dim: 8,
        k,
        features: 8 * k,
        fit_rows: 256,
        heldout_rows: 64,
        replications: 400,
        rho2: 0.125 * k as f64,
        in_sample: 0.16 * k as f64,
        in_sample_se: 0.002,
        in_sample_formula: 0.159 * k as f64,
        in_sample_mean_of_ratio: 0.161 * k as f64,
        heldout: 0.09 * k as f64,
        heldout_se: 0.003,
        heldout_formula: 0.091 * k as f64,
        heldout_mean_of_ratio: 0.089 * k as f64,
        failures: failures.into(),
    }
}

/// A layer row of `theory` (b)/(c) with round values; `measured` is the pooled held-out R².
fn theory_layer(
    role: SourceRole,
    source: &str,
    layer: i64,
    kind: HeadKind,
    k: usize,
    measured: f64,
    verdict: &str,
) -> LayerRow {
    let mut r = LayerRow::blank(role, source, layer, kind, k);
    let layer_f = layer as f64;
    r.head_dim = 8;
    r.dimension = 32;
    r.rank = 32;
    r.target_heads = 4;
    r.n_fit = 192;
    r.n_heldout = 64;
    r.r2_pooled_heldout = measured;
    r.r2_pooled_se = 0.002;
    r.r2_uniform_heldout = measured - 0.001;
    r.r2_uniform_se = 0.0025;
    r.bound = 0.5 + 0.1 * layer_f;
    r.floor = 0.25;
    r.isotropic = 0.25 * k as f64;
    r.monte_carlo_rho_bar = 0.3;
    r.monte_carlo_r2_pooled = 0.28 + 0.02 * layer_f;
    r.weight_sd = 0.01;
    r.tolerance = 0.03;
    r.margin = r.bound + r.tolerance - measured;
    r.verdict = verdict.parse().unwrap();
    r.covariance_rows = 128;
    r.covariance_split = "own".into();
    r.covariance_rows_per_dimension = 4.0;
    r.bound_margin = r.bound - measured;
    r.selection_slack = 0.02;
    r.predicted_r2_pooled = 0.012 + 0.001 * layer_f;
    r.predicted_r2_pooled_sd = 0.0015;
    r.predicted_r2_uniform = 0.011;
    r.predicted_r2_uniform_sd = 0.0016;
    r.prediction_replications = 32;
    r.deviation_pooled = measured - r.predicted_r2_pooled;
    r.deviation_uniform = 0.0;
    r.critical_value = 3.125;
    r.prediction_tolerance_pooled = 0.0048;
    r.prediction_tolerance_uniform = 0.005;
    r.population_heldout_formula = 0.26 + 0.02 * layer_f;
    r.iid_rows = layer == 0;
    r.design_deflation = r.monte_carlo_r2_pooled - r.predicted_r2_pooled;
    if role == SourceRole::Trained {
        r.heads_above_prediction = 3;
        r.head_prediction_limit = 0.02;
        r.heldout_resamples = 200;
        r.r2_pooled_ci_low = measured - 0.05;
        r.r2_pooled_ci_high = measured + 0.05;
        r.heads_above_prediction_bootstrap = 2;
    }
    if verdict == "FAIL" {
        r.failed_checks = "prediction pooled".into();
    }
    r
}

fn source_report(role: SourceRole, label: &str, provenance: Provenance) -> SourceReport {
    SourceReport {
        role,
        label: label.into(),
        provenance,
        config: tiny_config(Architecture::Olmo2),
        tokenizer: "hf:allenai/OLMo-2-0425-1B".into(),
        token_set_hash: "fedcba9876543210fedcba9876543210".into(),
        sequences: 8,
        fit_sequences: 6,
        covariance_sequences: 4,
        seq_len: 32,
        seconds: 12.4,
        spectra: Vec::new(),
        rows: Vec::new(),
    }
}

fn model_check_settings() -> ModelCheckSettings {
    ModelCheckSettings {
        text: "random".into(),
        tokens: 256,
        covariance_tokens: 128,
        seq_len: 32,
        split: 0.75,
        kinds: vec![K, V],
        max_refs: 2,
        layers: Some(vec![0, 1]),
        capture: "proj",
        selection: "topn",
        layer_draws: 64,
        prediction_replications: 32,
        iid_layer0: true,
        family_alpha: 0.05,
        heldout_resamples: 200,
        seed: 11,
    }
}

struct TheoryInputs {
    grid: Vec<ckpt_scan::analysis::init_check::GridRow>,
    finite: Vec<FiniteSampleRow>,
    layers: Vec<LayerRow>,
    mutations: Vec<MutationRow>,
    reports: Vec<SourceReport>,
}

fn theory_inputs() -> TheoryInputs {
    let mut grid = Vec::new();
    for k in 1..=2 {
        grid.push(grid_row("isotropic", 64, k, WeightLaw::Gaussian));
        grid.push(grid_row("power 1", 64, k, WeightLaw::TruncatedNormal));
    }
    grid[3].beta_variance = 0.004;
    grid[3].r2_pooled_variance = 0.005;
    grid[3].failures = "E R²pool > ρ̄".into();
    let finite = vec![
        finite_row("isotropic", 1, ""),
        finite_row("power 1", 2, "held-out off by 4.1 SE"),
    ];
    let init = "init:tiny:seed=1";
    let trained = "hf:org/tiny@main";
    let layers = vec![
        theory_layer(SourceRole::Init, init, 0, K, 1, 0.0110, "pass"),
        theory_layer(SourceRole::Init, init, 1, K, 1, 0.0300, "FAIL"),
        theory_layer(SourceRole::Init, init, 0, K, 2, 0.0200, "pass"),
        theory_layer(SourceRole::Init, init, 0, V, 1, 0.0105, "pass"),
        theory_layer(SourceRole::Trained, trained, 0, K, 1, 0.6000, "above bound"),
        theory_layer(
            SourceRole::Trained,
            trained,
            1,
            K,
            1,
            0.4500,
            "within bound",
        ),
    ];
    let mutations = vec![
        MutationRow {
            mutation: Mutation::HonestRandom,
            description: "honest: random tokens".into(),
            rows: 6,
            failed: 0,
            failed_by_check: String::new(),
            as_expected: true,
            layer_rows: Vec::new(),
        },
        MutationRow {
            mutation: Mutation::ScaledR2,
            description: "measured R² × 1.5".into(),
            rows: 6,
            failed: 4,
            failed_by_check: "prediction pooled (4), bound (1)".into(),
            as_expected: true,
            layer_rows: Vec::new(),
        },
        MutationRow {
            mutation: Mutation::RowSplit,
            description: "row split".into(),
            rows: 6,
            failed: 0,
            failed_by_check: String::new(),
            as_expected: false,
            layer_rows: Vec::new(),
        },
    ];
    let reports = vec![
        source_report(
            SourceRole::Init,
            init,
            provenance(init, "init", None, Some("seed 1, scheme olmo")),
        ),
        source_report(
            SourceRole::Trained,
            trained,
            provenance(
                trained,
                "hub",
                Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"),
                None,
            ),
        ),
    ];
    TheoryInputs {
        grid,
        finite,
        layers,
        mutations,
        reports,
    }
}

#[test]
fn theory_pass_fail_table() {
    let t = theory_inputs();
    insta::assert_snapshot!(
        "theory_pass_fail_table_all_checks",
        theory_report::pass_fail_table(&t.grid, &t.finite, &t.layers, &t.mutations)
    );
    insta::assert_snapshot!(
        "theory_pass_fail_table_grid_only",
        theory_report::pass_fail_table(&t.grid, &[], &[], &[])
    );
}

#[test]
fn theory_verification_markdown() {
    let t = theory_inputs();
    let check = model_check_settings();
    let md = theory_report::verification_markdown(
        &t.grid,
        &t.finite,
        &t.layers,
        &t.mutations,
        &t.reports,
        &check,
        400,
    );
    insta::assert_snapshot!("theory_verification_full", without_build_identity(&md));
    let mut grid_only_check = check;
    grid_only_check.layers = None;
    let md =
        theory_report::verification_markdown(&t.grid, &[], &[], &[], &[], &grid_only_check, 400);
    insta::assert_snapshot!("theory_verification_grid_only", without_build_identity(&md));
}

#[test]
fn config_used_by_the_snapshots_is_the_tiny_one() {
    // The snapshots' isotropic values (k·8/32) assume this shape; a change here explains a diff.
    let config: ModelConfig = tiny_config(Architecture::Olmo2);
    assert_eq!(
        (
            config.num_hidden_layers,
            config.hidden_size,
            config.head_dim
        ),
        (2, 32, 8)
    );
}

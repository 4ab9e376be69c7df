//! The multiple-choice harness against an independent computation: transformers' per-choice
//! log-likelihoods on the same SmolLM2 GGUF for 20 arc_easy items (tests/fixtures/harness_reference.py),
//! and the request-file reader on the real arc_easy file.

use crate::common::{data_file, golden_dir, tiny_config};
use ckpt_scan::config::Architecture;
use ckpt_scan::data::paths::smollm2_gguf;
use ckpt_scan::data::tasks::{eval_request_file, read_mc_items, McChoice, McItem};
use ckpt_scan::infer::harness::{score_items, target_logprobs, Metric, ScoringRequest};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::open_source;
use tch::{Kind, Tensor};

/// Summed log-likelihoods over a few tokens, both in f32 on the CPU by different code; measured
/// worst 2.3e-5 over the 20 items. The bound matches tests/gguf.rs's logit tolerance.
const LOGLIK_TOLERANCE: f64 = 1e-3;

#[test]
fn smollm2_arc_easy_logliks_match_transformers() {
    let Some(dir) = golden_dir() else { return };
    let Some(model_path) = data_file(smollm2_gguf()) else {
        return;
    };
    let Some(fixture) = data_file(dir.join("smollm2-arc-easy.json")) else {
        return;
    };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let items: Vec<McItem> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| McItem {
            task: "arc_easy".into(),
            doc_id: item["doc_id"].as_i64().unwrap(),
            native_id: String::new(),
            gold: item["gold"].as_u64().unwrap() as usize,
            choices: item["choices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| McChoice {
                    context: c["context"].as_str().unwrap().into(),
                    continuation: c["continuation"].as_str().unwrap().into(),
                })
                .collect(),
        })
        .collect();
    assert_eq!(items.len(), 20);
    let source = open_source(&format!("gguf:{}", model_path.display())).unwrap();
    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    // A small batch budget, so several batches of mixed lengths (and right padding) are exercised.
    let (scores, stats) = score_items(&model, &tokenizer, &items, 256, None, None).unwrap();
    assert!(stats.tokens > 0);
    let mut worst: f64 = 0.0;
    for (score, item) in scores.iter().zip(json["items"].as_array().unwrap()) {
        let expected: Vec<f64> = item["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["loglik"].as_f64().unwrap())
            .collect();
        for (choice, (ours, theirs)) in score.choices.iter().zip(&expected).enumerate() {
            let tokens = item["choices"][choice]["tokens"].as_u64().unwrap() as usize;
            assert_eq!(
                ours.continuation_tokens, tokens,
                "doc {} choice {choice}",
                score.doc_id
            );
            worst = worst.max((ours.loglik - theirs).abs());
        }
        let hf_choice = (0..expected.len()).fold(0, |best, i| {
            if expected[i] > expected[best] {
                i
            } else {
                best
            }
        });
        assert_eq!(
            score.predicted(Metric::Acc),
            hf_choice,
            "doc {}",
            score.doc_id
        );
    }
    eprintln!("arc_easy, 20 items: max |Δ loglik| vs transformers {worst:e}");
    assert!(worst <= LOGLIK_TOLERANCE, "max |Δ loglik| {worst:e}");
}

/// The head on selected rows against the head on every position: the same f32 dot products, so
/// equal up to the matrix kernel's blocking.
const SELECTED_POSITION_TOLERANCE: f64 = 1e-6;

#[test]
fn selected_position_logprobs_equal_the_full_logits_path() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = InitSource::new(tiny_config(architecture), 11, InitScheme::Hf, "init:tiny");
        let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        let requests: Vec<ScoringRequest> = [
            (vec![5, 9, 13, 21, 40, 7, 7, 33], 5),
            (vec![12, 3], 1),
            (vec![60, 61, 62, 63, 0, 4], 2),
            (vec![8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 9], 12),
        ]
        .into_iter()
        .map(|(ids, first_target)| ScoringRequest { ids, first_target })
        .collect();
        let mut worst: f64 = 0.0;
        // One batch with padding, and several small ones.
        for batch_tokens in [1024, 13] {
            let (ours, stats) =
                target_logprobs(&model, &requests, batch_tokens, None, None).unwrap();
            assert_eq!(stats.tokens, 29);
            for (request, values) in requests.iter().zip(&ours) {
                let full = model
                    .logits(&Tensor::from_slice(&request.ids).unsqueeze(0))
                    .unwrap()
                    .get(0)
                    .log_softmax(-1, Kind::Float);
                assert_eq!(values.len(), request.ids.len() - request.first_target);
                for (t, value) in (request.first_target..request.ids.len()).zip(values) {
                    let expected =
                        f64::try_from(full.get(t as i64 - 1).get(request.ids[t])).unwrap();
                    worst = worst.max((value - expected).abs());
                }
            }
        }
        eprintln!("{architecture:?}: selected vs full logits max |Δ logprob| {worst:e}");
        assert!(
            worst <= SELECTED_POSITION_TOLERANCE,
            "{architecture:?}: {worst:e}"
        );
    }
    let source = InitSource::new(
        tiny_config(Architecture::Llama),
        11,
        InitScheme::Hf,
        "init:tiny",
    );
    let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    let bad = ScoringRequest {
        ids: vec![1, 2],
        first_target: 0,
    };
    let error = target_logprobs(&model, &[bad], 64, None, None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("scoring request 0"), "{error}");
}

#[test]
fn real_arc_easy_request_file_reads_570_items_of_four_choices_mostly() {
    let Some(path) = data_file(eval_request_file("arc_easy", "rc_0shot")) else {
        return;
    };
    let items = read_mc_items(&path).unwrap();
    assert_eq!(items.len(), 570);
    assert!(items.iter().all(|i| (3..=5).contains(&i.choices.len())));
    assert_eq!(items[0].choices[0].continuation, " cellular telephone");
    assert!(items[0].choices[0].context.ends_with("\nAnswer:"));
}

#[test]
fn validate_writes_a_report_with_intervals_on_a_few_smollm2_items() {
    let Some((ok, stdout, stderr, out)) = crate::common::validate_smollm2(&[]) else {
        return;
    };
    let out_dir = out.path().join("v");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| arc_easy | rc_0shot | baseline | acc |"),
        "{stdout}"
    );
    let mut rows = csv::Reader::from_path(out_dir.join("accuracy.csv")).unwrap();
    let mut seen = 0;
    for row in rows.deserialize::<std::collections::HashMap<String, String>>() {
        let row = row.unwrap();
        let value = |k: &str| row[k].parse::<f64>().unwrap();
        assert_eq!(value("items"), 3.0);
        assert!(value("low_95") <= value("accuracy") && value("accuracy") <= value("high_95"));
        // The baseline has no Δ against itself.
        assert!(value("delta_vs_baseline").is_nan() && value("delta_low_95").is_nan());
        seen += 1;
    }
    assert_eq!(seen, 2, "acc and acc_per_char");
    let choices = std::fs::read_to_string(out_dir.join("choices.csv")).unwrap();
    assert!(choices.lines().count() > 9, "{choices}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["tasks"][0]["items_used"], 3);
    assert_eq!(
        manifest["tasks"][0]["request_file_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn validate_with_a_bad_act_file_or_task_names_it() {
    let Some(model_path) = data_file(smollm2_gguf()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let heads = dir.path().join("heads.json");
    std::fs::write(&heads, r#"{"heads": {"29": [0]}}"#).unwrap();
    let spec = format!("gguf:{}", model_path.display());
    let (ok, _, stderr) = crate::common::cli(&[
        "--device",
        "cpu",
        "validate",
        &spec,
        "--tasks",
        "arc_easy",
        "--act",
        heads.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("heads.json") && stderr.contains("ACT layer 29 is outside layers 2..=28"),
        "{stderr}"
    );
    let (ok, _, stderr) = crate::common::cli(&[
        "--device",
        "cpu",
        "validate",
        &spec,
        "--tasks",
        "no_such_task",
    ]);
    assert!(!ok);
    // Issue 21: an unknown task lists the tasks (it used to suggest the data fetch).
    assert!(
        stderr.contains("no_such_task")
            && stderr.contains("unknown task")
            && stderr.contains("arc_easy"),
        "{stderr}"
    );
}

#[test]
fn missing_request_file_names_it_with_a_hint() {
    let error = read_mc_items(std::path::Path::new("/nonexistent/requests.jsonl.gz"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("/nonexistent/requests.jsonl.gz: not found"),
        "{error}"
    );
    assert!(error.contains("hint:"), "{error}");
}

/// Packed rows with branch masks against each continuation as its own sequence: the same f32
/// arithmetic on differently shaped attention, so equal up to rounding.
const SHARED_PREFIX_TOLERANCE: f64 = 1e-5;

#[test]
fn shared_prefix_rows_score_as_separate_sequences() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = InitSource::new(tiny_config(architecture), 11, InitScheme::Hf, "init:tiny");
        let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        let worst = crate::common::shared_vs_separate_logprobs(&model, None);
        eprintln!("{architecture:?}: shared prefix vs separate max |Δ logprob| {worst:e}");
        assert!(
            worst <= SHARED_PREFIX_TOLERANCE,
            "{architecture:?}: {worst:e}"
        );
    }
}

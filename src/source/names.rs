//! llama.cpp ↔ Hugging Face tensor names for the GGUF families ckpt-scan reads (`llama`, `qwen2`,
//! `qwen3`, `gemma3`; gguf-py's `TensorNameMap`), and the Q/K row order llama.cpp's converter
//! changes for Llama (`convert_hf_to_gguf.py`, `LlamaModel.permute`).
//!
//! The tables differ only in the norms after attention: a pre-norm block's `ffn_norm` is HF's
//! `post_attention_layernorm` (the norm before the MLP), while Gemma's sandwich block names its
//! four norms `attn_norm`, `post_attention_norm`, `ffn_norm`, `post_ffw_norm`.
//!
//! Names outside the table (e.g. `rope_freqs.weight`) keep their GGUF spelling, so `inspect`
//! reports them as unexpected instead of hiding them.

use tch::Tensor;

use crate::config::{Architecture, NormPlacement};

/// Whole-model tensors: (GGUF stem, HF stem).
const GLOBAL: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// Per-block tensors every family shares: (GGUF stem after `blk.N.`, HF stem after
/// `model.layers.N.`). Qwen3's and Gemma-3's per-head QK-norms are `attn_q_norm` / `attn_k_norm`.
const BLOCK: [(&str, &str); 10] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
];

/// The norm before the MLP in a pre-norm block (Llama, Qwen2, Qwen3).
const PRE_NORMS: [(&str, &str); 1] = [("ffn_norm", "post_attention_layernorm")];

/// Gemma-3's norms after each sub-layer and before the MLP.
const SANDWICH_NORMS: [(&str, &str); 3] = [
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
];

/// The per-block (GGUF, HF) stem pairs of one family.
fn block_table(
    architecture: Architecture,
) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    let norms: &[(&str, &str)] = match architecture.norm_placement() {
        NormPlacement::Sandwich => &SANDWICH_NORMS,
        NormPlacement::Pre | NormPlacement::Post => &PRE_NORMS,
    };
    BLOCK.iter().chain(norms)
}

/// Splits `stem.weight` / `stem.bias`.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    ["weight", "bias"]
        .into_iter()
        .find_map(|suffix| Some((name.strip_suffix(suffix)?.strip_suffix('.')?, suffix)))
}

/// The Hugging Face name of a GGUF tensor of `architecture`, or `None` when the table has no
/// entry for it.
pub fn hf_name(gguf: &str, architecture: Architecture) -> Option<String> {
    let (stem, suffix) = split_suffix(gguf)?;
    if let Some(&(_, hf)) = GLOBAL.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let (layer, block_stem) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let &(_, hf) = block_table(architecture).find(|(g, _)| *g == block_stem)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of a Hugging Face tensor of `architecture`, or `None` when the table has no
/// entry for it.
pub fn gguf_name(hf: &str, architecture: Architecture) -> Option<String> {
    let (stem, suffix) = split_suffix(hf)?;
    if let Some(&(g, _)) = GLOBAL.iter().find(|(_, h)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (layer, block_stem) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let &(g, _) = block_table(architecture).find(|(_, h)| *h == block_stem)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Which of a Llama model's projections llama.cpp stored with permuted rows (only Llama's: the
/// other families use rotate-half RoPE in llama.cpp too, so their rows are stored as in HF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeProjection {
    Query,
    Key,
}

/// `Query` for `…q_proj.{weight,bias}`, `Key` for `…k_proj.{weight,bias}`.
pub fn rope_projection(hf: &str) -> Option<RopeProjection> {
    let (stem, _) = split_suffix(hf)?;
    if stem.ends_with(".self_attn.q_proj") {
        Some(RopeProjection::Query)
    } else if stem.ends_with(".self_attn.k_proj") {
        Some(RopeProjection::Key)
    } else {
        None
    }
}

/// llama.cpp's converter row order, from HF's: within each head, HF row `p * head_dim/2 + i`
/// (rotate-half: row i pairs with i + head_dim/2) moves to row `2i + p` (adjacent pairs).
///
/// `weight`: `[heads * head_dim, …]` (a weight or a bias); result: same shape. Implements
/// `w.reshape(heads, 2, head_dim/2, …).swapaxes(1, 2).reshape(w.shape)`.
pub fn permute_rope_rows(weight: &Tensor, heads: i64) -> Tensor {
    reorder_rows(weight, heads, [2, -1])
}

/// Undoes [`permute_rope_rows`]: GGUF's interleaved rows back to HF's rotate-half order, as
/// transformers' `_reverse_permute_weights` does. `heads` is the query head count for `q_proj`
/// and the KV head count for `k_proj`.
pub fn unpermute_rope_rows(weight: &Tensor, heads: i64) -> Tensor {
    reorder_rows(weight, heads, [-1, 2])
}

/// Views rows as `[heads, a, b, rest]` with `(a, b)` = `split`, swaps `a` and `b`, flattens back.
fn reorder_rows(weight: &Tensor, heads: i64, split: [i64; 2]) -> Tensor {
    let shape = weight.size();
    let rest = &shape[1..];
    let half = shape[0] / heads / 2;
    let split = split.map(|s| if s == -1 { half } else { s });
    let mut view = vec![heads, split[0], split[1]];
    view.extend_from_slice(rest);
    weight
        .reshape(view.as_slice())
        .transpose(1, 2)
        .contiguous()
        .reshape(shape.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.12.attn_k.bias",
                "model.layers.12.self_attn.k_proj.bias",
            ),
            (
                "blk.3.attn_output.weight",
                "model.layers.3.self_attn.o_proj.weight",
            ),
            (
                "blk.29.ffn_down.weight",
                "model.layers.29.mlp.down_proj.weight",
            ),
            (
                "blk.1.attn_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
        ] {
            assert_eq!(hf_name(g, Architecture::Llama).as_deref(), Some(h), "{g}");
            assert_eq!(gguf_name(h, Architecture::Llama).as_deref(), Some(g), "{h}");
        }
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_qq.weight",
            "output",
        ] {
            assert_eq!(hf_name(unknown, Architecture::Llama), None, "{unknown}");
        }
    }

    #[test]
    fn gemma_names_its_four_norms_and_ffn_norm_is_the_pre_feedforward_one() {
        let gemma = Architecture::Gemma3;
        for (g, h) in [
            ("blk.2.attn_norm.weight", "input_layernorm"),
            (
                "blk.2.post_attention_norm.weight",
                "post_attention_layernorm",
            ),
            ("blk.2.ffn_norm.weight", "pre_feedforward_layernorm"),
            ("blk.2.post_ffw_norm.weight", "post_feedforward_layernorm"),
            ("blk.2.attn_q_norm.weight", "self_attn.q_norm"),
        ] {
            let h = format!("model.layers.2.{h}.weight");
            assert_eq!(hf_name(g, gemma).as_deref(), Some(h.as_str()), "{g}");
            assert_eq!(gguf_name(&h, gemma).as_deref(), Some(g), "{h}");
        }
        // The same GGUF name means the norm after attention in a pre-norm family.
        assert_eq!(
            hf_name("blk.2.ffn_norm.weight", Architecture::Qwen3).as_deref(),
            Some("model.layers.2.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.2.post_ffw_norm.weight", Architecture::Qwen3),
            None
        );
    }

    #[test]
    fn q_and_k_projections_are_recognised() {
        assert_eq!(
            rope_projection("model.layers.4.self_attn.q_proj.weight"),
            Some(RopeProjection::Query)
        );
        assert_eq!(
            rope_projection("model.layers.4.self_attn.k_proj.bias"),
            Some(RopeProjection::Key)
        );
        assert_eq!(
            rope_projection("model.layers.4.self_attn.v_proj.weight"),
            None
        );
    }

    fn rows(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.select(1, 0).contiguous()).unwrap()
    }

    #[test]
    fn permutation_interleaves_the_two_halves_of_each_head() {
        // Two heads of head_dim 4, each row filled with its own index.
        let w = Tensor::arange(8, (tch::Kind::Int64, tch::Device::Cpu))
            .unsqueeze(1)
            .repeat([1, 3]);
        let permuted = permute_rope_rows(&w, 2);
        // HF rows (0, 2) are a rotate-half pair; llama.cpp puts them next to each other.
        assert_eq!(rows(&permuted), [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(
            rows(&unpermute_rope_rows(&permuted, 2)),
            (0..8).collect::<Vec<_>>()
        );
        // A bias (rank 1) is reordered the same way.
        let bias = Tensor::arange(8, (tch::Kind::Int64, tch::Device::Cpu));
        let back = unpermute_rope_rows(&permute_rope_rows(&bias, 2), 2);
        assert!(back.equal(&bias));
    }
}

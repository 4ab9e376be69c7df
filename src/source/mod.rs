//! Where weights come from, behind one narrow trait: a config plus lazily read named tensors.
//!
//! Implementations: safetensors directories and files (memory-mapped, sharded or not), Hugging Face
//! Hub revisions and the local HF cache, GGUF files (dequantised to f32), and random initialisation
//! generated on the fly. Tensor names are always the Hugging Face ones (see `names`).

pub mod branch;
pub mod export;
pub mod gguf;
pub mod gguf_file;
pub mod gguf_quant;
pub mod gguf_tokenizer;
pub mod gpt_neox_names;
pub mod hub;
pub mod init;
pub mod names;
pub mod safetensors;
pub mod spec;

use std::path::PathBuf;

use serde::Serialize;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};

pub use spec::{open_source, open_source_with, SourceSpec};

/// What a tensor is, known without reading its data.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    /// Hugging Face name, e.g. `model.layers.3.self_attn.k_proj.weight`.
    pub name: String,
    /// Shape in PyTorch order (`[out_features, in_features]` for linear weights).
    pub shape: Vec<i64>,
    /// Storage dtype as the file names it (`F32`, `BF16`, `Q4_1`, …).
    pub dtype: String,
    /// Bytes the tensor occupies in storage.
    pub bytes: u64,
}

/// Where a source's weights were resolved from, recorded with every result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Provenance {
    /// The source string as the user wrote it.
    pub spec: String,
    /// `safetensors`, `hub`, `hf-cache`, `gguf` or `init`.
    pub kind: String,
    /// Local files the tensors are read from (empty for random init).
    pub files: Vec<PathBuf>,
    /// Resolved commit sha for Hub revisions.
    pub revision_sha: Option<String>,
    /// Seed and scheme for random init.
    pub init: Option<String>,
}

/// A checkpoint: its config and its tensors, read one at a time.
///
/// `read` returns an owned f32 CPU tensor in Hugging Face layout; implementations never read more
/// of the file than that tensor.
pub trait WeightSource {
    fn config(&self) -> &ModelConfig;
    fn provenance(&self) -> &Provenance;
    /// All tensors, in a stable order, without reading their data.
    fn tensor_infos(&self) -> Vec<TensorInfo>;
    fn contains(&self, name: &str) -> bool;
    /// Reads one tensor as f32 on the CPU.
    fn read(&self, name: &str) -> SourceResult<Tensor>;
    /// The tokenizer that belongs to this checkpoint, when the source carries one.
    fn tokenizer_path(&self) -> Option<PathBuf> {
        None
    }
    /// A tokenizer built from the source itself (GGUF metadata) rather than a tokenizer.json file.
    fn embedded_tokenizer(&self) -> Option<SourceResult<tokenizers::Tokenizer>> {
        None
    }

    /// Reads one tensor and checks its shape against what the config implies.
    fn read_shaped(&self, name: &str, expected: &[i64]) -> SourceResult<Tensor> {
        let tensor = self.read(name)?;
        if tensor.size() != expected {
            return Err(SourceError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: tensor.size(),
            });
        }
        Ok(tensor)
    }
}

/// Expected shape of every tensor a model of this config needs, in Hugging Face names.
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<i64>)> {
    use crate::config::{MlpKind, NormKind, NormPlacement, QkNorm};
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for layer in 0..config.num_hidden_layers {
        let p = format!("model.layers.{layer}");
        let mut push = |suffix: &str, shape: Vec<i64>| out.push((format!("{p}.{suffix}"), shape));
        push("self_attn.q_proj.weight", vec![q, h]);
        push("self_attn.k_proj.weight", vec![kv, h]);
        push("self_attn.v_proj.weight", vec![kv, h]);
        push("self_attn.o_proj.weight", vec![h, q]);
        let arch = config.architecture;
        match arch.mlp_kind() {
            MlpKind::SwiGlu | MlpKind::GeGlu => push("mlp.gate_proj.weight", vec![i, h]),
            MlpKind::Gelu => {
                push("mlp.up_proj.bias", vec![i]);
                push("mlp.down_proj.bias", vec![h]);
            }
        }
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
        push("post_attention_layernorm.weight", vec![h]);
        if arch.qkv_bias() {
            push("self_attn.q_proj.bias", vec![q]);
            push("self_attn.k_proj.bias", vec![kv]);
            push("self_attn.v_proj.bias", vec![kv]);
        }
        if arch.output_bias() {
            push("self_attn.o_proj.bias", vec![h]);
        }
        if arch.norm_kind() == NormKind::Layer {
            push("post_attention_layernorm.bias", vec![h]);
            push("input_layernorm.bias", vec![h]);
        }
        match arch.qk_norm() {
            QkNorm::None => {}
            QkNorm::WholeVector => {
                push("self_attn.q_norm.weight", vec![q]);
                push("self_attn.k_norm.weight", vec![kv]);
            }
            QkNorm::PerHead => {
                push("self_attn.q_norm.weight", vec![config.head_dim]);
                push("self_attn.k_norm.weight", vec![config.head_dim]);
            }
        }
        match arch.norm_placement() {
            NormPlacement::Post => push("post_feedforward_layernorm.weight", vec![h]),
            NormPlacement::Pre => push("input_layernorm.weight", vec![h]),
            NormPlacement::Sandwich => {
                push("input_layernorm.weight", vec![h]);
                push("pre_feedforward_layernorm.weight", vec![h]);
                push("post_feedforward_layernorm.weight", vec![h]);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if config.architecture.norm_kind() == NormKind::Layer {
        out.push(("model.norm.bias".to_string(), vec![h]));
    }
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

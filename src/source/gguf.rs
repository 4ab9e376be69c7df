//! GGUF checkpoints (llama.cpp) as a weight source: the config comes from the `{arch}.*` metadata,
//! tensors are dequantised to f32 one at a time and handed out under Hugging Face names and layout
//! (reversed dims; Llama's Q/K rows back in rotate-half order; Gemma's norm gains back to
//! `weight − 1`), and the tokenizer is rebuilt from `tokenizer.ggml.*`. Families: `llama`
//! (also Mistral), `qwen2`, `qwen3`, `gemma3`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tch::Tensor;

use super::gguf_file::{GgufFile, GgufValue};
use super::gguf_tokenizer::tokenizer_from_gguf;
use super::names::{hf_name, rope_projection, unpermute_rope_rows, RopeProjection};
use super::{Provenance, TensorInfo, WeightSource};
use crate::config::{Architecture, ModelConfig};
use crate::error::{SourceError, SourceResult};

/// RoPE base when `{arch}.rope.freq_base` is absent (llama.cpp's default).
const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// Context length when `{arch}.context_length` is absent (as for config.json files).
const DEFAULT_CONTEXT_LENGTH: i64 = 2048;

pub struct GgufSource {
    file: GgufFile,
    config: ModelConfig,
    /// Hugging Face name → index into `file.tensors`, sorted for a stable listing.
    index: BTreeMap<String, usize>,
    provenance: Provenance,
}

impl GgufSource {
    /// Maps the file and reads its header and config; no tensor data.
    pub fn open(path: &Path, spec: &str) -> SourceResult<Self> {
        let file = GgufFile::open(path)?;
        let config = config_from_metadata(&file)?;
        let mut index = BTreeMap::new();
        for (i, tensor) in file.tensors.iter().enumerate() {
            let name =
                hf_name(&tensor.name, config.architecture).unwrap_or_else(|| tensor.name.clone());
            if let Some(previous) = index.insert(name.clone(), i) {
                return Err(SourceError::malformed(
                    path,
                    format!(
                        "tensors {} and {} both map to {name}",
                        file.tensors[previous].name, tensor.name
                    ),
                ));
            }
        }
        let provenance = Provenance {
            spec: spec.to_string(),
            kind: "gguf".into(),
            files: vec![path.to_path_buf()],
            ..Default::default()
        };
        Ok(GgufSource {
            file,
            config,
            index,
            provenance,
        })
    }

    /// The parsed container, for callers that need GGUF names or metadata.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.index
            .iter()
            .map(|(name, &i)| {
                let t = &self.file.tensors[i];
                TensorInfo {
                    name: name.clone(),
                    shape: t.shape(),
                    dtype: t.ggml_type.name().to_string(),
                    bytes: t.bytes,
                }
            })
            .collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn read(&self, name: &str) -> SourceResult<Tensor> {
        let info = match self.index.get(name) {
            Some(&i) => &self.file.tensors[i],
            None => {
                return Err(SourceError::MissingTensor {
                    name: name.to_string(),
                    location: self.file.path().display().to_string(),
                })
            }
        };
        let tensor = self.file.read_tensor(info).map_err(|e| match e {
            SourceError::UnsupportedDtype {
                name: gguf,
                dtype,
                path,
            } => SourceError::UnsupportedDtype {
                name: format!("{name} ({gguf})"),
                dtype,
                path,
            },
            other => other,
        })?;
        if self.config.architecture.norm_weight_offset() != 0.0 && name.ends_with("norm.weight") {
            // llama.cpp stores Gemma's whole gain (1 + w); HF layout, and the forward, keep w.
            return Ok(tensor - self.config.architecture.norm_weight_offset());
        }
        if self.config.architecture != Architecture::Llama {
            return Ok(tensor);
        }
        let shape = tensor.size();
        let heads = match rope_projection(name) {
            None => return Ok(tensor),
            Some(RopeProjection::Query) => self.config.num_attention_heads,
            Some(RopeProjection::Key) => self.config.num_key_value_heads,
        };
        let rows = heads * self.config.head_dim;
        if shape[0] != rows {
            let mut expected = shape.clone();
            expected[0] = rows;
            return Err(SourceError::ShapeMismatch {
                name: name.to_string(),
                expected,
                actual: shape,
            });
        }
        Ok(unpermute_rope_rows(&tensor, heads))
    }

    fn embedded_tokenizer(&self) -> Option<SourceResult<tokenizers::Tokenizer>> {
        self.file
            .get("tokenizer.ggml.model")
            .map(|_| tokenizer_from_gguf(&self.file))
    }
}

/// The families a GGUF file may declare (`general.architecture`), as ckpt-scan's architectures.
/// Mistral checkpoints are converted as `llama`.
const FAMILIES: [(&str, Architecture); 4] = [
    ("llama", Architecture::Llama),
    ("qwen2", Architecture::Qwen2),
    ("qwen3", Architecture::Qwen3),
    ("gemma3", Architecture::Gemma3),
];

/// Gemma-3-27B's layer count: llama.cpp scales its scores by (hidden / heads)^−½ (its
/// `query_pre_attn_scalar`, 168), every other size by head_dim^−½. GGUF stores neither.
const GEMMA3_27B_LAYERS: i64 = 62;

/// The ckpt-scan architecture of a GGUF `general.architecture` value.
pub fn family(gguf_architecture: &str) -> Option<Architecture> {
    FAMILIES
        .iter()
        .find(|(name, _)| *name == gguf_architecture)
        .map(|&(_, a)| a)
}

/// The model config a GGUF file's metadata describes: the metadata is spelled as the family's
/// `config.json` (as transformers' GGUF loader does) and read by [`ModelConfig::from_json`], so
/// every family default (Gemma-3's window pattern and local RoPE base, tied embeddings) is the
/// one a Hugging Face checkpoint of that family gets.
pub fn config_from_metadata(file: &GgufFile) -> SourceResult<ModelConfig> {
    let path = file.path();
    let bad = |message: String| SourceError::malformed(path, message);
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| bad("no general.architecture string in the metadata".into()))?;
    let architecture = family(arch).ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
        SourceError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: format!(
                "{arch} (GGUF general.architecture; supported: {})",
                known.join(", ")
            ),
        }
    })?;
    let key = |k: &str| format!("{arch}.{k}");
    let opt_int = |k: &str| -> SourceResult<Option<i64>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| bad(format!("{} is not an integer: {v:?}", key(k)))),
        }
    };
    let int = |k: &str| -> SourceResult<i64> {
        opt_int(k)?.ok_or_else(|| bad(format!("missing metadata key {}", key(k))))
    };
    let opt_float = |k: &str| -> SourceResult<Option<f64>> {
        match file.get(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(format!("{} is not a number: {v:?}", key(k)))),
        }
    };

    let hidden_size = int("embedding_length")?;
    let num_attention_heads = int("attention.head_count")?;
    let num_key_value_heads = opt_int("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = match opt_int("attention.key_length")? {
        Some(d) => d,
        None if num_attention_heads > 0 => hidden_size / num_attention_heads,
        None => 0,
    };
    if let Some(value_length) = opt_int("attention.value_length")? {
        if value_length != head_dim {
            return Err(bad(format!(
                "{} = {value_length} differs from the key length {head_dim}; not supported",
                key("attention.value_length")
            )));
        }
    }
    if let Some(rotary) = opt_int("rope.dimension_count")? {
        if rotary != head_dim {
            return Err(bad(format!(
                "{} = {rotary} but head_dim is {head_dim}: partial rotary embeddings are not supported",
                key("rope.dimension_count")
            )));
        }
    }
    if let Some(scaling) = file.get(&key("rope.scaling.type")) {
        if scaling.as_str() != Some("none") {
            return Err(bad(format!(
                "{} = {scaling:?}: RoPE scaling is not supported",
                key("rope.scaling.type")
            )));
        }
    }
    // llama.cpp stores Llama 3.1's RoPE scaling not as a scaling type but as this per-frequency
    // divisor table; running without it would be plain RoPE, silently wrong past short contexts.
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(bad(
            "has rope_freqs.weight (per-frequency RoPE factors, llama.cpp's form of Llama 3.1 \
             scaling): not supported; load the Hugging Face checkpoint instead"
                .into(),
        ));
    }
    let rms_norm_eps = opt_float("attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
        bad(format!(
            "missing metadata key {}",
            key("attention.layer_norm_rms_epsilon")
        ))
    })?;
    let vocab_size = match file.tensor("token_embd.weight") {
        Some(embed) if embed.dims.len() == 2 => embed.dims[1] as i64,
        _ => match file
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
        {
            Some(tokens) => tokens.len() as i64,
            None => int("vocab_size")?,
        },
    };
    let token_id = |k: &str| {
        file.get(&format!("tokenizer.ggml.{k}"))
            .and_then(GgufValue::as_i64)
    };
    let num_hidden_layers = int("block_count")?;
    let mut config = json!({
        "architectures": [architecture.hf_class()],
        "model_type": architecture.model_type(),
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": opt_float("rope.freq_base")?.unwrap_or(DEFAULT_ROPE_THETA),
        "max_position_embeddings": opt_int("context_length")?.unwrap_or(DEFAULT_CONTEXT_LENGTH),
        // llama.cpp's converter drops lm_head when it equals the embedding.
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "pad_token_id": token_id("padding_token_id"),
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
    });
    if architecture == Architecture::Gemma3 {
        let fields = config.as_object_mut().expect("built as an object");
        if let Some(window) = opt_int("attention.sliding_window")? {
            fields.insert("sliding_window".into(), window.into());
        }
        let scalar = if num_hidden_layers == GEMMA3_27B_LAYERS && num_attention_heads > 0 {
            hidden_size / num_attention_heads
        } else {
            head_dim
        };
        fields.insert("query_pre_attn_scalar".into(), scalar.into());
    }
    ModelConfig::from_json(&config, path)
}

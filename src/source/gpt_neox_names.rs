//! GPT-NeoX (Pythia) checkpoints under the tensor names the model reads (`model.layers.N.self_attn.
//! q_proj.weight`, …), as `names.rs` does for GGUF.
//!
//! transformers' `GPTNeoXAttention` views the fused `query_key_value` output as
//! `[…, heads, 3 · head_dim]` and chunks the last dimension, so the fused weight's rows are per
//! head `[q_h; k_h; v_h]`: head h's query rows are `3·h·d .. 3·h·d + d`, its key rows the next d,
//! its value rows the d after. The bias is laid out the same way.

use std::path::PathBuf;

use tch::Tensor;

use crate::error::{SourceError, SourceResult};
use crate::model::config::ModelConfig;
use crate::source::{expected_tensors, Provenance, TensorInfo, WeightSource};

/// A GPT-NeoX source read under the common names.
pub struct NeoxNames {
    inner: Box<dyn WeightSource>,
}

/// Whether `source` holds GPT-NeoX's own tensor names (an init source already uses the common ones).
pub fn has_neox_names(source: &dyn WeightSource) -> bool {
    source.contains("gpt_neox.embed_in.weight")
}

impl NeoxNames {
    pub fn new(inner: Box<dyn WeightSource>) -> Self {
        NeoxNames { inner }
    }
}

/// Which third of the fused projection a name reads.
#[derive(Clone, Copy)]
enum Fused {
    Query = 0,
    Key = 1,
    Value = 2,
}

/// Where a common name lives in the checkpoint: a tensor as it is, or one third of the fused QKV.
enum Stored {
    Whole(String),
    Fused { name: String, part: Fused },
}

/// The checkpoint tensor behind common name `name`, `None` for a name GPT-NeoX does not have.
fn stored(name: &str) -> Option<Stored> {
    let whole = |n: String| Some(Stored::Whole(n));
    match name {
        "model.embed_tokens.weight" => return whole("gpt_neox.embed_in.weight".into()),
        "lm_head.weight" => return whole("embed_out.weight".into()),
        "model.norm.weight" => return whole("gpt_neox.final_layer_norm.weight".into()),
        "model.norm.bias" => return whole("gpt_neox.final_layer_norm.bias".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, stem) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let prefix = format!("gpt_neox.layers.{layer}");
    let (module, suffix) = stem.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let fused = |part| {
        Some(Stored::Fused {
            name: format!("{prefix}.attention.query_key_value.{suffix}"),
            part,
        })
    };
    let renamed = match module {
        "self_attn.q_proj" => return fused(Fused::Query),
        "self_attn.k_proj" => return fused(Fused::Key),
        "self_attn.v_proj" => return fused(Fused::Value),
        "self_attn.o_proj" => "attention.dense",
        "mlp.up_proj" => "mlp.dense_h_to_4h",
        "mlp.down_proj" => "mlp.dense_4h_to_h",
        "input_layernorm" | "post_attention_layernorm" => module,
        _ => return None,
    };
    whole(format!("{prefix}.{renamed}.{suffix}"))
}

/// Rows of `part` from a fused `[heads · 3 · head_dim, …]` weight or bias.
fn split_fused(fused: &Tensor, heads: i64, part: Fused) -> Tensor {
    let shape = fused.size();
    let head_dim = shape[0] / (3 * heads);
    let mut view = vec![heads, 3, head_dim];
    view.extend_from_slice(&shape[1..]);
    let mut out = vec![heads * head_dim];
    out.extend_from_slice(&shape[1..]);
    fused
        .reshape(view.as_slice())
        .select(1, part as i64)
        .contiguous()
        .reshape(out.as_slice())
}

impl WeightSource for NeoxNames {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }

    fn provenance(&self) -> &Provenance {
        self.inner.provenance()
    }

    /// The common names of every tensor the model reads, then the checkpoint's others (e.g. the
    /// `attention.masked_bias` buffers old exports carry) as they are named.
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        let stored_infos = self.inner.tensor_infos();
        let find = |name: &str| stored_infos.iter().find(|t| t.name == name);
        let mut used = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (name, shape) in expected_tensors(self.config()) {
            let Some(behind) = stored(&name) else {
                continue;
            };
            let (stored_name, third) = match &behind {
                Stored::Whole(n) => (n.clone(), false),
                Stored::Fused { name, .. } => (name.clone(), true),
            };
            let Some(info) = find(&stored_name) else {
                continue;
            };
            used.insert(stored_name);
            out.push(TensorInfo {
                name,
                shape,
                dtype: info.dtype.clone(),
                bytes: if third { info.bytes / 3 } else { info.bytes },
            });
        }
        out.extend(
            stored_infos
                .iter()
                .filter(|t| !used.contains(&t.name))
                .cloned(),
        );
        out
    }

    fn contains(&self, name: &str) -> bool {
        match stored(name) {
            Some(Stored::Whole(n)) | Some(Stored::Fused { name: n, .. }) => self.inner.contains(&n),
            None => self.inner.contains(name),
        }
    }

    fn read(&self, name: &str) -> SourceResult<Tensor> {
        match stored(name) {
            Some(Stored::Whole(n)) => self.inner.read(&n),
            Some(Stored::Fused { name: n, part }) => {
                let fused = self.inner.read(&n)?;
                let heads = self.config().num_attention_heads;
                if fused.size()[0] != 3 * heads * self.config().head_dim {
                    return Err(SourceError::ShapeMismatch {
                        name: n,
                        expected: vec![3 * heads * self.config().head_dim],
                        actual: fused.size(),
                    });
                }
                Ok(split_fused(&fused, heads, part))
            }
            None => self.inner.read(name),
        }
    }

    fn tokenizer_path(&self) -> Option<PathBuf> {
        self.inner.tokenizer_path()
    }

    fn embedded_tokenizer(&self) -> Option<SourceResult<tokenizers::Tokenizer>> {
        self.inner.embedded_tokenizer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per head, rows `[q; k; v]`: the split takes every third block of head_dim rows.
    #[test]
    fn the_fused_projection_splits_per_head() {
        // 2 heads × 3 parts × head_dim 2 rows, 1 column: row r holds r.
        let fused = Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu)).view([12, 1]);
        let rows = |t: Tensor| Vec::<f32>::try_from(t.view([-1])).unwrap();
        assert_eq!(
            rows(split_fused(&fused, 2, Fused::Query)),
            [0.0, 1.0, 6.0, 7.0]
        );
        assert_eq!(
            rows(split_fused(&fused, 2, Fused::Key)),
            [2.0, 3.0, 8.0, 9.0]
        );
        assert_eq!(
            rows(split_fused(&fused, 2, Fused::Value)),
            [4.0, 5.0, 10.0, 11.0]
        );
        let bias = Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(
            rows(split_fused(&bias, 2, Fused::Key)),
            [2.0, 3.0, 8.0, 9.0]
        );
    }

    #[test]
    fn common_names_map_to_the_checkpoints() {
        let name = |n: &str| match stored(n) {
            Some(Stored::Whole(s)) => s,
            Some(Stored::Fused { name, .. }) => format!("fused {name}"),
            None => "none".into(),
        };
        assert_eq!(
            name("model.embed_tokens.weight"),
            "gpt_neox.embed_in.weight"
        );
        assert_eq!(name("lm_head.weight"), "embed_out.weight");
        assert_eq!(
            name("model.layers.3.self_attn.k_proj.bias"),
            "fused gpt_neox.layers.3.attention.query_key_value.bias"
        );
        assert_eq!(
            name("model.layers.3.self_attn.o_proj.weight"),
            "gpt_neox.layers.3.attention.dense.weight"
        );
        assert_eq!(
            name("model.layers.0.mlp.down_proj.bias"),
            "gpt_neox.layers.0.mlp.dense_4h_to_h.bias"
        );
        assert_eq!(
            name("model.layers.0.input_layernorm.bias"),
            "gpt_neox.layers.0.input_layernorm.bias"
        );
        assert_eq!(name("model.layers.0.mlp.gate_proj.weight"), "none");
    }
}

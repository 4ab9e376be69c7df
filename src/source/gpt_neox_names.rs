//! GPT-NeoX (Pythia) checkpoints under the tensor names the model reads (`model.layers.N.self_attn.
//! q_proj.weight`, …), as `names.rs` does for GGUF.
//!
//! transformers' `GPTNeoXAttention` views the fused `query_key_value` output as
//! `[…, heads, 3 · head_dim]` and chunks the last dimension, so the fused weight's rows are per
//! head `[q_h; k_h; v_h]`: head h's query rows are `3·h·d .. 3·h·d + d`, its key rows the next d,
//! its value rows the d after. The bias is laid out the same way.

use std::cell::RefCell;
use std::path::PathBuf;

use tch::Tensor;

use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};
use crate::source::{expected_tensors, Provenance, TensorInfo, WeightSource};

/// A GPT-NeoX source read under the common names.
pub struct NeoxNames {
    inner: Box<dyn WeightSource>,
    /// The fused tensor read last: a layer's Q, K and V (weights, then biases) are read one after
    /// another, so one read serves all three.
    last_fused: RefCell<Option<(String, Tensor)>>,
}

/// Whether `source` holds GPT-NeoX's own tensor names (an init source already uses the common ones).
pub fn has_neox_names(source: &dyn WeightSource) -> bool {
    source.contains("gpt_neox.embed_in.weight")
}

impl NeoxNames {
    pub fn new(inner: Box<dyn WeightSource>) -> Self {
        NeoxNames {
            inner,
            last_fused: RefCell::new(None),
        }
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

impl NeoxNames {
    /// The fused tensor `name`, from the last read when it was this one.
    fn read_fused(&self, name: &str) -> SourceResult<Tensor> {
        let mut last = self.last_fused.borrow_mut();
        if let Some((held, tensor)) = last.as_ref() {
            if held == name {
                return Ok(tensor.shallow_clone());
            }
        }
        let tensor = self.inner.read(name)?;
        *last = Some((name.to_string(), tensor.shallow_clone()));
        Ok(tensor)
    }
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
                let fused = self.read_fused(&n)?;
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

    /// Counts the reads of a fused weight of Pythia-160M's shape.
    struct CountingSource {
        config: ModelConfig,
        provenance: Provenance,
        reads: std::rc::Rc<std::cell::Cell<usize>>,
    }

    impl WeightSource for CountingSource {
        fn config(&self) -> &ModelConfig {
            &self.config
        }
        fn provenance(&self) -> &Provenance {
            &self.provenance
        }
        fn tensor_infos(&self) -> Vec<TensorInfo> {
            Vec::new()
        }
        fn contains(&self, _name: &str) -> bool {
            true
        }
        fn read(&self, _name: &str) -> SourceResult<Tensor> {
            self.reads.set(self.reads.get() + 1);
            Ok(Tensor::arange(2304 * 768, (tch::Kind::Float, tch::Device::Cpu)).view([2304, 768]))
        }
    }

    /// Q, K and V of a layer come from one read of the fused tensor; the next layer reads again.
    #[test]
    fn a_layers_three_projections_read_the_fused_tensor_once() {
        let reads = std::rc::Rc::new(std::cell::Cell::new(0));
        let source = NeoxNames::new(Box::new(CountingSource {
            config: crate::config::presets::preset("pythia-160m").unwrap(),
            provenance: Provenance::default(),
            reads: reads.clone(),
        }));
        let read = |n: &str| source.read(n).unwrap();
        let q = read("model.layers.0.self_attn.q_proj.weight");
        let k = read("model.layers.0.self_attn.k_proj.weight");
        let _ = read("model.layers.0.self_attn.v_proj.weight");
        assert_eq!(reads.get(), 1);
        // Rows 64..128 of the fused weight are head 0's keys: each entry 64 rows of 768 further on.
        assert!(k
            .narrow(0, 0, 64)
            .equal(&(q.narrow(0, 0, 64) + 64.0 * 768.0)));
        let _ = read("model.layers.1.self_attn.q_proj.weight");
        assert_eq!(reads.get(), 2);
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

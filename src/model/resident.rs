//! A model held whole in memory, for generation and repeated forwards on small models.
//! (Analyses use the layer-streamed forward instead, which holds one layer at a time.)

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::capture::NoCapture;
use crate::config::ModelConfig;
use crate::model::attention::{AttentionStep, CaptureContext};
use crate::model::attention_edit::AttentionEdit;
use crate::model::forward::embed_tokens;
use crate::model::kv_cache::KvCache;
use crate::model::layer::DecoderLayer;
use crate::model::mask::Visibility;
use crate::model::norm::Norm;
use crate::model::rope::ModelRope;
use crate::model::weights::{load_norm, load_tensor, LoadOptions};
use crate::source::WeightSource;

/// What a forward call runs on top of: the KV cache it extends, the visibility of padded or cached
/// tokens, an attention edit. The default is a plain causal forward of whole sequences.
#[derive(Default)]
pub struct ForwardState<'a> {
    pub cache: Option<&'a mut KvCache>,
    pub visibility: Option<&'a Visibility>,
    pub edit: Option<&'a dyn AttentionEdit>,
}

pub struct ResidentModel {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Norm,
    pub lm_head: Tensor,
    options: LoadOptions,
}

impl ResidentModel {
    pub fn load(source: &dyn WeightSource, options: &LoadOptions) -> Result<Self> {
        let config = source.config().clone();
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = load_tensor(source, "model.embed_tokens.weight", &[v, h], options)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(source, i, &config, options))
            .collect::<Result<Vec<_>>>()?;
        let norm = load_norm(source, "model.norm", h, &config, options)?;
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            load_tensor(source, "lm_head.weight", &[v, h], options)?
        };
        Ok(ResidentModel {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            options: *options,
        })
    }

    /// `ids`: `[batch, seq]` int64 → f32 logits `[batch, seq, vocab]`.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward(ids, &mut ForwardState::default())
    }

    /// Runs new tokens `ids` `[batch, seq]` on top of `state.cache` (appending to it) →
    /// f32 logits `[batch, seq, vocab]`.
    pub fn forward(&self, ids: &Tensor, state: &mut ForwardState) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        self.forward_logits(ids, state)
    }

    /// Runs new tokens `ids` `[batch, seq]` on top of `state.cache` (appending to it) → the final
    /// normed hidden states `[batch, seq, hidden]` in the model's dtype, before the LM head. With
    /// [`ResidentModel::head`] on the rows a caller needs, this equals `forward` on those rows.
    pub fn hidden_states(&self, ids: &Tensor, state: &mut ForwardState) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        self.forward_hidden(ids, state)
    }

    /// The LM head: hidden states `[..., hidden]` → f32 logits `[..., vocab]`. Scoring and
    /// generation need only a few positions' logits; the head over a 49k vocabulary at every
    /// position is a fifth of SmolLM2's compute and by far its largest tensor.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        let _no_grad = tch::no_grad_guard();
        self.head_logits(hidden)
    }

    /// `logits` with autograd recording, for training (`train::trainer`); the parameters must
    /// have `requires_grad` set (see [`ResidentModel::parameters`]).
    pub fn logits_with_grad(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_logits(ids, &mut ForwardState::default())
    }

    /// Every weight tensor under its Hugging Face name (embedding, layers, final norm, head); a
    /// tied head is listed once, as the embedding.
    pub fn parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, layer) in self.layers.iter().enumerate() {
            let prefix = format!("model.layers.{i}");
            let attn = &layer.self_attn;
            let named: Vec<(&str, Option<&Tensor>)> = vec![
                ("self_attn.q_proj.weight", Some(&attn.q_proj)),
                ("self_attn.k_proj.weight", Some(&attn.k_proj)),
                ("self_attn.v_proj.weight", Some(&attn.v_proj)),
                ("self_attn.o_proj.weight", Some(&attn.o_proj)),
                ("self_attn.q_proj.bias", attn.q_bias.as_ref()),
                ("self_attn.k_proj.bias", attn.k_bias.as_ref()),
                ("self_attn.v_proj.bias", attn.v_bias.as_ref()),
                ("self_attn.o_proj.bias", attn.o_bias.as_ref()),
                (
                    "self_attn.q_norm.weight",
                    attn.q_norm.as_ref().map(|n| &n.weight),
                ),
                (
                    "self_attn.k_norm.weight",
                    attn.k_norm.as_ref().map(|n| &n.weight),
                ),
                ("mlp.gate_proj.weight", layer.mlp.gate_proj.as_ref()),
                ("mlp.up_proj.weight", Some(&layer.mlp.up_proj)),
                ("mlp.down_proj.weight", Some(&layer.mlp.down_proj)),
                ("mlp.up_proj.bias", layer.mlp.up_bias.as_ref()),
                ("mlp.down_proj.bias", layer.mlp.down_bias.as_ref()),
                (
                    "input_layernorm.bias",
                    layer.input_layernorm.as_ref().and_then(|n| n.bias.as_ref()),
                ),
                (
                    "post_attention_layernorm.bias",
                    layer.post_attention_layernorm.bias.as_ref(),
                ),
                (
                    "input_layernorm.weight",
                    layer.input_layernorm.as_ref().map(|n| &n.weight),
                ),
                (
                    "post_attention_layernorm.weight",
                    Some(&layer.post_attention_layernorm.weight),
                ),
                (
                    "post_feedforward_layernorm.weight",
                    layer.post_feedforward_layernorm.as_ref().map(|n| &n.weight),
                ),
            ];
            for (suffix, tensor) in named {
                if let Some(tensor) = tensor {
                    out.push((format!("{prefix}.{suffix}"), tensor));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), &self.norm.weight));
        if let Some(bias) = &self.norm.bias {
            out.push(("model.norm.bias".to_string(), bias));
        }
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), &self.lm_head));
        }
        out
    }

    /// The shared forward of `forward` and `logits_with_grad`.
    fn forward_logits(&self, ids: &Tensor, state: &mut ForwardState) -> Result<Tensor> {
        Ok(self.head_logits(&self.forward_hidden(ids, state)?))
    }

    fn head_logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .linear::<Tensor>(&self.lm_head, None)
            .to_kind(Kind::Float)
    }

    /// The residual stream's start `[batch, seq, hidden]` for `ids` on the model's device.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        embed_tokens(&self.embed_tokens, ids, &self.config)
    }

    /// Embedding, layers and final norm.
    fn forward_hidden(&self, ids: &Tensor, state: &mut ForwardState) -> Result<Tensor> {
        let seq = ids.size()[1];
        let past = state.cache.as_ref().map_or(0, |c| c.len());
        let rope = ModelRope::for_config(&self.config, past + seq, self.options.device);
        let mut x = self.embed(&ids.to_device(self.options.device));
        let mut sink = NoCapture;
        let mut caches = state.cache.as_deref_mut().map(|c| c.layers.iter_mut());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut ctx = CaptureContext {
                layer: i as i64,
                batch_index: 0,
                sink: &mut sink,
            };
            let mut step = AttentionStep {
                rope: &rope,
                visibility: state.visibility,
                cache: caches.as_mut().and_then(|c| c.next()),
                edit: state.edit,
            };
            x = layer.forward(&x, &mut step, &mut ctx)?;
        }
        Ok(self.norm.forward(&x))
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Greedy continuation of one prompt (recomputes the prefix each step; no KV cache yet).
    pub fn greedy(&self, prompt: &[i64], new_tokens: usize, stop: Option<i64>) -> Result<Vec<i64>> {
        let mut ids = prompt.to_vec();
        for _ in 0..new_tokens {
            let input = Tensor::from_slice(&ids).unsqueeze(0);
            let logits = self.logits(&input)?;
            let next = i64::try_from(logits.get(0).get(ids.len() as i64 - 1).argmax(-1, false))?;
            ids.push(next);
            if Some(next) == stop {
                break;
            }
        }
        Ok(ids[prompt.len()..].to_vec())
    }
}

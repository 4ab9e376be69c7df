//! One decoder block, in the three norm placements ckpt-scan supports (pre-norm: Llama, Qwen2,
//! Qwen3; post-norm: OLMo-2; both, "sandwich": Gemma-3).
//!
//! The checkpoints' norm names mean different things: in OLMo-2 `post_attention_layernorm` normalises
//! the attention *output* before the residual add; in Llama it normalises the residual stream
//! *before* the MLP. The struct keeps the checkpoint names and `forward` applies each layout.

use anyhow::Result;
use tch::Tensor;

use crate::config::{ModelConfig, NormPlacement};
use crate::model::attention::{Attention, AttentionStep, CaptureContext};
use crate::model::mlp::Mlp;
use crate::model::norm::Norm;
use crate::model::weights::{LayerWeights, LoadOptions};
use crate::source::WeightSource;

pub struct DecoderLayer {
    pub placement: NormPlacement,
    /// GPT-NeoX: `x + attn(input_layernorm x) + mlp(post_attention_layernorm x)`.
    pub parallel_residual: bool,
    pub self_attn: Attention,
    pub mlp: Mlp,
    /// Pre-norm and sandwich.
    pub input_layernorm: Option<Norm>,
    pub post_attention_layernorm: Norm,
    /// Sandwich only: the residual stream's norm before the MLP.
    pub pre_feedforward_layernorm: Option<Norm>,
    /// Post-norm and sandwich.
    pub post_feedforward_layernorm: Option<Norm>,
}

impl DecoderLayer {
    /// Reads `model.layers.{layer}.*` from the source.
    pub fn load(
        source: &dyn WeightSource,
        layer: i64,
        config: &ModelConfig,
        options: &LoadOptions,
    ) -> Result<Self> {
        let mut w = LayerWeights {
            source,
            prefix: format!("model.layers.{layer}"),
            options: *options,
        };
        let self_attn = Attention::load(&mut w, config, layer)?;
        let mlp = Mlp::load(&mut w, config)?;
        let post_attention_layernorm = w.block_norm("post_attention_layernorm", config)?;
        let placement = config.architecture.norm_placement();
        let mut norm = |stem: &str| w.block_norm(stem, config).map(Some);
        let (input_layernorm, pre_feedforward_layernorm, post_feedforward_layernorm) =
            match placement {
                NormPlacement::Post => (None, None, norm("post_feedforward_layernorm")?),
                NormPlacement::Pre => (norm("input_layernorm")?, None, None),
                NormPlacement::Sandwich => (
                    norm("input_layernorm")?,
                    norm("pre_feedforward_layernorm")?,
                    norm("post_feedforward_layernorm")?,
                ),
            };
        Ok(DecoderLayer {
            placement,
            parallel_residual: config.parallel_residual,
            self_attn,
            mlp,
            input_layernorm,
            post_attention_layernorm,
            pre_feedforward_layernorm,
            post_feedforward_layernorm,
        })
    }

    /// `x`: `[batch, seq, hidden]` residual stream → the next layer's residual stream.
    pub fn forward(
        &self,
        x: &Tensor,
        step: &mut AttentionStep,
        ctx: &mut CaptureContext,
    ) -> Result<Tensor> {
        match self.placement {
            NormPlacement::Post => {
                // The attention input is the raw residual stream: OLMo-2 has no input norm.
                ctx.sink.attention_input(ctx.layer, ctx.batch_index, x)?;
                let attn = self.self_attn.forward(x, step, ctx)?;
                let h = x + self.post_attention_layernorm.forward(&attn);
                let ff = self.mlp.forward(&h);
                let post_ff = self
                    .post_feedforward_layernorm
                    .as_ref()
                    .expect("post-norm layer");
                Ok(&h + post_ff.forward(&ff))
            }
            NormPlacement::Pre => {
                let input_norm = self.input_layernorm.as_ref().expect("pre-norm layer");
                let normed = input_norm.forward(x);
                ctx.sink
                    .attention_input(ctx.layer, ctx.batch_index, &normed)?;
                let attn = self.self_attn.forward(&normed, step, ctx)?;
                if self.parallel_residual {
                    // The MLP reads the block's input; summed in transformers' order.
                    let ff = self.mlp.forward(&self.post_attention_layernorm.forward(x));
                    return Ok(ff + attn + x);
                }
                let h = x + attn;
                let ff = self.mlp.forward(&self.post_attention_layernorm.forward(&h));
                Ok(&h + ff)
            }
            NormPlacement::Sandwich => {
                let normed = sandwich_norm(&self.input_layernorm).forward(x);
                ctx.sink
                    .attention_input(ctx.layer, ctx.batch_index, &normed)?;
                let attn = self.self_attn.forward(&normed, step, ctx)?;
                let h = x + self.post_attention_layernorm.forward(&attn);
                let ff = self
                    .mlp
                    .forward(&sandwich_norm(&self.pre_feedforward_layernorm).forward(&h));
                Ok(&h + sandwich_norm(&self.post_feedforward_layernorm).forward(&ff))
            }
        }
    }
}

fn sandwich_norm(norm: &Option<Norm>) -> &Norm {
    norm.as_ref().expect("a sandwich layer has all four norms")
}

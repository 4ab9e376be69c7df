//! The feed-forward: SwiGLU `down_proj(silu(gate_proj x) * up_proj x)` without biases, Gemma's
//! GeGLU (the same with tanh-approximated GELU), or GPT-NeoX's `down_proj(gelu(up_proj x + b₁)) + b₂`
//! with exact (erf) GELU.

use anyhow::Result;
use tch::Tensor;

use crate::config::{MlpKind, ModelConfig};
use crate::model::weights::LayerWeights;

pub struct Mlp {
    /// SwiGLU and GeGLU only.
    pub gate_proj: Option<Tensor>,
    /// The gate's activation: `silu`, or GELU's tanh approximation (GeGLU).
    pub gate_tanh_gelu: bool,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
    /// GELU only (GPT-NeoX's `dense_h_to_4h.bias`, `dense_4h_to_h.bias`).
    pub up_bias: Option<Tensor>,
    pub down_bias: Option<Tensor>,
}

impl Mlp {
    pub fn load(w: &mut LayerWeights, config: &ModelConfig) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let kind = config.architecture.mlp_kind();
        // Read in the checkpoint's order (gate, up, down), so a bad shape names the first tensor.
        let gate_proj = match kind {
            MlpKind::SwiGlu | MlpKind::GeGlu => Some(w.linear("mlp.gate_proj.weight", i, h)?),
            MlpKind::Gelu => None,
        };
        let up_proj = w.linear("mlp.up_proj.weight", i, h)?;
        let down_proj = w.linear("mlp.down_proj.weight", h, i)?;
        let (up_bias, down_bias) = match kind {
            MlpKind::SwiGlu | MlpKind::GeGlu => (None, None),
            MlpKind::Gelu => (
                Some(w.vector("mlp.up_proj.bias", i)?),
                Some(w.vector("mlp.down_proj.bias", h)?),
            ),
        };
        Ok(Mlp {
            gate_proj,
            gate_tanh_gelu: kind == MlpKind::GeGlu,
            up_proj,
            down_proj,
            up_bias,
            down_bias,
        })
    }

    /// `[..., hidden]` → `[..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let up = x.linear(&self.up_proj, self.up_bias.as_ref());
        let inner = match &self.gate_proj {
            Some(gate) if self.gate_tanh_gelu => x.linear::<Tensor>(gate, None).gelu("tanh") * up,
            Some(gate) => x.linear::<Tensor>(gate, None).silu() * up,
            None => up.gelu("none"),
        };
        inner.linear(&self.down_proj, self.down_bias.as_ref())
    }
}

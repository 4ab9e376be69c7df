//! SwiGLU feed-forward: `down_proj(silu(gate_proj x) * up_proj x)`, no biases.

use anyhow::Result;
use tch::Tensor;

use crate::model::config::ModelConfig;
use crate::model::weights::LayerWeights;

pub struct Mlp {
    pub gate_proj: Tensor,
    pub up_proj: Tensor,
    pub down_proj: Tensor,
}

impl Mlp {
    pub fn load(w: &mut LayerWeights, config: &ModelConfig) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        Ok(Mlp {
            gate_proj: w.linear("mlp.gate_proj.weight", i, h)?,
            up_proj: w.linear("mlp.up_proj.weight", i, h)?,
            down_proj: w.linear("mlp.down_proj.weight", h, i)?,
        })
    }

    /// `[..., hidden]` → `[..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let gate = x.linear::<Tensor>(&self.gate_proj, None).silu();
        let up = x.linear::<Tensor>(&self.up_proj, None);
        (gate * up).linear::<Tensor>(&self.down_proj, None)
    }
}

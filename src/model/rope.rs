//! Rotary position embedding, "rotate half" layout (dimension j pairs with j + d/2), as in
//! transformers' RoPE for OLMo-2 and Llama, with the frequency variants of `rope_scaling`
//! (config/rope_scaling.rs). Angles are computed in f32 exactly as HF does.

use tch::{Device, Kind, Tensor};

use crate::config::rope_scaling::RopeScaling;
use crate::config::ModelConfig;

/// Precomputed cos/sin tables for positions `0..max_positions`, each `[max_positions, head_dim]` in f32.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The tables `config`'s RoPE gives a forward call over positions `0..max_positions`.
    ///
    /// `max_positions` is also the sequence length `dynamic` scaling sees: transformers takes
    /// `max(position_ids) + 1` of the call, so a table built for the call's longest position
    /// matches it (transformers keeps a grown base for later shorter calls until one falls back
    /// under `max_position_embeddings`; ckpt-scan's calls are independent).
    pub fn for_config(config: &ModelConfig, max_positions: i64, device: Device) -> Self {
        Rope::new(
            config.rotary_dims(),
            config.rope_theta,
            &config.rope_scaling,
            max_positions,
            device,
        )
    }

    pub fn new(
        head_dim: i64,
        theta: f64,
        scaling: &RopeScaling,
        max_positions: i64,
        device: Device,
    ) -> Self {
        let opts = (Kind::Float, device);
        let inv_freq = scaling.inverse_frequencies(head_dim, theta, max_positions, device);
        let positions = Tensor::arange(max_positions, opts);
        let freqs = positions.unsqueeze(1).matmul(&inv_freq.unsqueeze(0));
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        // transformers multiplies cos and sin by the attention factor (YaRN's mscale), so both
        // rotated Q and K carry it and the logits scale by its square.
        let attention_factor = scaling.attention_factor();
        Rope {
            cos: emb.cos() * attention_factor,
            sin: emb.sin() * attention_factor,
        }
    }

    /// Applies RoPE to `x`: `[batch, heads, seq, head_dim]` at positions `offset..offset+seq`.
    /// Computed in f32 and cast back to `x`'s kind (transformers PR #38131).
    pub fn apply(&self, x: &Tensor, offset: i64) -> Tensor {
        let seq = x.size()[2];
        rotate(
            x,
            &self.cos.narrow(0, offset, seq),
            &self.sin.narrow(0, offset, seq),
        )
    }

    /// Applies RoPE to `x`: `[batch, heads, seq, head_dim]` at per-row positions `[batch, seq]` (int64).
    pub fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (batch, seq) = (positions.size()[0], positions.size()[1]);
        let table = |t: &Tensor| {
            t.index_select(0, &positions.reshape([-1]))
                .view([batch, 1, seq, -1])
        };
        rotate(x, &table(&self.cos), &table(&self.sin))
    }

    pub fn max_positions(&self) -> i64 {
        self.cos.size()[0]
    }

    /// The cos table `[max_positions, head_dim]` f32 (attention factor included).
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// The sin table `[max_positions, head_dim]` f32 (attention factor included).
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }
}

/// The tables of every layer of a model: one set for the full-attention layers and, when the
/// windowed layers have a RoPE of their own (OLMo-3's `rope_parameters.sliding_attention`), one
/// for those.
pub struct ModelRope {
    full: Rope,
    /// The windowed layers' tables and which layers those are, when they differ from `full`.
    windowed: Option<(Rope, Vec<bool>)>,
}

impl ModelRope {
    /// The tables for a forward call over positions `0..max_positions` (see [`Rope::for_config`]).
    pub fn for_config(config: &ModelConfig, max_positions: i64, device: Device) -> Self {
        let full = Rope::for_config(config, max_positions, device);
        let windowed = config.sliding_window.as_ref().and_then(|w| {
            let same = w.rope_theta == config.rope_theta && w.rope_scaling == config.rope_scaling;
            (!same).then(|| {
                let tables = Rope::new(
                    config.rotary_dims(),
                    w.rope_theta,
                    &w.rope_scaling,
                    max_positions,
                    device,
                );
                (tables, w.layers.clone())
            })
        });
        ModelRope { full, windowed }
    }

    /// The tables `layer` rotates with.
    pub fn layer(&self, layer: i64) -> &Rope {
        match &self.windowed {
            Some((tables, layers))
                if usize::try_from(layer).is_ok_and(|l| layers.get(l) == Some(&true)) =>
            {
                tables
            }
            _ => &self.full,
        }
    }
}

/// `x·cos + rotate_half(x)·sin` in f32, cast back. Tables narrower than `x` (partial rotary,
/// GPT-NeoX) rotate its first dimensions and pass the rest through, as transformers'
/// `apply_rotary_pos_emb` does with `q[..., :rotary_dim]`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let (width, rotary) = (x.size()[x.dim() - 1], cos.size()[cos.dim() - 1]);
    let x32 = x.to_kind(Kind::Float);
    let rotated = |part: &Tensor| part * cos + rotate_half(part) * sin;
    let out = if rotary == width {
        rotated(&x32)
    } else {
        let pass = x32.narrow(-1, rotary, width - rotary);
        Tensor::cat(&[rotated(&x32.narrow(-1, 0, rotary)), pass], -1)
    };
    out.to_kind(x.kind())
}

/// `cat(-x[d/2:], x[:d/2])` over the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let first = x.narrow(-1, 0, half);
    let second = x.narrow(-1, half, half);
    Tensor::cat(&[&second.neg(), &first], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norms_are_preserved() {
        let rope = Rope::new(8, 10_000.0, &RopeScaling::Default, 16, Device::Cpu);
        tch::manual_seed(0);
        let x = Tensor::randn([1, 2, 16, 8], (Kind::Float, Device::Cpu));
        let y = rope.apply(&x, 0);
        let diff0 = f64::try_from((y.narrow(2, 0, 1) - x.narrow(2, 0, 1)).abs().max()).unwrap();
        assert!(diff0 < 1e-7);
        let norms = |t: &Tensor| {
            t.pow_tensor_scalar(2)
                .sum_dim_intlist(-1, false, Kind::Float)
        };
        let dn = f64::try_from((norms(&y) - norms(&x)).abs().max()).unwrap();
        assert!(dn < 1e-4, "rotation changed a norm by {dn}");
    }

    #[test]
    fn per_row_positions_equal_offsets() {
        let rope = Rope::new(8, 10_000.0, &RopeScaling::Default, 16, Device::Cpu);
        tch::manual_seed(2);
        let x = Tensor::randn([2, 3, 4, 8], (Kind::Float, Device::Cpu));
        let positions = Tensor::from_slice(&[5i64, 6, 7, 8, 0, 1, 2, 3]).view([2, 4]);
        let y = rope.apply_at(&x, &positions);
        assert!(y.get(0).equal(&rope.apply(&x.narrow(0, 0, 1), 5).get(0)));
        assert!(y.get(1).equal(&rope.apply(&x.narrow(0, 1, 1), 0).get(0)));
    }

    #[test]
    fn dot_products_depend_only_on_relative_position() {
        let rope = Rope::new(4, 100.0, &RopeScaling::Default, 32, Device::Cpu);
        let q = Tensor::from_slice(&[0.3f32, -1.0, 0.7, 0.2]).reshape([1, 1, 1, 4]);
        let k = Tensor::from_slice(&[1.0f32, 0.5, -0.4, 0.9]).reshape([1, 1, 1, 4]);
        let dot = |pq: i64, pk: i64| {
            f64::try_from((rope.apply(&q, pq) * rope.apply(&k, pk)).sum(Kind::Float)).unwrap()
        };
        assert!((dot(5, 2) - dot(13, 10)).abs() < 1e-5);
    }
}

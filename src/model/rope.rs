//! Rotary position embedding, "rotate half" layout (dimension j pairs with j + d/2), as in
//! transformers' default RoPE for OLMo-2 and Llama. Angles are computed in f32 exactly as HF does.

use tch::{Device, Kind, Tensor};

/// Precomputed cos/sin tables for positions `0..max_positions`, each `[max_positions, head_dim]` in f32.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(head_dim: i64, theta: f64, max_positions: i64, device: Device) -> Self {
        let opts = (Kind::Float, device);
        // HF: inv_freq = 1 / base ** (arange(0, d, 2) / d), all in f32.
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / head_dim as f64;
        let base = Tensor::from(theta as f32).to_device(device);
        let inv_freq = base.pow(&exponent).reciprocal();
        let positions = Tensor::arange(max_positions, opts);
        let freqs = positions.unsqueeze(1).matmul(&inv_freq.unsqueeze(0));
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Rope {
            cos: emb.cos(),
            sin: emb.sin(),
        }
    }

    /// Applies RoPE to `x`: `[batch, heads, seq, head_dim]` at positions `offset..offset+seq`.
    /// Computed in f32 and cast back to `x`'s kind (transformers PR #38131).
    pub fn apply(&self, x: &Tensor, offset: i64) -> Tensor {
        let seq = x.size()[2];
        let cos = self.cos.narrow(0, offset, seq);
        let sin = self.sin.narrow(0, offset, seq);
        let x32 = x.to_kind(Kind::Float);
        (&x32 * cos + rotate_half(&x32) * sin).to_kind(x.kind())
    }

    /// Applies RoPE to `x`: `[batch, heads, seq, head_dim]` at per-row positions `[batch, seq]` (int64).
    pub fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (batch, seq) = (positions.size()[0], positions.size()[1]);
        let table = |t: &Tensor| {
            t.index_select(0, &positions.reshape([-1]))
                .view([batch, 1, seq, -1])
        };
        let x32 = x.to_kind(Kind::Float);
        (&x32 * table(&self.cos) + rotate_half(&x32) * table(&self.sin)).to_kind(x.kind())
    }

    pub fn max_positions(&self) -> i64 {
        self.cos.size()[0]
    }
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
        let rope = Rope::new(8, 10_000.0, 16, Device::Cpu);
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
        let rope = Rope::new(8, 10_000.0, 16, Device::Cpu);
        tch::manual_seed(2);
        let x = Tensor::randn([2, 3, 4, 8], (Kind::Float, Device::Cpu));
        let positions = Tensor::from_slice(&[5i64, 6, 7, 8, 0, 1, 2, 3]).view([2, 4]);
        let y = rope.apply_at(&x, &positions);
        assert!(y.get(0).equal(&rope.apply(&x.narrow(0, 0, 1), 5).get(0)));
        assert!(y.get(1).equal(&rope.apply(&x.narrow(0, 1, 1), 0).get(0)));
    }

    #[test]
    fn dot_products_depend_only_on_relative_position() {
        let rope = Rope::new(4, 100.0, 32, Device::Cpu);
        let q = Tensor::from_slice(&[0.3f32, -1.0, 0.7, 0.2]).reshape([1, 1, 1, 4]);
        let k = Tensor::from_slice(&[1.0f32, 0.5, -0.4, 0.9]).reshape([1, 1, 1, 4]);
        let dot = |pq: i64, pk: i64| {
            f64::try_from((rope.apply(&q, pq) * rope.apply(&k, pk)).sum(Kind::Float)).unwrap()
        };
        assert!((dot(5, 2) - dot(13, 10)).abs() < 1e-5);
    }
}

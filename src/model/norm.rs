//! RMSNorm and LayerNorm as Hugging Face transformers computes them, including where the cast
//! back happens.

use tch::{Kind, Tensor};

use crate::config::Architecture;

/// RMSNorm: `weight * x / sqrt(mean(x²) + eps)` over the last dimension, with the mean taken in
/// f32. With a bias, LayerNorm (`torch.nn.LayerNorm`, GPT-NeoX): `weight * (x − mean) / sd + bias`.
///
/// OLMo-2 multiplies by the weight *before* casting back to the input dtype (transformers
/// PR #38131); Llama casts first. The two orders agree in f32 and differ in bf16. Gemma stores
/// `gain − 1` and multiplies by `1 + weight` in f32 ([`Norm::weight_offset`]).
pub struct Norm {
    /// As the checkpoint stores it.
    pub weight: Tensor,
    /// Added to `weight` (in f32) before multiplying: 1 for Gemma, else 0.
    pub weight_offset: f64,
    /// LayerNorm's bias; `None`: RMSNorm.
    pub bias: Option<Tensor>,
    pub eps: f64,
    pub multiply_before_cast: bool,
}

impl Norm {
    pub fn new(weight: Tensor, eps: f64, architecture: Architecture) -> Self {
        Norm {
            weight,
            weight_offset: architecture.norm_weight_offset(),
            bias: None,
            eps,
            multiply_before_cast: architecture.norm_multiplies_before_cast(),
        }
    }

    /// A LayerNorm with `weight` and `bias`.
    pub fn layer(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Norm {
            weight,
            weight_offset: 0.0,
            bias: Some(bias),
            eps,
            multiply_before_cast: false,
        }
    }

    /// `x`: `[..., n]` of any float kind; result has `x`'s kind and shape.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(bias) = &self.bias {
            let width = self.weight.size();
            return x.layer_norm(&width, Some(&self.weight), Some(bias), self.eps, false);
        }
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        if self.weight_offset != 0.0 {
            // Gemma: `(x̂ · (1 + w.float())).type_as(x)`.
            ((self.weight.to_kind(Kind::Float) + self.weight_offset) * normed).to_kind(kind)
        } else if self.multiply_before_cast {
            (self.weight.to_kind(Kind::Float) * normed).to_kind(kind)
        } else {
            self.weight.to_kind(kind) * normed.to_kind(kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x = Tensor::from_slice(&[3.0f32, -4.0, 0.0, 5.0]).reshape([1, 4]);
        let norm = Norm::new(
            Tensor::ones([4], (Kind::Float, tch::Device::Cpu)),
            0.0,
            Architecture::Olmo2,
        );
        let y = norm.forward(&x);
        let rms = f64::try_from(y.pow_tensor_scalar(2).mean(Kind::Float).sqrt()).unwrap();
        assert!((rms - 1.0).abs() < 1e-6, "rms {rms}");
        // mean(x²) = 50/4 = 12.5, so y0 = 3 / sqrt(12.5).
        let y0 = f64::try_from(y.get(0).get(0)).unwrap();
        assert!((y0 - 3.0 / 12.5f64.sqrt()).abs() < 1e-6);
    }
}

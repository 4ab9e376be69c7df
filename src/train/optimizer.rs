//! AdamW (Loshchilov & Hutter, decoupled weight decay) as `torch.optim.AdamW` computes it, written
//! with tensor ops so its state can be saved next to a checkpoint and a run resumed exactly; plus
//! global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

use crate::output::atomic::temp_file_in;
use crate::train::config::TrainConfig;

/// OLMo-2 does not decay the token embedding (`decay_embeddings: false`); everything else is.
pub fn decays(name: &str) -> bool {
    name != "model.embed_tokens.weight"
}

/// The moment estimates of one parameter.
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    /// `(name, parameter)`: shallow handles to the model's tensors, updated in place.
    parameters: Vec<(String, Tensor)>,
    moments: Vec<Moments>,
    /// Updates taken so far (the bias corrections use it).
    pub step: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(parameters: Vec<(String, Tensor)>, config: &TrainConfig) -> Self {
        let moments = parameters
            .iter()
            .map(|(_, p)| Moments {
                exp_avg: p.zeros_like(),
                exp_avg_sq: p.zeros_like(),
            })
            .collect();
        AdamW {
            parameters,
            moments,
            step: 0,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.adam_eps,
            weight_decay: config.weight_decay,
        }
    }

    /// Scales all gradients so their joint L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let _no_grad = tch::no_grad_guard();
        let squares: Vec<Tensor> = self
            .parameters
            .iter()
            .map(|(_, p)| p.grad().pow_tensor_scalar(2).sum(Kind::Float))
            .collect();
        let total =
            f64::try_from(Tensor::stack(&squares, 0).sum(Kind::Float).sqrt()).unwrap_or(f64::NAN);
        // torch multiplies by the clamped coefficient unconditionally; 1e-6 guards a zero norm.
        let coefficient = (max_norm / (total + 1e-6)).min(1.0);
        for (_, p) in &self.parameters {
            let _ = p.grad().g_mul_scalar_(coefficient);
        }
        total
    }

    /// One AdamW update with learning rate `lr`, then the gradients are zeroed.
    pub fn step(&mut self, lr: f64) {
        let _no_grad = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let correction1 = 1.0 - self.beta1.powi(t);
        let correction2 = 1.0 - self.beta2.powi(t);
        for ((name, p), m) in self.parameters.iter_mut().zip(&mut self.moments) {
            let mut grad = p.grad();
            if decays(name) {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = m.exp_avg.lerp_(&grad, 1.0 - self.beta1);
            let _ = m.exp_avg_sq.g_mul_scalar_(self.beta2);
            let _ = m
                .exp_avg_sq
                .addcmul_(&grad, &grad.g_mul_scalar(1.0 - self.beta2));
            let denominator = m.exp_avg_sq.sqrt() / correction2.sqrt() + self.eps;
            let _ = p.addcdiv_(&(&m.exp_avg * (-lr / correction1)), &denominator);
            let _ = grad.zero_();
        }
    }

    /// Writes the moments and the step count to a safetensors file (atomically: temp + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> =
            vec![("step".into(), Tensor::from_slice(&[self.step as i64]))];
        for ((name, _), m) in self.parameters.iter().zip(&self.moments) {
            named.push((format!("exp_avg.{name}"), m.exp_avg.shallow_clone()));
            named.push((format!("exp_avg_sq.{name}"), m.exp_avg_sq.shallow_clone()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let tmp = temp_file_in(dir, ".optimizer-", "")
            .with_context(|| format!("{}: cannot create a temp file", dir.display()))?;
        Tensor::write_safetensors(&named, tmp.path())
            .with_context(|| format!("{}: cannot write optimizer state", path.display()))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))?;
        Ok(())
    }

    /// Restores the state `save` wrote; every parameter must be present with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| anyhow!("{}: cannot read optimizer state: {e}", path.display()))?;
        let find = |name: &str| -> Result<&Tensor> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| anyhow!("{}: optimizer state lacks {name}", path.display()))
        };
        self.step = u64::try_from(i64::try_from(find("step")?)?)?;
        for ((name, p), m) in self.parameters.iter().zip(&mut self.moments) {
            for (prefix, target) in [
                ("exp_avg", &mut m.exp_avg),
                ("exp_avg_sq", &mut m.exp_avg_sq),
            ] {
                let saved = find(&format!("{prefix}.{name}"))?;
                if saved.size() != p.size() {
                    bail!(
                        "{}: {prefix}.{name} has shape {:?}, the model {:?}",
                        path.display(),
                        saved.size(),
                        p.size()
                    );
                }
                *target = saved.to_kind(Kind::Float).to_device(p.device());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two updates on a scalar, computed by hand with torch.optim.AdamW's formulas.
    #[test]
    fn matches_hand_computed_adamw_updates() {
        let config = TrainConfig {
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            weight_decay: 0.1,
            ..TrainConfig::test()
        };
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &config);
        let (mut w, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        let lr = 0.1;
        for t in 1..=2 {
            let loss = (&p * &p).sum(Kind::Float); // gradient 2w
            loss.backward();
            opt.step(lr);
            let g = 2.0 * w;
            w *= 1.0 - lr * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.95 * v + 0.05 * g * g;
            let mhat = m / (1.0 - 0.9f64.powi(t));
            let vhat_sqrt = v.sqrt() / (1.0 - 0.95f64.powi(t)).sqrt();
            w -= lr * mhat / (vhat_sqrt + 1e-8);
            let got = f64::try_from(&p.get(0)).unwrap();
            assert!((got - w).abs() < 1e-6, "update {t}: {got} vs {w}");
        }
    }

    #[test]
    fn clipping_scales_the_joint_norm_down_only() {
        let a = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        (&a * &a / 2.0 + &b * &b / 2.0).sum(Kind::Float).backward(); // grads 3, 4: norm 5
        let opt = AdamW::new(
            vec![
                ("a".into(), a.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            &TrainConfig::test(),
        );
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let ga = f64::try_from(&a.grad().get(0)).unwrap();
        assert!((ga - 0.6).abs() < 1e-5, "{ga}");
        assert!((opt.clip_grad_norm(10.0) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn only_the_embedding_is_not_decayed() {
        assert!(!decays("model.embed_tokens.weight"));
        assert!(decays("lm_head.weight"));
        assert!(decays("model.layers.0.self_attn.q_norm.weight"));
    }
}

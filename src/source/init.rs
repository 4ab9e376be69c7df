//! Random initialisation as a weight source: tensors are generated on demand, each seeded by
//! (seed, tensor name), so reading order and streaming do not change the weights.
//!
//! Schemes (research/olmo2.md §4): `olmo` is what OLMo-2 trained from (every linear weight and the
//! embedding ~ truncated normal, std 0.02, cut at ±3σ; norms 1). `hf` is transformers'
//! `_init_weights` (plain normal std 0.02, pad row of the embedding zeroed; norms 1). `neox` is
//! what Pythia trained from (GPT-NeoX's `small_init` for every matrix, std √(2 / 5d), and
//! `wang_init` for the two output projections, std 2 / (L√d); plain normal; norms 1, biases 0).

use std::path::PathBuf;

use clap::ValueEnum;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{expected_tensors, Provenance, TensorInfo, WeightSource};
use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};
use crate::stats::random::try_sample_normal;
pub use crate::stats::random::{truncated_normal_std, TRUNCATION_SIGMAS};

/// Standard deviation of every initialised weight matrix in both schemes.
pub const INIT_STD: f64 = 0.02;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    Olmo,
    Hf,
    Neox,
}

impl InitScheme {
    pub const ALL: [InitScheme; 3] = [InitScheme::Olmo, InitScheme::Hf, InitScheme::Neox];

    pub fn name(self) -> &'static str {
        match self {
            InitScheme::Olmo => "olmo",
            InitScheme::Hf => "hf",
            InitScheme::Neox => "neox",
        }
    }

    /// The scheme called `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// `olmo|hf|neox`, for messages.
    pub fn choices() -> String {
        Self::ALL.map(InitScheme::name).join("|")
    }
}

/// GPT-NeoX's `small_init` std for width `d` (Nguyen & Salazar 2019): √(2 / 5d).
pub fn neox_small_init_std(hidden: i64) -> f64 {
    (2.0 / (5.0 * hidden as f64)).sqrt()
}

/// GPT-NeoX's `wang_init` std for the output projections of `layers` layers of width `d`
/// (Wang 2021, as in gpt-neox `init_functions.py`): 2 / (L√d).
pub fn neox_wang_init_std(hidden: i64, layers: i64) -> f64 {
    2.0 / (layers as f64 * (hidden as f64).sqrt())
}

/// Whether `name` is one of the two projections back into the residual stream (attention output
/// and MLP down projection), which `wang_init` scales by depth.
fn is_output_projection(name: &str) -> bool {
    name.ends_with(".self_attn.o_proj.weight") || name.ends_with(".mlp.down_proj.weight")
}

/// A model at initialisation.
pub struct InitSource {
    config: ModelConfig,
    seed: u64,
    scheme: InitScheme,
    shapes: Vec<(String, Vec<i64>)>,
    provenance: Provenance,
}

impl InitSource {
    pub fn new(config: ModelConfig, seed: u64, scheme: InitScheme, spec: &str) -> Self {
        let shapes = expected_tensors(&config);
        let provenance = Provenance {
            spec: spec.to_string(),
            kind: "init".into(),
            init: Some(format!("scheme={} seed={seed}", scheme.name())),
            ..Default::default()
        };
        InitSource {
            config,
            seed,
            scheme,
            shapes,
            provenance,
        }
    }

    fn shape_of(&self, name: &str) -> Option<&[i64]> {
        self.shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
    }
}

impl WeightSource for InitSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.shapes
            .iter()
            .map(|(name, shape)| TensorInfo {
                name: name.clone(),
                shape: shape.clone(),
                dtype: "F32".into(),
                bytes: 4 * shape.iter().product::<i64>() as u64,
            })
            .collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.shape_of(name).is_some()
    }

    fn read(&self, name: &str) -> SourceResult<Tensor> {
        let shape = self
            .shape_of(name)
            .ok_or_else(|| SourceError::MissingTensor {
                name: name.to_string(),
                location: self.provenance.spec.clone(),
            })?
            .to_vec();
        if shape.len() == 1 && name.ends_with(".bias") {
            // Projection and LayerNorm biases start at zero (transformers' `_init_weights`).
            return Ok(Tensor::f_zeros(
                shape.as_slice(),
                (Kind::Float, Device::Cpu),
            )?);
        }
        if shape.len() == 1 {
            // Every other 1-D tensor of these models is a norm weight: a gain of one, which Gemma
            // stores as zero (`1 + weight`).
            let stored = 1.0 - self.config.architecture.norm_weight_offset();
            return Ok(Tensor::f_full(
                shape.as_slice(),
                stored,
                (Kind::Float, Device::Cpu),
            )?);
        }
        let tensor = match self.scheme {
            InitScheme::Olmo => {
                try_sample_normal(&shape, self.seed, name, INIT_STD, TRUNCATION_SIGMAS)?
            }
            InitScheme::Hf => {
                let t = try_sample_normal(&shape, self.seed, name, INIT_STD, f64::INFINITY)?;
                if name == "model.embed_tokens.weight" {
                    if let Some(pad) = self.config.pad_token_id.filter(|&p| p >= 0 && p < shape[0])
                    {
                        let _ = t.get(pad).fill_(0.0);
                    }
                }
                t
            }
            InitScheme::Neox => {
                let (hidden, layers) = (self.config.hidden_size, self.config.num_hidden_layers);
                let std = if is_output_projection(name) {
                    neox_wang_init_std(hidden, layers)
                } else {
                    neox_small_init_std(hidden)
                };
                try_sample_normal(&shape, self.seed, name, std, f64::INFINITY)?
            }
        };
        Ok(tensor)
    }

    fn tokenizer_path(&self) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::olmo2_preset;

    #[test]
    fn truncated_std_matches_the_textbook_value() {
        // σ·sqrt(1 − 2·3·φ(3)/(2Φ(3)−1)) with φ(3) = 0.00443185, 2Φ(3)−1 = 0.99730020.
        let expected =
            0.02 * (1.0 - 6.0 * 0.004_431_848_411_938_008 / 0.997_300_203_936_739_8f64).sqrt();
        assert!((truncated_normal_std(0.02, 3.0) - expected).abs() < 1e-12);
    }

    #[test]
    fn same_seed_same_tensor_and_names_decorrelate() {
        let c = olmo2_preset("olmo2-1b").unwrap();
        let a = InitSource::new(c.clone(), 7, InitScheme::Olmo, "init:olmo2-1b");
        let b = InitSource::new(c, 7, InitScheme::Olmo, "init:olmo2-1b");
        let name = "model.layers.3.self_attn.k_proj.weight";
        let other = "model.layers.3.self_attn.q_proj.weight";
        assert!(a.read(name).unwrap().equal(&b.read(name).unwrap()));
        // Reading another tensor in between does not change it (seeded per name).
        let _ = b.read(other).unwrap();
        assert!(a.read(name).unwrap().equal(&b.read(name).unwrap()));
        assert!(!a.read(name).unwrap().equal(&a.read(other).unwrap()));
    }

    #[test]
    fn qwen_inits_have_zero_biases_and_head_dim_qk_norms_of_one() {
        use crate::config::Architecture;
        let base = olmo2_preset("olmo2-1b").unwrap();
        let qwen2 = InitSource::new(
            ModelConfig {
                architecture: Architecture::Qwen2,
                ..base.clone()
            },
            0,
            InitScheme::Hf,
            "init:qwen2",
        );
        let bias = qwen2.read("model.layers.0.self_attn.k_proj.bias").unwrap();
        assert_eq!(bias.size(), [2048]);
        assert_eq!(f64::try_from(bias.abs().max()).unwrap(), 0.0);
        assert!(!qwen2.contains("model.layers.0.self_attn.q_norm.weight"));
        let qwen3 = InitSource::new(
            ModelConfig {
                architecture: Architecture::Qwen3,
                ..base
            },
            0,
            InitScheme::Hf,
            "init:qwen3",
        );
        let norm = qwen3
            .read("model.layers.0.self_attn.q_norm.weight")
            .unwrap();
        assert_eq!(norm.size(), [128]);
        assert_eq!(f64::try_from(norm.min()).unwrap(), 1.0);
        assert!(!qwen3.contains("model.layers.0.self_attn.q_proj.bias"));
    }
}

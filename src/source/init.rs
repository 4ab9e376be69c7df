//! Random initialisation as a weight source: tensors are generated on demand, each seeded by
//! (seed, tensor name), so reading order and streaming do not change the weights.
//!
//! Schemes (research/olmo2.md §4): `olmo` is what OLMo-2 trained from (every linear weight and the
//! embedding ~ truncated normal, std 0.02, cut at ±3σ; norms 1). `hf` is transformers'
//! `_init_weights` (plain normal std 0.02, pad row of the embedding zeroed; norms 1).

use std::path::PathBuf;

use clap::ValueEnum;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{expected_tensors, Provenance, TensorInfo, WeightSource};
use crate::error::{SourceError, SourceResult};
use crate::model::config::ModelConfig;

/// Standard deviation of every initialised weight matrix in both schemes.
pub const INIT_STD: f64 = 0.02;
/// OLMo-2 truncates its normal at this many standard deviations.
pub const TRUNCATION_SIGMAS: f64 = 3.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    Olmo,
    Hf,
}

impl InitScheme {
    pub fn name(self) -> &'static str {
        match self {
            InitScheme::Olmo => "olmo",
            InitScheme::Hf => "hf",
        }
    }
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

/// The random stream of one generation chunk of one tensor: ChaCha8 keyed by
/// sha256(seed, tensor name, chunk index). Independent of libtorch's global generator, so results
/// do not depend on threads or on what else the process draws.
fn chunk_rng(seed: u64, name: &str, chunk: u64) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(chunk.to_le_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// `n` draws uniform on the open interval (−edge, edge), at 24-bit resolution.
fn uniform_symmetric(rng: &mut ChaCha8Rng, n: usize, edge: f64) -> Vec<f32> {
    const SCALE: f64 = 1.0 / (1u64 << 24) as f64;
    (0..n)
        .map(|_| {
            let u = ((rng.next_u32() >> 8) as f64 + 0.5) * SCALE; // in (0, 1)
            (edge * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// Rows are generated in chunks of about this many elements, so scratch memory stays one chunk
/// whatever the tensor's size.
const GENERATION_CHUNK: i64 = 1 << 22;

/// Inverse-CDF sampling of a normal: `x = std·√2·erfinv(v)` for `v` uniform on (−edge, edge),
/// where `edge = erf(cut/√2)` truncates at ±cut·σ (as `torch.nn.init.trunc_normal_` does), and
/// `cut = ∞` (edge 1) gives a plain normal. Returns `[rows, cols...]` filled chunk by chunk.
/// For shapes fixed in code; shapes from a config go through [`try_sample_normal`].
pub(crate) fn sample_normal(
    shape: &[i64],
    seed: u64,
    name: &str,
    std: f64,
    cut_sigmas: f64,
) -> Tensor {
    try_sample_normal(shape, seed, name, std, cut_sigmas).expect("a tensor of a size fixed in code")
}

/// [`sample_normal`] with the allocation's failure (a size a config asked for that the machine
/// cannot hold) returned as an error instead of a panic.
pub(crate) fn try_sample_normal(
    shape: &[i64],
    seed: u64,
    name: &str,
    std: f64,
    cut_sigmas: f64,
) -> Result<Tensor, tch::TchError> {
    let edge = if cut_sigmas.is_finite() {
        f64::try_from(Tensor::from(cut_sigmas / std::f64::consts::SQRT_2).erf())
            .expect("scalar erf")
    } else {
        1.0
    };
    let t = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?;
    let row_elements: i64 = shape[1..].iter().product();
    let rows_per_chunk = (GENERATION_CHUNK / row_elements.max(1)).max(1);
    let (mut start, mut chunk) = (0, 0u64);
    while start < shape[0] {
        let rows = rows_per_chunk.min(shape[0] - start);
        let mut rng = chunk_rng(seed, name, chunk);
        let values = uniform_symmetric(&mut rng, (rows * row_elements) as usize, edge);
        let mut view = t.narrow(0, start, rows);
        view.copy_(&Tensor::from_slice(&values).view_(view.size()));
        let _ = view.erfinv_();
        let _ = view.g_mul_scalar_(std * std::f64::consts::SQRT_2);
        if cut_sigmas.is_finite() {
            // erfinv of an f32 just inside ±edge can round a hair past the cut.
            let _ = view.clamp_(-cut_sigmas * std, cut_sigmas * std);
        }
        start += rows;
        chunk += 1;
    }
    Ok(t)
}

/// The standard deviation of a normal with standard deviation `std` truncated at `±cut·std`.
pub fn truncated_normal_std(std: f64, cut_sigmas: f64) -> f64 {
    let c = cut_sigmas;
    let pdf = (-c * c / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mass = f64::try_from(Tensor::from(c / std::f64::consts::SQRT_2).erf()).expect("scalar erf");
    std * (1.0 - 2.0 * c * pdf / mass).sqrt()
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
            // Every other 1-D tensor of these models is a norm weight, initialised to one.
            return Ok(Tensor::f_ones(
                shape.as_slice(),
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
    use crate::model::config::olmo2_preset;

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
        use crate::model::config::Architecture;
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

//! Reading one layer's tensors from a source: shape-checked against the config, refused when they
//! hold NaN/Inf (unless allowed), and moved to the compute device and dtype.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, NormKind};
use crate::error::SourceError;
use crate::model::norm::Norm;
use crate::source::WeightSource;

/// Device, dtype and integrity policy for loaded weights.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype: f32 on CPU, bf16 on CUDA by default.
    pub kind: Kind,
    /// Run even when a tensor holds NaN/Inf (inspect reports them either way).
    pub allow_nan: bool,
}

impl LoadOptions {
    pub fn cpu_f32() -> Self {
        LoadOptions {
            device: Device::Cpu,
            kind: Kind::Float,
            allow_nan: false,
        }
    }

    /// A short human name for the device and dtype, for reports: `cpu f32`, `cuda:0 bf16`.
    pub fn describe(&self) -> String {
        let device = match self.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(i) => format!("cuda:{i}"),
            other => format!("{other:?}"),
        };
        let kind = match self.kind {
            Kind::Float => "f32",
            Kind::BFloat16 => "bf16",
            _ => "other",
        };
        format!("{device} {kind}")
    }
}

/// Reads a named tensor with its expected shape and prepares it for compute.
pub fn load_tensor(
    source: &dyn WeightSource,
    name: &str,
    shape: &[i64],
    options: &LoadOptions,
) -> Result<Tensor> {
    let tensor = source.read_shaped(name, shape)?;
    if !options.allow_nan {
        let non_finite = count_non_finite(&tensor);
        if non_finite > 0 {
            return Err(SourceError::NonFinite {
                name: name.to_string(),
                count: non_finite,
            }
            .into());
        }
    }
    Ok(tensor.to_device(options.device).to_kind(options.kind))
}

/// Elements per chunk when scanning for NaN/Inf: the mask and its int64 sum would otherwise
/// cost 9 bytes per element (1.8 GB for a 7B embedding).
const SCAN_CHUNK: i64 = 1 << 22;

/// Number of NaN or ±Inf entries.
pub fn count_non_finite(tensor: &Tensor) -> i64 {
    let flat = tensor.reshape(-1);
    let n = flat.numel() as i64;
    (0..n)
        .step_by(SCAN_CHUNK as usize)
        .map(|start| {
            let chunk = flat.narrow(0, start, SCAN_CHUNK.min(n - start));
            i64::try_from(chunk.isfinite().logical_not().sum(Kind::Int64)).unwrap_or(0)
        })
        .sum()
}

/// The block norm `{stem}.weight` (and `{stem}.bias` for a LayerNorm) of width `size`.
pub fn load_norm(
    source: &dyn WeightSource,
    stem: &str,
    size: i64,
    config: &ModelConfig,
    options: &LoadOptions,
) -> Result<Norm> {
    let weight = load_tensor(source, &format!("{stem}.weight"), &[size], options)?;
    Ok(match config.architecture.norm_kind() {
        NormKind::Rms => Norm::new(weight, config.rms_norm_eps, config.architecture),
        NormKind::Layer => {
            let bias = load_tensor(source, &format!("{stem}.bias"), &[size], options)?;
            Norm::layer(weight, bias, config.rms_norm_eps)
        }
    })
}

/// The tensors of one decoder layer, named relative to `model.layers.{i}.`.
pub struct LayerWeights<'a> {
    pub source: &'a dyn WeightSource,
    pub prefix: String,
    pub options: LoadOptions,
}

impl LayerWeights<'_> {
    /// A `[out_features, in_features]` linear weight.
    pub fn linear(&mut self, suffix: &str, out_features: i64, in_features: i64) -> Result<Tensor> {
        let name = format!("{}.{suffix}", self.prefix);
        load_tensor(
            self.source,
            &name,
            &[out_features, in_features],
            &self.options,
        )
    }

    /// A `[size]` vector (a bias).
    pub fn vector(&mut self, suffix: &str, size: i64) -> Result<Tensor> {
        let name = format!("{}.{suffix}", self.prefix);
        load_tensor(self.source, &name, &[size], &self.options)
    }

    /// A `[size]` norm weight.
    pub fn norm(&mut self, suffix: &str, size: i64) -> Result<Tensor> {
        self.vector(suffix, size)
    }

    /// A block norm `{stem}.weight` (+ `.bias` for a LayerNorm) of width hidden_size.
    pub fn block_norm(&mut self, stem: &str, config: &ModelConfig) -> Result<Norm> {
        let stem = format!("{}.{stem}", self.prefix);
        load_norm(
            self.source,
            &stem,
            config.hidden_size,
            config,
            &self.options,
        )
    }
}

//! The RoPE variant a checkpoint's `config.json` names (`rope_scaling` in transformers v4 files,
//! `rope_parameters` in v5) and its inverse frequencies, as transformers 5.24
//! `modeling_rope_utils.py` computes them for the Llama and OLMo-2 classes: `default`, `linear`
//! (position interpolation), `dynamic` (NTK-aware, length dependent), `yarn` (arXiv 2309.00071) and
//! `llama3` (Llama 3.1's frequency-band rescaling).
//!
//! Every tensor step runs in f32 with the same operations in the same order as transformers (its
//! scalars are Python floats, which libtorch casts to f32 just as tch's scalar ops do), so the
//! frequencies agree to the last bit or two; scalar-only quantities (YaRN's correction range and
//! attention factor) are f64 as in Python.

use std::f64::consts::PI;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

use crate::error::{SourceError, SourceResult};

/// The RoPE types ckpt-scan runs, as `config.json` spells them.
pub const SUPPORTED_ROPE_TYPES: &str = "default, linear, dynamic, yarn, llama3";

/// A RoPE variant with every parameter resolved (defaults filled in as transformers fills them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = 1 / theta^(2i / head_dim)`.
    #[default]
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware scaling whose base grows with the sequence: plain RoPE up to
    /// `max_position_embeddings` tokens, beyond it `theta · (factor·len/max − (factor − 1))^(d/(d−2))`.
    Dynamic {
        factor: f64,
        /// The length past which the base grows (transformers uses the config's own
        /// `max_position_embeddings`, not `original_max_position_embeddings`).
        max_position_embeddings: i64,
    },
    /// YaRN: frequencies blended between interpolated and original by a linear ramp over the
    /// dimensions whose rotation count in the original context lies between `beta_slow` and
    /// `beta_fast`; cos and sin are multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: i64,
        beta_fast: f64,
        beta_slow: f64,
        /// Floor/ceil the correction range (transformers' default `true`).
        truncate: bool,
        /// The scale on cos and sin: given in the config, or derived from `factor` (and `mscale`,
        /// `mscale_all_dim` when both are given) as transformers derives it.
        attention_factor: f64,
    },
    /// Llama 3.1: wavelengths above `original / low_freq_factor` divided by `factor`, below
    /// `original / high_freq_factor` kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: i64,
    },
}

/// The config fields RoPE depends on: base and variant.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeParameters {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeParameters {
    /// Reads `rope_scaling` / `rope_parameters` and `rope_theta` from parsed `config.json` the way
    /// transformers 5.24 standardizes them (`RotaryEmbeddingConfigMixin`): a non-empty
    /// `rope_scaling` replaces `rope_parameters`; `rope_theta` inside it wins over the top-level
    /// one; `type` is the v4 spelling of `rope_type`; `original_max_position_embeddings`
    /// defaults to `max_position_embeddings` (a top-level `original_max_position_embeddings` is
    /// ignored by these classes). Unknown types and missing required keys are refused.
    pub fn from_json(
        value: &Value,
        max_position_embeddings: i64,
        path: &Path,
    ) -> SourceResult<Self> {
        let empty = Map::new();
        let pick = |key: &str| match value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) if m.is_empty() => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(SourceError::malformed(
                path,
                format!("{key:?} must be an object, got {other}"),
            )),
        };
        let params = match pick("rope_scaling")? {
            Some(m) => m,
            None => pick("rope_parameters")?.unwrap_or(&empty),
        };
        let bad = |message: String| SourceError::malformed(path, message);
        let number = |key: &str| -> SourceResult<Option<f64>> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    bad(format!("RoPE parameter {key:?} must be a number, got {v}"))
                }),
            }
        };
        let required = |key: &str, rope_type: &str| -> SourceResult<f64> {
            number(key)?.ok_or_else(|| {
                bad(format!(
                    "RoPE type {rope_type:?} needs the parameter {key:?}"
                ))
            })
        };
        let theta = match number("rope_theta")? {
            Some(t) => t,
            None => value
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        let partial = match number("partial_rotary_factor")? {
            Some(p) => Some(p),
            None => value.get("partial_rotary_factor").and_then(Value::as_f64),
        };
        if let Some(p) = partial.filter(|&p| p != 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor {p}: partial rotary embeddings are not supported"
            )));
        }
        let rope_type = match params.get("rope_type").or_else(|| params.get("type")) {
            None | Some(Value::Null) => "default",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(bad(format!("rope_type must be a string, got {other}"))),
        };
        let original = || -> SourceResult<i64> {
            match params.get("original_max_position_embeddings") {
                None | Some(Value::Null) => Ok(max_position_embeddings),
                Some(v) => v.as_i64().ok_or_else(|| {
                    bad(format!(
                        "original_max_position_embeddings must be an integer, got {v}"
                    ))
                }),
            }
        };
        let scaling = match rope_type {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: required("factor", rope_type)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: required("factor", rope_type)?,
                max_position_embeddings,
            },
            "yarn" => {
                let original_max_position_embeddings = original()?;
                if !params.contains_key("factor") {
                    return Err(bad(
                        "RoPE type \"yarn\" needs the parameter \"factor\"".into()
                    ));
                }
                // An explicit null factor means the ratio of the two context lengths.
                let factor = number("factor")?.unwrap_or(
                    max_position_embeddings as f64 / original_max_position_embeddings as f64,
                );
                let truthy = |x: Option<f64>| x.filter(|&x| x != 0.0);
                let attention_factor = match number("attention_factor")? {
                    Some(a) => a,
                    None => match (truthy(number("mscale")?), truthy(number("mscale_all_dim")?)) {
                        (Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                        _ => yarn_mscale(factor, 1.0),
                    },
                };
                let truncate = match params.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        bad(format!(
                            "RoPE parameter \"truncate\" must be a boolean, got {v}"
                        ))
                    })?,
                };
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings,
                    // transformers: `get("beta_fast") or 32`, so 0 means the default too.
                    beta_fast: truthy(number("beta_fast")?).unwrap_or(32.0),
                    beta_slow: truthy(number("beta_slow")?).unwrap_or(1.0),
                    truncate,
                    attention_factor,
                }
            }
            "llama3" => RopeScaling::Llama3 {
                factor: required("factor", rope_type)?,
                low_freq_factor: required("low_freq_factor", rope_type)?,
                high_freq_factor: required("high_freq_factor", rope_type)?,
                original_max_position_embeddings: original()?,
            },
            other => {
                return Err(SourceError::UnsupportedRopeType {
                    path: path.to_path_buf(),
                    rope_type: other.to_string(),
                    supported: SUPPORTED_ROPE_TYPES,
                })
            }
        };
        scaling.validate(path)?;
        Ok(RopeParameters { theta, scaling })
    }
}

/// YaRN's `get_mscale`: `0.1 · mscale · ln(scale) + 1` above scale 1, else 1.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl RopeScaling {
    /// Refuses parameters that make transformers' formulas divide by zero or go non-finite
    /// (transformers only warns about some of them).
    pub fn validate(&self, path: &Path) -> SourceResult<()> {
        let bad = |message: String| Err(SourceError::malformed(path, message));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let name = self.name();
        match self {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                if !positive(*factor) {
                    return bad(format!(
                        "RoPE {name}: factor must be positive, got {factor}"
                    ));
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            } => {
                if !positive(*factor)
                    || *original_max_position_embeddings <= 0
                    || !attention_factor.is_finite()
                {
                    return bad(format!(
                        "RoPE yarn: factor ({factor}), original_max_position_embeddings \
                         ({original_max_position_embeddings}) and attention_factor \
                         ({attention_factor}) must be positive and finite"
                    ));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let usable = positive(*factor)
                    && positive(*low_freq_factor)
                    && high_freq_factor.is_finite()
                    && high_freq_factor > low_freq_factor
                    && *original_max_position_embeddings > 0;
                if !usable {
                    return bad(format!(
                        "RoPE llama3: needs factor > 0, 0 < low_freq_factor < high_freq_factor and \
                         original_max_position_embeddings > 0; got {factor}, {low_freq_factor}, \
                         {high_freq_factor}, {original_max_position_embeddings}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `rope_type` string of `config.json`.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }

    /// One line for `inspect` and reports: the type and its resolved parameters.
    pub fn describe(&self) -> String {
        match self {
            RopeScaling::Default => "default".into(),
            RopeScaling::Linear { factor } => format!("linear (factor {factor})"),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => format!(
                "dynamic (factor {factor}, base grows past {max_position_embeddings} positions)"
            ),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => format!(
                "yarn (factor {factor}, original {original_max_position_embeddings}, beta_fast \
                 {beta_fast}, beta_slow {beta_slow}, truncate {truncate}, attention_factor \
                 {attention_factor:.6})"
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => format!(
                "llama3 (factor {factor}, low_freq_factor {low_freq_factor}, high_freq_factor \
                 {high_freq_factor}, original {original_max_position_embeddings})"
            ),
        }
    }

    /// The scale on cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f64 {
        match self {
            RopeScaling::Yarn {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// The `config.json` object transformers reads this variant from (v5 `rope_parameters`
    /// spelling, valid as v4 `rope_scaling` too); `None` for plain RoPE.
    pub fn to_hf_json(&self, theta: f64) -> Option<Value> {
        let mut value = serde_json::to_value(self).ok()?;
        let object = value.as_object_mut()?;
        match self {
            RopeScaling::Default => return None,
            // transformers takes this length from the config itself.
            RopeScaling::Dynamic { .. } => {
                object.remove("max_position_embeddings");
            }
            _ => {}
        }
        object.insert("rope_theta".into(), theta.into());
        Some(value)
    }

    /// Inverse frequencies `[head_dim / 2]` f32 for a call whose positions run to `seq_len − 1`
    /// (only `dynamic` depends on it), with `theta` the RoPE base.
    pub fn inverse_frequencies(
        &self,
        head_dim: i64,
        theta: f64,
        seq_len: i64,
        device: Device,
    ) -> Tensor {
        let dim = head_dim as f64;
        // `arange(0, dim, 2, int64).float() / dim`: exact even integers over dim.
        let exponent = || {
            Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device)).to_kind(Kind::Float)
                / dim
        };
        // `1.0 / (base ** exponent)`; Python's `1.0 / t` is `t.reciprocal() * 1.0`.
        let plain = |base: &Tensor| base.pow(&exponent()).reciprocal();
        let theta32 = || Tensor::from(theta as f32).to_device(device);
        match self {
            RopeScaling::Default => plain(&theta32()),
            RopeScaling::Linear { factor } => plain(&theta32()) / *factor,
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                // transformers recomputes only when the longest position exceeds the config's
                // max_position_embeddings; at or below it the init-time table is the plain one.
                if seq_len <= *max_position_embeddings {
                    return plain(&theta32());
                }
                // `base * ((factor * seq_len / max) - (factor - 1)) ** (dim / (dim - 2))`, with
                // seq_len a tensor, so every step is f32.
                let length = Tensor::from(seq_len as f32).to_device(device);
                let grown = ((length * *factor) / *max_position_embeddings as f64
                    - (*factor - 1.0))
                    .pow_tensor_scalar(dim / (dim - 2.0))
                    * theta;
                plain(&grown)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let pos_freqs = theta32().pow(&exponent());
                let extrapolation = pos_freqs.reciprocal();
                let interpolation = (&pos_freqs * *factor).reciprocal();
                // The dimension whose wavelength fits `rotations` times in the original context.
                let correction_dim = |rotations: f64| {
                    dim * (*original_max_position_embeddings as f64 / (rotations * 2.0 * PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001; // transformers: prevents a zero-width ramp
                }
                let ramp = ((Tensor::arange(head_dim / 2, (Kind::Float, device)) - low)
                    / (high - low))
                    .clamp(0.0, 1.0);
                let extrapolation_weight = 1.0 - ramp;
                interpolation * (1.0 - &extrapolation_weight) + extrapolation * extrapolation_weight
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let inv_freq = plain(&theta32());
                let old_context = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old_context / low_freq_factor;
                let high_freq_wavelen = old_context / high_freq_factor;
                // Python's `2 * math.pi / inv_freq` is `inv_freq.reciprocal() * (2π)`.
                let wavelen = inv_freq.reciprocal() * (2.0 * PI);
                let long = wavelen.gt(low_freq_wavelen);
                let scaled = (&inv_freq / *factor).where_self(&long, &inv_freq);
                let smooth = (wavelen.reciprocal() * old_context - *low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed: Tensor = (1.0 - &smooth) * &scaled / *factor + &smooth * &scaled;
                let medium = wavelen
                    .lt(high_freq_wavelen)
                    .logical_not()
                    .logical_and(&long.logical_not());
                smoothed.where_self(&medium, &scaled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: Value) -> SourceResult<RopeParameters> {
        let mut value = serde_json::json!({"rope_theta": 10000.0});
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        RopeParameters::from_json(&value, 64, Path::new("m/config.json"))
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t).unwrap()
    }

    #[test]
    fn v4_rope_scaling_and_v5_rope_parameters_read_the_same() {
        let v4 = parse(
            serde_json::json!({"rope_scaling": {"type": "llama3", "factor": 8,
            "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 16}}),
        )
        .unwrap();
        let v5 = parse(
            serde_json::json!({"rope_parameters": {"rope_type": "llama3",
            "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}}),
        )
        .unwrap();
        assert_eq!(v4, v5);
        assert_eq!(
            v4.scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16
            }
        );
    }

    #[test]
    fn theta_inside_rope_parameters_wins_and_original_defaults_to_max_positions() {
        let p = parse(serde_json::json!({"rope_parameters": {"rope_type": "yarn",
            "rope_theta": 1234.0, "factor": 4.0}}))
        .unwrap();
        assert_eq!(p.theta, 1234.0);
        let RopeScaling::Yarn {
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } = p.scaling
        else {
            panic!("{p:?}")
        };
        assert_eq!(original_max_position_embeddings, 64);
        assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
        // 0.1 ln 4 + 1
        assert!((attention_factor - 1.138_629_436_111_989).abs() < 1e-15);
    }

    #[test]
    fn yarn_attention_factor_from_mscale_pair() {
        let p = parse(
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 40.0,
            "mscale": 1.0, "mscale_all_dim": 0.5}}),
        )
        .unwrap();
        let expected = (0.1 * 40f64.ln() + 1.0) / (0.05 * 40f64.ln() + 1.0);
        assert!((p.scaling.attention_factor() - expected).abs() < 1e-15);
    }

    #[test]
    fn unknown_rope_type_is_refused_naming_file_and_type() {
        let e = parse(serde_json::json!({"rope_scaling": {"rope_type": "longrope",
            "short_factor": [1.0], "long_factor": [1.0]}}))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("\"longrope\""),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn missing_factor_is_refused() {
        let e = parse(serde_json::json!({"rope_scaling": {"rope_type": "linear"}})).unwrap_err();
        assert!(e.to_string().contains("\"factor\""), "{e}");
    }

    #[test]
    fn null_or_empty_scaling_is_plain_rope() {
        for extra in [
            serde_json::json!({"rope_scaling": null}),
            serde_json::json!({"rope_scaling": {}}),
            serde_json::json!({}),
        ] {
            assert_eq!(parse(extra).unwrap().scaling, RopeScaling::Default);
        }
    }

    #[test]
    fn linear_divides_every_frequency_by_the_factor() {
        let plain = RopeScaling::Default.inverse_frequencies(8, 10_000.0, 10, Device::Cpu);
        let linear =
            RopeScaling::Linear { factor: 4.0 }.inverse_frequencies(8, 10_000.0, 10, Device::Cpu);
        // 1, 1/10, 1/100, 1/1000 for theta 10^4 and head_dim 8.
        for (p, expected) in values(&plain).iter().zip([1.0f32, 0.1, 0.01, 0.001]) {
            assert!((p - expected).abs() < 1e-6 * expected, "{p} vs {expected}");
        }
        assert_eq!(values(&(plain / 4.0)), values(&linear));
    }

    #[test]
    fn dynamic_is_plain_up_to_max_positions_and_lower_beyond() {
        let dynamic = RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 16,
        };
        let plain = values(&RopeScaling::Default.inverse_frequencies(8, 100.0, 16, Device::Cpu));
        assert_eq!(
            values(&dynamic.inverse_frequencies(8, 100.0, 16, Device::Cpu)),
            plain
        );
        // At 32 positions: base 100 · (2·32/16 − 1)^(8/6) = 100 · 3^(4/3).
        let grown = values(&dynamic.inverse_frequencies(8, 100.0, 32, Device::Cpu));
        let base = 100.0 * 3f64.powf(4.0 / 3.0);
        for (i, g) in grown.iter().enumerate() {
            let expected = base.powf(-(2.0 * i as f64) / 8.0);
            assert!(
                ((*g as f64) - expected).abs() < 2e-6 * expected,
                "{i}: {g} vs {expected}"
            );
        }
    }

    #[test]
    fn llama3_keeps_short_wavelengths_and_divides_long_ones() {
        // theta 10^4, head_dim 8: wavelengths 2π·{1, 10, 100, 1000} ≈ 6.3, 63, 628, 6283.
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1000,
        };
        let plain = values(&RopeScaling::Default.inverse_frequencies(8, 10_000.0, 1, Device::Cpu));
        let got = values(&scaling.inverse_frequencies(8, 10_000.0, 1, Device::Cpu));
        // Below 1000/4 = 250 kept; above 1000 divided by 8.
        assert_eq!(got[0], plain[0]);
        assert_eq!(got[1], plain[1]);
        assert_eq!(got[3], plain[3] / 8.0);
        // 628 lies between: the blend (1 − s)·f/8 + s·f with s = (1000/628 − 1)/3.
        let s = (1000.0 / (2.0 * PI * 100.0) - 1.0) / 3.0;
        let f = plain[2] as f64;
        let expected = (1.0 - s) * f / 8.0 + s * f;
        assert!(
            ((got[2] as f64) - expected).abs() < 1e-6 * expected,
            "{} vs {expected}",
            got[2]
        );
    }

    #[test]
    fn yarn_keeps_fast_dimensions_and_interpolates_slow_ones() {
        let scaling = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
            attention_factor: 1.0,
        };
        let plain = values(&RopeScaling::Default.inverse_frequencies(16, 10_000.0, 1, Device::Cpu));
        let got = values(&scaling.inverse_frequencies(16, 10_000.0, 1, Device::Cpu));
        // Correction range: low = floor(16 ln(32/(64π)) / (2 ln 1e4)) → 0, high = ceil(16 ln(32/2π)
        // / (2 ln 1e4)) = 2: dimension 0 extrapolates, 1 is half-way, from 2 on interpolated.
        assert!((got[0] - plain[0]).abs() < 1e-7);
        let half = 0.5 * plain[1] / 4.0 + 0.5 * plain[1];
        assert!((got[1] - half).abs() < 1e-7, "{} vs {half}", got[1]);
        for i in 2..8 {
            assert!(
                (got[i] - plain[i] / 4.0).abs() < 1e-9 * plain[i].max(1.0),
                "{i}"
            );
        }
    }

    #[test]
    fn hf_json_round_trips() {
        let value = serde_json::json!({"rope_theta": 500.0, "rope_parameters": {"rope_type": "yarn",
            "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 16.0,
            "truncate": false, "attention_factor": 1.5}});
        let p = RopeParameters::from_json(&value, 64, Path::new("c.json")).unwrap();
        let back = serde_json::json!({"rope_parameters": p.scaling.to_hf_json(p.theta).unwrap()});
        assert_eq!(
            RopeParameters::from_json(&back, 64, Path::new("c.json")).unwrap(),
            p
        );
        assert_eq!(RopeScaling::Default.to_hf_json(1.0), None);
    }
}

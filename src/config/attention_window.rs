//! Sliding-window attention as `config.json` declares it, per family (Mistral, OLMo-3, Qwen2/3).
//!
//! transformers' window (`masking_utils.sliding_window_overlay`): a query at cache index i sees
//! key j only when `j > i − size`, so `size` keys including itself. Which layers are windowed
//! differs per family, and the traps are in the defaults:
//! - Mistral: every layer when `sliding_window` is not null (`layer_types` is ignored);
//! - Qwen2/Qwen3: only with `use_sliding_window: true`, then the layers with index ≥
//!   `max_window_layers` (default 28) unless `layer_types` says otherwise;
//! - OLMo-3: `sliding_window` defaults to 4096 and `layer_types` to three windowed layers then one
//!   full; its windowed layers may have their own RoPE (`rope_parameters.sliding_attention`), and a
//!   flat v4 `rope_scaling` applies to the full layers only.
//! - Gemma-3: `sliding_window` defaults to 4096 and `layer_types` to five windowed layers then one
//!   full (`sliding_window_pattern`, default 6); the windowed ("local") layers use
//!   `rope_local_base_freq` (default 10⁴) without scaling unless `rope_parameters` is per type.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::rope_scaling::{RopeParameters, RopeScaling};
use crate::config::Architecture;
use crate::error::{SourceError, SourceResult};

const SLIDING: &str = "sliding_attention";
const FULL: &str = "full_attention";

/// Which layers attend only to the last `size` keys, and the RoPE those layers use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlidingWindow {
    /// Keys a query sees, itself included.
    pub size: i64,
    /// Per layer: whether it is windowed (`layer_types[i] == "sliding_attention"`).
    pub layers: Vec<bool>,
    /// The windowed layers' RoPE base and variant (the full layers' unless OLMo-3 sets its own).
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: RopeScaling,
}

impl SlidingWindow {
    /// The window of `layer`, `None` for a full-attention layer.
    pub fn of_layer(&self, layer: i64) -> Option<i64> {
        let windowed = usize::try_from(layer)
            .ok()
            .and_then(|l| self.layers.get(l).copied());
        windowed.unwrap_or(false).then_some(self.size)
    }

    /// Reads the window of `value` (a whole config.json) for `architecture`; `full` is the RoPE of
    /// the full-attention layers. `None` when no layer is windowed.
    pub fn from_json(
        value: &Value,
        architecture: Architecture,
        num_layers: i64,
        full: &RopeParameters,
        path: &Path,
    ) -> SourceResult<Option<Self>> {
        let bad = |message: String| SourceError::malformed(path, message);
        let size = match value.get("sliding_window") {
            None if matches!(architecture, Architecture::Olmo3 | Architecture::Gemma3) => {
                Some(4096)
            }
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(s) if s > 0 => Some(s),
                _ => {
                    return Err(bad(format!(
                        "sliding_window must be a positive integer, got {v}"
                    )))
                }
            },
        };
        let layers = num_layers.max(0) as usize;
        let windowed: Vec<bool> = match architecture {
            Architecture::Olmo2 | Architecture::Llama | Architecture::GptNeox => return Ok(None),
            Architecture::Mistral => vec![true; layers],
            Architecture::Qwen2 | Architecture::Qwen3 => {
                if value.get("use_sliding_window").and_then(Value::as_bool) != Some(true) {
                    return Ok(None);
                }
                let first = value
                    .get("max_window_layers")
                    .and_then(Value::as_i64)
                    .unwrap_or(28);
                match layer_types(value, layers, path)? {
                    Some(types) => types,
                    None => (0..layers as i64).map(|i| i >= first).collect(),
                }
            }
            Architecture::Olmo3 => match layer_types(value, layers, path)? {
                Some(types) => types,
                None => (0..layers).map(|i| (i + 1) % 4 != 0).collect(),
            },
            Architecture::Gemma3 => match layer_types(value, layers, path)? {
                Some(types) => types,
                None => {
                    let pattern = value
                        .get("sliding_window_pattern")
                        .and_then(Value::as_u64)
                        .unwrap_or(6)
                        .max(1) as usize;
                    (0..layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            },
        };
        let Some(size) = size else { return Ok(None) };
        if !windowed.contains(&true) {
            return Ok(None);
        }
        let rope = match architecture {
            Architecture::Olmo3 => sliding_rope(value, "rope_theta", path)?,
            Architecture::Gemma3 => sliding_rope(value, "rope_local_base_freq", path)?,
            _ => full.clone(),
        };
        Ok(Some(SlidingWindow {
            size,
            layers: windowed,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
        }))
    }
}

/// `layer_types` as windowed flags, `None` when absent; refused when its length or a name is wrong.
fn layer_types(value: &Value, layers: usize, path: &Path) -> SourceResult<Option<Vec<bool>>> {
    let Some(types) = value.get("layer_types").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |message: String| SourceError::malformed(path, message);
    let types = types
        .as_array()
        .ok_or_else(|| bad(format!("layer_types must be a list, got {types}")))?;
    if types.len() != layers {
        return Err(bad(format!(
            "layer_types lists {} layers, num_hidden_layers is {layers}",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some(SLIDING) => Ok(true),
            Some(FULL) => Ok(false),
            _ => Err(bad(format!(
                "layer_types entry {t} is neither {SLIDING:?} nor {FULL:?}"
            ))),
        })
        .collect::<SourceResult<Vec<bool>>>()
        .map(Some)
}

/// The RoPE of OLMo-3's and Gemma-3's windowed layers: `rope_parameters.sliding_attention` when
/// the parameters are given per layer type; otherwise plain RoPE at the flat `base_field`
/// (`rope_theta` for OLMo-3, `rope_local_base_freq` for Gemma-3, default 10⁴). transformers'
/// `convert_rope_params_to_dict` of both puts a flat `rope_scaling` on the full layers only.
fn sliding_rope(value: &Value, base_field: &str, path: &Path) -> SourceResult<RopeParameters> {
    let max_positions = value
        .get("max_position_embeddings")
        .and_then(Value::as_i64)
        .unwrap_or(2048);
    let mut flat = value.clone();
    if let Some(object) = flat.as_object_mut() {
        object.remove("rope_scaling");
        let nested = per_layer_type(value, SLIDING).cloned();
        match nested {
            Some(params) => {
                object.insert("rope_parameters".into(), params);
            }
            None => {
                // Only the base carries over from flat parameters.
                let nested_theta = value
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .filter(|_| base_field == "rope_theta");
                let theta = nested_theta.or(value.get(base_field)).cloned();
                object.remove("rope_parameters");
                object.insert(
                    "rope_theta".into(),
                    theta.unwrap_or(DEFAULT_SLIDING_THETA.into()),
                );
            }
        }
    }
    RopeParameters::from_json(&flat, max_positions, path)
}

/// The windowed layers' RoPE base when the config gives none (both families' class default).
const DEFAULT_SLIDING_THETA: f64 = 10_000.0;

/// Gemma-3's global layers' RoPE base when the config gives none (`Gemma3TextConfig`).
const GEMMA_DEFAULT_THETA: f64 = 1_000_000.0;

/// `config.json` with Gemma-3's default base for the full layers filled in when it names none
/// (other families default to 10⁴, [`RopeParameters::from_json`]); `None`: nothing to fill.
pub fn with_default_full_theta(value: &Value, architecture: Architecture) -> Option<Value> {
    let named = value.get("rope_theta").is_some()
        || value
            .get("rope_parameters")
            .is_some_and(|p| p.get("rope_theta").is_some() || p.get(FULL).is_some());
    if architecture != Architecture::Gemma3 || named {
        return None;
    }
    let mut filled = value.clone();
    filled
        .as_object_mut()?
        .insert("rope_theta".into(), GEMMA_DEFAULT_THETA.into());
    Some(filled)
}

/// `rope_parameters[layer_type]` when the parameters are given per layer type.
pub fn per_layer_type<'a>(value: &'a Value, layer_type: &str) -> Option<&'a Value> {
    value
        .get("rope_parameters")
        .and_then(|p| p.get(layer_type))
        .filter(|p| p.is_object())
}

/// `config.json` with OLMo-3's per-layer-type `rope_parameters` flattened to the full layers'
/// (what [`RopeParameters::from_json`] reads); other configs unchanged.
pub fn full_layer_rope_json(value: &Value) -> Option<Value> {
    let full = per_layer_type(value, FULL)?;
    let mut flat = value.clone();
    flat.as_object_mut()?
        .insert("rope_parameters".into(), full.clone());
    Some(flat)
}

/// The `config.json` fields that declare `window` for `architecture` (with `full_theta` and
/// `full_scaling` the full layers' RoPE, for OLMo-3's per-type parameters).
pub fn to_hf_json(
    window: Option<&SlidingWindow>,
    architecture: Architecture,
    num_layers: i64,
    full_theta: f64,
    full_scaling: &RopeScaling,
    json: &mut Value,
) {
    let types = |layers: &[bool]| -> Value {
        layers
            .iter()
            .map(|&w| Value::from(if w { SLIDING } else { FULL }))
            .collect()
    };
    match (window, architecture) {
        (None, Architecture::Olmo3 | Architecture::Gemma3) => {
            // OLMo-3's and Gemma-3's defaults would window most layers.
            json["sliding_window"] = Value::Null;
            json["layer_types"] = types(&vec![false; num_layers.max(0) as usize]);
        }
        (None, _) => {}
        (Some(w), _) => {
            json["sliding_window"] = w.size.into();
            match architecture {
                Architecture::Qwen2 | Architecture::Qwen3 => {
                    json["use_sliding_window"] = true.into();
                    json["layer_types"] = types(&w.layers);
                }
                Architecture::Olmo3 | Architecture::Gemma3 => {
                    json["layer_types"] = types(&w.layers);
                    let params = |theta: f64, scaling: &RopeScaling| {
                        scaling.to_hf_json(theta).unwrap_or_else(
                            || serde_json::json!({"rope_type": "default", "rope_theta": theta}),
                        )
                    };
                    json["rope_parameters"] = serde_json::json!({
                        FULL: params(full_theta, full_scaling),
                        SLIDING: params(w.rope_theta, &w.rope_scaling),
                    });
                    if let Some(object) = json.as_object_mut() {
                        object.remove("rope_scaling");
                        object.remove("rope_theta");
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn json(class: &str, extra: Value) -> Value {
        let mut v = serde_json::json!({
            "architectures": [class], "vocab_size": 128, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 8, "num_attention_heads": 4,
            "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "max_position_embeddings": 4096
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn read(v: &Value) -> SourceResult<ModelConfig> {
        ModelConfig::from_json(v, Path::new("m/config.json"))
    }

    fn windowed(c: &ModelConfig) -> Vec<i64> {
        (0..c.num_hidden_layers)
            .filter(|&l| c.attention_window(l).is_some())
            .collect()
    }

    /// google/gemma-3-270m's config.json as released (v4 spelling: flat bases, no layer_types).
    fn gemma_270m() -> Value {
        serde_json::json!({
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1,
            "head_dim": 256, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0, "rope_scaling": null, "sliding_window": 512,
            "query_pre_attn_scalar": 256, "max_position_embeddings": 32768,
            "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": null,
            "final_logit_softcapping": null, "use_bidirectional_attention": false,
            "attention_bias": false, "_sliding_window_pattern": 6
        })
    }

    #[test]
    fn gemma3_local_layers_are_five_in_six_with_their_own_base() {
        let c = read(&gemma_270m()).unwrap();
        assert_eq!(c.architecture, Architecture::Gemma3);
        let full: Vec<i64> = (0..18)
            .filter(|&l| c.attention_window(l).is_none())
            .collect();
        assert_eq!(full, [5, 11, 17]);
        assert_eq!(c.attention_window(0), Some(512));
        assert_eq!(c.layer_rope(0).0, 10_000.0);
        assert_eq!(c.layer_rope(5).0, 1_000_000.0);
        assert!(c.tie_word_embeddings, "Gemma ties by default");
        assert_eq!(c.attention_scale(), 256f64.powf(-0.5));
        // Written back as transformers v5 spells it (per-type RoPE, layer_types), read the same.
        assert_eq!(read(&c.to_hf_json()).unwrap(), c);
        // Class defaults when the config is silent: window 4096, bases 10⁶ and 10⁴, scalar 256.
        let mut bare = gemma_270m();
        for key in [
            "rope_theta",
            "rope_local_base_freq",
            "sliding_window",
            "query_pre_attn_scalar",
        ] {
            bare.as_object_mut().unwrap().remove(key);
        }
        let d = read(&bare).unwrap();
        assert_eq!(d.attention_window(0), Some(4096));
        assert_eq!(
            (d.layer_rope(0).0, d.layer_rope(5).0),
            (10_000.0, 1_000_000.0)
        );
        assert_eq!(d.query_pre_attn_scalar, Some(256.0));
        // A pattern of 2 and explicit layer_types are honoured.
        let mut two = gemma_270m();
        two["sliding_window_pattern"] = 2.into();
        let t = read(&two).unwrap();
        assert_eq!(windowed(&t), (0..18).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn each_family_windows_the_layers_transformers_does() {
        let mistral = read(&json(
            "MistralForCausalLM",
            serde_json::json!({"sliding_window": 32}),
        ))
        .unwrap();
        assert_eq!(windowed(&mistral), (0..8).collect::<Vec<_>>());
        assert_eq!(mistral.attention_window(3), Some(32));
        // Mistral ignores layer_types; null means no window.
        let null = read(&json(
            "MistralForCausalLM",
            serde_json::json!({"sliding_window": null}),
        ))
        .unwrap();
        assert_eq!(null.sliding_window, None);
        // Qwen: only with use_sliding_window, from max_window_layers on.
        let off = read(&json(
            "Qwen2ForCausalLM",
            serde_json::json!({"sliding_window": 32}),
        ))
        .unwrap();
        assert_eq!(off.sliding_window, None);
        let on = read(&json(
            "Qwen3ForCausalLM",
            serde_json::json!({"sliding_window": 32, "use_sliding_window": true, "max_window_layers": 5}),
        ))
        .unwrap();
        assert_eq!(windowed(&on), vec![5, 6, 7]);
        // OLMo-3: 4096 and three windowed layers in four when config.json is silent.
        let olmo3 = read(&json("Olmo3ForCausalLM", serde_json::json!({}))).unwrap();
        assert_eq!(windowed(&olmo3), vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(olmo3.attention_window(0), Some(4096));
        // Llama and OLMo-2 have no window, whatever the file says.
        let llama = read(&json(
            "LlamaForCausalLM",
            serde_json::json!({"sliding_window": 32}),
        ))
        .unwrap();
        assert_eq!(llama.sliding_window, None);
    }

    #[test]
    fn olmo3_flat_rope_scaling_applies_to_full_layers_only() {
        let v = json(
            "Olmo3ForCausalLM",
            serde_json::json!({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
        );
        let c = read(&v).unwrap();
        assert_eq!(c.layer_rope(3).1, &RopeScaling::Linear { factor: 4.0 });
        assert_eq!(c.layer_rope(0), (500000.0, &RopeScaling::Default));
        // Per layer type, each gets its own.
        let nested = json(
            "Olmo3ForCausalLM",
            serde_json::json!({"rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}),
        );
        let c = read(&nested).unwrap();
        assert_eq!(c.layer_rope(3).0, 500000.0);
        assert_eq!(c.layer_rope(2).0, 10000.0);
        // The config transformers is given back reads as the same config.
        assert_eq!(read(&c.to_hf_json()).unwrap(), c);
    }

    #[test]
    fn configs_written_back_read_as_themselves() {
        for (class, extra) in [
            (
                "MistralForCausalLM",
                serde_json::json!({"sliding_window": 32}),
            ),
            (
                "Qwen2ForCausalLM",
                serde_json::json!({"sliding_window": 32, "use_sliding_window": true, "max_window_layers": 2}),
            ),
            (
                "Olmo3ForCausalLM",
                serde_json::json!({"sliding_window": 64}),
            ),
        ] {
            let c = read(&json(class, extra)).unwrap();
            assert!(c.sliding_window.is_some(), "{class}");
            assert_eq!(read(&c.to_hf_json()).unwrap(), c, "{class}");
        }
        // OLMo-3 without any windowed layer must say so, or transformers' defaults would add them.
        let mut full = read(&json("Olmo3ForCausalLM", serde_json::json!({}))).unwrap();
        full.sliding_window = None;
        assert_eq!(read(&full.to_hf_json()).unwrap(), full);
    }

    /// A config built in code (or read from a cache) is checked too, before a layer indexes it.
    #[test]
    fn a_window_over_the_wrong_layer_count_is_refused() {
        let mut c = read(&json(
            "MistralForCausalLM",
            serde_json::json!({"sliding_window": 8}),
        ))
        .unwrap();
        c.sliding_window.as_mut().unwrap().layers.pop();
        let e = c
            .validate(Path::new("m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("7 layer flags") && e.contains("num_hidden_layers is 8"),
            "{e}"
        );
    }

    #[test]
    fn bad_window_fields_are_one_line_errors_naming_the_file() {
        for (class, extra, needle) in [
            (
                "MistralForCausalLM",
                serde_json::json!({"sliding_window": 0}),
                "sliding_window",
            ),
            (
                "MistralForCausalLM",
                serde_json::json!({"sliding_window": "big"}),
                "sliding_window",
            ),
            (
                "Olmo3ForCausalLM",
                serde_json::json!({"layer_types": ["full_attention", "sliding_attention"]}),
                "layer_types lists 2 layers",
            ),
            (
                "Olmo3ForCausalLM",
                serde_json::json!({"layer_types": ["full_attention", "local", "full_attention",
                    "full_attention", "full_attention", "full_attention", "full_attention",
                    "full_attention"]}),
                "\"local\"",
            ),
        ] {
            let e = read(&json(class, extra)).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("m/config.json"), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}

//! GPT-NeoX (Pythia) `config.json` read into the fields the other families use.
//!
//! `GPTNeoXConfig` spells things its own way (transformers 5.24, `convert_rope_params_to_dict`):
//! `layer_norm_eps` (default 1e-5) for the norm epsilon, `rotary_emb_base` (default 10000) for the
//! RoPE base and `rotary_pct` (default 0.25) for the rotated fraction of each head, unless
//! `rope_parameters` gives `rope_theta` / `partial_rotary_factor`; `use_parallel_residual` defaults
//! to true and `attention_bias` to true (biases on the fused QKV and on `dense`).

use std::path::Path;

use serde_json::Value;

use crate::error::{SourceError, SourceResult};

/// What a GPT-NeoX config says beyond the common fields.
pub struct NeoxFields {
    /// The config rewritten with the common spellings (`rms_norm_eps`, `rope_theta`, no partial
    /// factor), for the common parser.
    pub canonical: Value,
    /// The rotated fraction of each head.
    pub partial_rotary_factor: f64,
    pub parallel_residual: bool,
}

pub fn read(value: &Value, path: &Path) -> SourceResult<NeoxFields> {
    let bad = |message: String| SourceError::malformed(path, message);
    let class = "GPTNeoXForCausalLM";
    match value.get("hidden_act").and_then(Value::as_str) {
        None | Some("gelu") => {}
        Some(other) => {
            return Err(bad(format!(
                "hidden_act {other:?} is not supported for {class} (only \"gelu\")"
            )))
        }
    }
    if value.get("attention_bias").and_then(Value::as_bool) == Some(false) {
        return Err(bad(format!(
            "attention_bias = false is not supported for {class}"
        )));
    }
    let mut canonical = value.clone();
    let object = canonical
        .as_object_mut()
        .ok_or_else(|| bad("config.json is not an object".into()))?;
    let eps = value
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    object.insert("rms_norm_eps".into(), eps.into());
    object.remove("attention_bias");
    let mut partial = value
        .get("rotary_pct")
        .and_then(Value::as_f64)
        .unwrap_or(0.25);
    let base = value.get("rotary_emb_base").and_then(Value::as_f64);
    let mut theta = base.unwrap_or(10_000.0);
    for key in ["rope_parameters", "rope_scaling"] {
        if let Some(params) = object.get_mut(key).and_then(Value::as_object_mut) {
            if let Some(p) = params.remove("partial_rotary_factor") {
                partial = p.as_f64().ok_or_else(|| {
                    bad(format!("partial_rotary_factor must be a number, got {p}"))
                })?;
            }
            if let Some(t) = params.get("rope_theta").and_then(Value::as_f64) {
                theta = t;
            }
        }
    }
    object.remove("partial_rotary_factor");
    if !object.contains_key("rope_theta") {
        object.insert("rope_theta".into(), theta.into());
    }
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(bad(format!(
            "rotary_pct / partial_rotary_factor must be in (0, 1], got {partial}"
        )));
    }
    Ok(NeoxFields {
        canonical,
        partial_rotary_factor: partial,
        parallel_residual: value
            .get("use_parallel_residual")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    })
}

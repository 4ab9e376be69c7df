//! Model configuration read from a Hugging Face `config.json` (OLMo-2 or Llama) or built in code.
//!
//! Traps (research/olmo2.md §1.1): OLMo-2's class defaults differ from its checkpoints (eps 1e-5 vs
//! 1e-6, vocab 50304 vs 100352), and `rope_theta` lives either at the top level (v4 files) or
//! inside `rope_parameters` (transformers v5), next to the RoPE scaling variant
//! (config/rope_scaling.rs). Always read the file; never trust class defaults.

pub mod attention_window;
pub mod gpt_neox;
pub mod presets;
pub mod rope_scaling;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::rope_scaling::{RopeParameters, RopeScaling};
use crate::error::{SourceError, SourceResult};
use attention_window::SlidingWindow;

/// The model families ckpt-scan can run. Each is a combination of the block properties below
/// ([`Architecture::norm_placement`], [`Architecture::qk_norm`], [`Architecture::qkv_bias`]),
/// so the forward has one loop for all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// OLMo-2: no input norm, post-attention and post-feedforward RMSNorm, full-width QK-norm.
    Olmo2,
    /// Llama: pre-norm (input_layernorm, post_attention_layernorm before the MLP), GQA, no QK-norm.
    Llama,
    /// Qwen2: Llama's block with biases on the Q, K and V projections.
    Qwen2,
    /// Qwen3: Llama's block with a per-head QK-norm (RMSNorm over head_dim, before RoPE).
    Qwen3,
    /// Mistral: Llama's block; every layer sliding-window when `sliding_window` is set.
    Mistral,
    /// OLMo-3: OLMo-2's block with sliding-window and full-attention layers (`layer_types`).
    Olmo3,
    /// GPT-NeoX (Pythia): pre-norm LayerNorms with biases, biased fused QKV and output, partial
    /// rotary, GELU MLP with biases, parallel residual (`source/gpt_neox_names.rs` maps its
    /// tensor names).
    GptNeox,
    /// Gemma-3 (text): four RMSNorms per layer around each sub-layer, norm gains stored as
    /// `weight − 1`, per-head QK-norm, GeGLU, embedding scaled by √hidden, scores scaled by
    /// `query_pre_attn_scalar^−½`, local (windowed) and global layers with their own RoPE bases.
    Gemma3,
}

/// Where a block's norms sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// Norm the residual stream before attention and before the MLP (Llama).
    Pre,
    /// Norm each sub-layer's output before it joins the residual stream (OLMo-2).
    Post,
    /// Both: norm the residual stream before each sub-layer and its output after (Gemma-3's
    /// `input_layernorm`, `post_attention_layernorm`, `pre_feedforward_layernorm`,
    /// `post_feedforward_layernorm`).
    Sandwich,
}

/// Which normalisation a block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `weight · x / rms(x)`.
    Rms,
    /// `weight · (x − mean) / sd + bias` (`torch.nn.LayerNorm`).
    Layer,
}

/// Which feed-forward a block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(silu(gate x) · up x)`, no biases (`mlp.gate_proj`, `up_proj`, `down_proj`).
    SwiGlu,
    /// `down(gelu(up x + b) ) + b` with exact GELU (`mlp.up_proj`, `down_proj`, with biases).
    Gelu,
    /// `down(gelu_tanh(gate x) · up x)`, no biases (Gemma's `gelu_pytorch_tanh`).
    GeGlu,
}

/// The norm applied to queries and keys before RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// One RMSNorm over all heads' concatenated projection (OLMo-2): weight `[heads·head_dim]`.
    WholeVector,
    /// One RMSNorm per head over its head_dim, the weight shared by all heads (Qwen3): `[head_dim]`.
    PerHead,
}

impl Architecture {
    /// Every family, in the order the README lists them.
    pub const ALL: [Architecture; 8] = [
        Architecture::Olmo2,
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Mistral,
        Architecture::Olmo3,
        Architecture::GptNeox,
        Architecture::Gemma3,
    ];

    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Olmo2 => "Olmo2ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Olmo3 => "Olmo3ForCausalLM",
            Architecture::GptNeox => "GPTNeoXForCausalLM",
            Architecture::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// `model_type` in config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Olmo2 => "olmo2",
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Mistral => "mistral",
            Architecture::Olmo3 => "olmo3",
            Architecture::GptNeox => "gpt_neox",
            Architecture::Gemma3 => "gemma3_text",
        }
    }

    pub fn norm_placement(self) -> NormPlacement {
        match self {
            Architecture::Olmo2 | Architecture::Olmo3 => NormPlacement::Post,
            Architecture::Llama
            | Architecture::Qwen2
            | Architecture::Qwen3
            | Architecture::Mistral
            | Architecture::GptNeox => NormPlacement::Pre,
            Architecture::Gemma3 => NormPlacement::Sandwich,
        }
    }

    pub fn qk_norm(self) -> QkNorm {
        match self {
            Architecture::Olmo2 | Architecture::Olmo3 => QkNorm::WholeVector,
            Architecture::Qwen3 | Architecture::Gemma3 => QkNorm::PerHead,
            Architecture::Llama
            | Architecture::Qwen2
            | Architecture::Mistral
            | Architecture::GptNeox => QkNorm::None,
        }
    }

    /// Whether q_proj, k_proj and v_proj carry a bias.
    pub fn qkv_bias(self) -> bool {
        matches!(self, Architecture::Qwen2 | Architecture::GptNeox)
    }

    /// Whether o_proj carries a bias (GPT-NeoX's `attention.dense`).
    pub fn output_bias(self) -> bool {
        self == Architecture::GptNeox
    }

    /// The block's norms: LayerNorm with a bias (GPT-NeoX) or RMSNorm.
    pub fn norm_kind(self) -> NormKind {
        match self {
            Architecture::GptNeox => NormKind::Layer,
            _ => NormKind::Rms,
        }
    }

    /// The feed-forward: SwiGLU without biases, or GELU with biases (GPT-NeoX).
    pub fn mlp_kind(self) -> MlpKind {
        match self {
            Architecture::GptNeox => MlpKind::Gelu,
            Architecture::Gemma3 => MlpKind::GeGlu,
            _ => MlpKind::SwiGlu,
        }
    }

    /// What an RMSNorm adds to its stored weight before multiplying: Gemma stores the gain as
    /// `weight − 1` (`x · (1 + weight)`, weights initialised to zero); others store it whole.
    pub fn norm_weight_offset(self) -> f64 {
        match self {
            Architecture::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Whether the token embedding is multiplied by √hidden_size (Gemma).
    pub fn scales_embedding(self) -> bool {
        self == Architecture::Gemma3
    }

    /// Whether RMSNorm multiplies by its weight before casting back to the input dtype (OLMo's
    /// norms) or after (Llama's); equal in f32, different in bf16.
    pub fn norm_multiplies_before_cast(self) -> bool {
        matches!(
            self,
            Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Gemma3
        )
    }

    /// Whether tied input and output embeddings are the class default when config.json is silent.
    fn ties_by_default(self) -> bool {
        matches!(self, Architecture::Llama | Architecture::Gemma3)
    }
}

/// Largest sizes a config may declare. Far above any released dense OLMo-2 or Llama (vocab 262k,
/// hidden 16k, 126 layers, 405B parameters), yet small enough that every tensor's element count and
/// byte size fit an `i64`, so an absurd `config.json` is refused in one line instead of failing an
/// allocation (or overflowing a size) deep inside libtorch.
pub const MAX_VOCAB_SIZE: i64 = 1 << 24;
pub const MAX_WIDTH: i64 = 1 << 20;
pub const MAX_LAYERS: i64 = 1 << 12;
pub const MAX_HEADS: i64 = 1 << 14;
pub const MAX_POSITIONS: i64 = 1 << 24;
/// 2^41 ≈ 2.2 trillion weights (8.8 TB in f32).
pub const MAX_PARAMETERS: i64 = 1 << 41;

/// The largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The RoPE variant (`rope_scaling` / `rope_parameters.rope_type`); plain RoPE when absent,
    /// also in reports written before the field existed.
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    /// Sliding-window layers (Mistral, OLMo-3, Qwen with `use_sliding_window`); absent from the
    /// JSON of configs without one, so their digests are what they were before windows existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<SlidingWindow>,
    /// Rotated dimensions of each head when fewer than `head_dim` (GPT-NeoX's `rotary_pct`); the
    /// rest pass through RoPE unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<i64>,
    /// `x + attn(ln₁ x) + mlp(ln₂ x)` instead of one sub-layer after the other (GPT-NeoX).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel_residual: bool,
    /// Scores are `q·k · query_pre_attn_scalar^−½` instead of `q·k / √head_dim` (Gemma).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    pub tie_word_embeddings: bool,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<i64>,
}

impl ModelConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> SourceResult<Self> {
        // A config.json is a few kB; the cap only stops a device or a huge file posing as one.
        let text = crate::input_file::read_text_capped(path, MAX_CONFIG_BYTES)
            .map_err(|e| SourceError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| SourceError::malformed(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&value, path)
    }

    /// Builds a config from parsed `config.json` contents; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> SourceResult<Self> {
        let architecture = detect_architecture(value, path)?;
        let neox = match architecture {
            Architecture::GptNeox => Some(gpt_neox::read(value, path)?),
            _ => None,
        };
        let value = neox.as_ref().map_or(value, |n| &n.canonical);
        let int = |key: &str| -> SourceResult<i64> {
            value.get(key).and_then(Value::as_i64).ok_or_else(|| {
                SourceError::malformed(path, format!("missing or non-integer field {key:?}"))
            })
        };
        let opt_int = |key: &str| value.get(key).and_then(Value::as_i64);
        let hidden_size = int("hidden_size")?;
        let num_attention_heads = int("num_attention_heads")?;
        let num_key_value_heads = opt_int("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = match opt_int("head_dim") {
            Some(head_dim) => head_dim,
            // Without `head_dim`, transformers derives it as hidden_size / num_attention_heads;
            // a remainder would floor it and give a shape error per projection later.
            None if num_attention_heads > 0 && hidden_size % num_attention_heads != 0 => {
                return Err(SourceError::malformed(
                    path,
                    format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads}) and no head_dim is given"
                    ),
                ));
            }
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let max_position_embeddings = opt_int("max_position_embeddings").unwrap_or(2048);
        // OLMo-3 may give RoPE per layer type; the config's own fields are the full layers'.
        let full_rope_json = attention_window::full_layer_rope_json(value)
            .or_else(|| attention_window::with_default_full_theta(value, architecture));
        let rope = RopeParameters::from_json(
            full_rope_json.as_ref().unwrap_or(value),
            max_position_embeddings,
            path,
        )?;
        refuse_unsupported_fields(value, architecture, path)?;
        let num_hidden_layers = int("num_hidden_layers")?;
        let sliding_window =
            SlidingWindow::from_json(value, architecture, num_hidden_layers, &rope, path)?;
        let default_tie = architecture.ties_by_default();
        let config = ModelConfig {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: value
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .ok_or_else(|| SourceError::malformed(path, "missing field \"rms_norm_eps\""))?,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            max_position_embeddings,
            sliding_window,
            // transformers: `int(head_dim * partial_rotary_factor)`.
            rotary_dim: neox
                .as_ref()
                .map(|n| (head_dim as f64 * n.partial_rotary_factor) as i64)
                .filter(|&r| r != head_dim),
            parallel_residual: neox.as_ref().is_some_and(|n| n.parallel_residual),
            // transformers' Gemma3TextConfig default.
            query_pre_attn_scalar: (architecture == Architecture::Gemma3).then(|| {
                value
                    .get("query_pre_attn_scalar")
                    .and_then(Value::as_f64)
                    .unwrap_or(256.0)
            }),
            tie_word_embeddings: value
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(default_tie),
            pad_token_id: opt_int("pad_token_id"),
            bos_token_id: opt_int("bos_token_id"),
            eos_token_id: first_int(value.get("eos_token_id")),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self, path: &Path) -> SourceResult<()> {
        let bad = |message: String| Err(SourceError::malformed(path, message));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                return bad(format!("{name} must be positive, got {v}"));
            }
        }
        for (name, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_WIDTH),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ] {
            if v > max {
                return bad(format!("{name} {v} is above the largest supported, {max}"));
            }
        }
        match self.parameter_count() {
            Some(n) if n <= MAX_PARAMETERS => {}
            n => {
                return bad(format!(
                    "the config implies {} parameters, above the largest supported model ({MAX_PARAMETERS})",
                    n.map_or("more than 2^63".to_string(), |n| n.to_string())
                ))
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if let Some(r) = self.rotary_dim {
            if r <= 0 || r > self.head_dim || r % 2 != 0 {
                return bad(format!(
                    "the rotary dimensions ({r}) must be even and within head_dim ({})",
                    self.head_dim
                ));
            }
        }
        // Written so that NaN fails too (a plain `<= 0.0` would let it through).
        let positive = |x: f64| x.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater);
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        if self.query_pre_attn_scalar.is_some_and(|s| !positive(s)) {
            return bad("query_pre_attn_scalar must be positive".into());
        }
        if let Some(window) = &self.sliding_window {
            if window.size <= 0 || window.layers.len() as i64 != self.num_hidden_layers {
                return bad(format!(
                    "sliding window of {} over {} layer flags; num_hidden_layers is {}",
                    window.size,
                    window.layers.len(),
                    self.num_hidden_layers
                ));
            }
            if !positive(window.rope_theta) {
                return bad("the sliding layers' rope_theta must be positive".into());
            }
            window.rope_scaling.validate(path)?;
        }
        self.rope_scaling.validate(path)
    }

    /// Weights the config implies (embedding, every layer's projections and norms, final norm and
    /// an untied `lm_head`), or `None` when the count overflows an `i64`.
    pub fn parameter_count(&self) -> Option<i64> {
        let (h, d) = (self.hidden_size, self.head_dim);
        let q = self.num_attention_heads.checked_mul(d)?;
        let kv = self.num_key_value_heads.checked_mul(d)?;
        // q_proj and o_proj, k_proj and v_proj, gate/up/down.
        let attention = q.checked_mul(h)?.checked_mul(2)?;
        let attention = attention.checked_add(kv.checked_mul(h)?.checked_mul(2)?)?;
        let mlp = self.intermediate_size.checked_mul(h)?.checked_mul(3)?;
        // Norms: at most six vectors of width ≤ max(q, hidden) per layer (OLMo-2's QK-norm and
        // its two post-norms; Gemma's four and its QK-norm); an upper bound is enough for a size
        // check.
        let norms = q.max(h).checked_mul(6)?;
        let layer = attention.checked_add(mlp)?.checked_add(norms)?;
        let layers = layer.checked_mul(self.num_hidden_layers)?;
        let embedding = self.vocab_size.checked_mul(h)?;
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        layers
            .checked_add(embedding.checked_mul(heads)?)?
            .checked_add(h)
    }

    /// The dimensions RoPE rotates in each head: all of them but for GPT-NeoX's partial rotary.
    pub fn rotary_dims(&self) -> i64 {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// The factor on `q·k` before softmax: `query_pre_attn_scalar^−½` (Gemma), else `head_dim^−½`.
    pub fn attention_scale(&self) -> f64 {
        self.query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .powf(-0.5)
    }

    /// Query heads that share one KV head (GQA group size).
    pub fn kv_group_size(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The `config.json` a Hugging Face loader accepts for this config. Plain RoPE adds no key,
    /// so the JSON (and digests of it) of unscaled configs is what it was before scaling existed.
    pub fn to_hf_json(&self) -> Value {
        let model_type = self.architecture.model_type();
        let mut json = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "attention_bias": false,
        });
        if let Some(scaling) = self.rope_scaling.to_hf_json(self.rope_theta) {
            json["rope_scaling"] = scaling;
        }
        if self.architecture == Architecture::GptNeox {
            // GPTNeoXConfig's own spellings (gpt_neox_config.rs).
            json["layer_norm_eps"] = self.rms_norm_eps.into();
            json["rotary_pct"] = (self.rotary_dims() as f64 / self.head_dim as f64).into();
            json["rotary_emb_base"] = self.rope_theta.into();
            json["use_parallel_residual"] = self.parallel_residual.into();
            json["attention_bias"] = true.into();
            json["hidden_act"] = "gelu".into();
        }
        if self.architecture == Architecture::Gemma3 {
            json["hidden_activation"] = GEMMA_ACTIVATION.into();
            json["query_pre_attn_scalar"] = self.query_pre_attn_scalar.into();
        }
        attention_window::to_hf_json(
            self.sliding_window.as_ref(),
            self.architecture,
            self.num_hidden_layers,
            self.rope_theta,
            &self.rope_scaling,
            &mut json,
        );
        json
    }

    /// The window of `layer` (keys a query sees, itself included), `None` for full attention.
    pub fn attention_window(&self, layer: i64) -> Option<i64> {
        self.sliding_window.as_ref()?.of_layer(layer)
    }

    /// RoPE base and variant of `layer` (OLMo-3's windowed layers may have their own).
    pub fn layer_rope(&self, layer: i64) -> (f64, &RopeScaling) {
        match &self.sliding_window {
            Some(w) if w.of_layer(layer).is_some() => (w.rope_theta, &w.rope_scaling),
            _ => (self.rope_theta, &self.rope_scaling),
        }
    }
}

fn first_int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Array(items) => items.first().and_then(Value::as_i64),
        other => other.as_i64(),
    }
}

/// Fields that would change the computation in ways not built: refused in one line rather than
/// silently ignored (a bias or a window the forward does not apply would give wrong numbers).
fn refuse_unsupported_fields(
    value: &Value,
    architecture: Architecture,
    path: &Path,
) -> SourceResult<()> {
    let refuse = |what: String| {
        Err(SourceError::malformed(
            path,
            format!("{what} is not supported for {}", architecture.hf_class()),
        ))
    };
    for field in ["attention_bias", "use_bidirectional_attention"] {
        if value.get(field).and_then(Value::as_bool) == Some(true) {
            return refuse(format!("{field} = true"));
        }
    }
    // Gemma-2's soft-capping (Gemma-3 sets both to null); a cap not applied would change every logit.
    for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(cap) = value.get(field).filter(|v| !v.is_null()) {
            return refuse(format!("{field} = {cap}"));
        }
    }
    if architecture == Architecture::Gemma3 {
        match value.get("hidden_activation").and_then(Value::as_str) {
            None | Some(GEMMA_ACTIVATION) => {}
            Some(other) => return refuse(format!("hidden_activation {other:?}")),
        }
    }
    Ok(())
}

/// The one activation Gemma-3's MLP is built for here (`MlpKind::GeGlu`).
const GEMMA_ACTIVATION: &str = "gelu_pytorch_tanh";

fn detect_architecture(value: &Value, path: &Path) -> SourceResult<Architecture> {
    let class = value
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let model_type = value.get("model_type").and_then(Value::as_str);
    match (class, model_type) {
        (Some("Olmo2ForCausalLM"), _) | (None, Some("olmo2")) => Ok(Architecture::Olmo2),
        (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Ok(Architecture::Llama),
        (Some("Qwen2ForCausalLM"), _) | (None, Some("qwen2")) => Ok(Architecture::Qwen2),
        (Some("Qwen3ForCausalLM"), _) | (None, Some("qwen3")) => Ok(Architecture::Qwen3),
        (Some("MistralForCausalLM"), _) | (None, Some("mistral")) => Ok(Architecture::Mistral),
        (Some("Olmo3ForCausalLM"), _) | (None, Some("olmo3")) => Ok(Architecture::Olmo3),
        (Some("GPTNeoXForCausalLM"), _) | (None, Some("gpt_neox")) => Ok(Architecture::GptNeox),
        (Some("Gemma3ForCausalLM"), _) | (None, Some("gemma3_text")) => Ok(Architecture::Gemma3),
        (class, model_type) => Err(SourceError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: class.or(model_type).unwrap_or("<none given>").to_string(),
        }),
    }
}

/// Released OLMo-2 dimensions (research/olmo2.md §2), for `init:olmo2-*` sources.
pub fn olmo2_preset(name: &str) -> Option<ModelConfig> {
    let (layers, hidden, heads, kv_heads, intermediate) = match name {
        "olmo2-1b" => (16, 2048, 16, 16, 8192),
        "olmo2-7b" => (32, 4096, 32, 32, 11008),
        "olmo2-13b" => (40, 5120, 40, 40, 13824),
        "olmo2-32b" => (64, 5120, 40, 8, 27648),
        _ => return None,
    };
    Some(ModelConfig {
        architecture: Architecture::Olmo2,
        vocab_size: 100_352,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 500_000.0,
        rope_scaling: RopeScaling::Default,
        max_position_embeddings: 4096,
        sliding_window: None,
        rotary_dim: None,
        parallel_residual: false,
        query_pre_attn_scalar: None,
        tie_word_embeddings: false,
        pad_token_id: Some(100_277),
        bos_token_id: None,
        eos_token_id: Some(100_257),
    })
}

pub const OLMO2_PRESETS: [&str; 4] = ["olmo2-1b", "olmo2-7b", "olmo2-13b", "olmo2-32b"];

#[cfg(test)]
mod tests {
    use super::*;

    fn olmo_json() -> Value {
        serde_json::json!({
            "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2",
            "vocab_size": 100352, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "max_position_embeddings": 4096, "tie_word_embeddings": false
        })
    }

    #[test]
    fn rope_theta_is_read_from_rope_parameters_when_not_top_level() {
        let c = ModelConfig::from_json(&olmo_json(), Path::new("config.json")).unwrap();
        assert_eq!(c.rope_theta, 500_000.0);
        assert_eq!(c.head_dim, 128);
        assert_eq!(
            c,
            olmo2_preset("olmo2-7b")
                .map(|p| ModelConfig {
                    pad_token_id: None,
                    eos_token_id: None,
                    ..p
                })
                .unwrap()
        );
    }

    #[test]
    fn unknown_architecture_is_named_in_the_error() {
        let mut v = olmo_json();
        v["architectures"] = serde_json::json!(["Gemma2ForCausalLM"]);
        let e = ModelConfig::from_json(&v, Path::new("x/config.json")).unwrap_err();
        assert!(e.to_string().contains("Gemma2ForCausalLM"), "{e}");
        assert!(e.to_string().contains("x/config.json"), "{e}");
    }

    /// What Gemma-2 and variants would need and the forward does not build is refused by name.
    #[test]
    fn gemma_fields_the_forward_does_not_build_are_refused_in_one_line() {
        let mut base = olmo_json();
        base["architectures"] = serde_json::json!(["Gemma3ForCausalLM"]);
        base["model_type"] = serde_json::json!("gemma3_text");
        let ok = ModelConfig::from_json(&base, Path::new("g/config.json")).unwrap();
        assert_eq!(ok.architecture, Architecture::Gemma3);
        assert_eq!(ok.architecture.norm_placement(), NormPlacement::Sandwich);
        assert_eq!(ok.architecture.mlp_kind(), MlpKind::GeGlu);
        assert_eq!(ok.architecture.norm_weight_offset(), 1.0);
        assert_each_refused_in_one_line(
            &base,
            "g/config.json",
            [
                ("final_logit_softcapping", serde_json::json!(30.0)),
                ("attn_logit_softcapping", serde_json::json!(50.0)),
                ("use_bidirectional_attention", serde_json::json!(true)),
                ("hidden_activation", serde_json::json!("gelu")),
                ("query_pre_attn_scalar", serde_json::json!(0)),
            ],
        );
    }

    /// `base` with each `(field, value)` set is refused in one line naming the field and `path`.
    fn assert_each_refused_in_one_line<const N: usize>(
        base: &Value,
        path: &str,
        cases: [(&str, Value); N],
    ) {
        for (field, value) in cases {
            let mut bad = base.clone();
            bad[field] = value;
            let e = ModelConfig::from_json(&bad, Path::new(path))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains(path), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn qwen_classes_are_read_with_their_block_properties() {
        for (class, model_type, arch) in [
            ("Qwen2ForCausalLM", "qwen2", Architecture::Qwen2),
            ("Qwen3ForCausalLM", "qwen3", Architecture::Qwen3),
        ] {
            let mut v = olmo_json();
            v["architectures"] = serde_json::json!([class]);
            v["model_type"] = serde_json::json!(model_type);
            v.as_object_mut().unwrap().remove("tie_word_embeddings");
            let c = ModelConfig::from_json(&v, Path::new("config.json")).unwrap();
            assert_eq!(c.architecture, arch);
            // Both classes default to untied embeddings (Llama's default is tied).
            assert!(!c.tie_word_embeddings);
            assert_eq!(c.to_hf_json()["model_type"], model_type);
            assert_eq!(arch.norm_placement(), NormPlacement::Pre);
        }
        assert!(Architecture::Qwen2.qkv_bias() && !Architecture::Qwen3.qkv_bias());
        assert_eq!(Architecture::Qwen3.qk_norm(), QkNorm::PerHead);
        assert_eq!(Architecture::Olmo2.qk_norm(), QkNorm::WholeVector);
        assert_eq!(Architecture::Qwen2.qk_norm(), QkNorm::None);
    }

    #[test]
    fn fields_the_forward_would_ignore_are_refused_by_name() {
        for (field, class) in [
            ("attention_bias", "Qwen3ForCausalLM"),
            ("attention_bias", "LlamaForCausalLM"),
        ] {
            let mut v = olmo_json();
            v["architectures"] = serde_json::json!([class]);
            v[field] = serde_json::json!(true);
            let e = ModelConfig::from_json(&v, Path::new("m/config.json"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(field) && e.contains(class) && e.contains("m/config.json"),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
            // false (as Qwen's own config.json files spell it) is accepted.
            v[field] = serde_json::json!(false);
            assert!(ModelConfig::from_json(&v, Path::new("m/config.json")).is_ok());
        }
    }

    /// Pythia-160M's config.json (v4 spellings): rotary_pct, rotary_emb_base, layer_norm_eps.
    #[test]
    fn gpt_neox_reads_its_own_spellings_and_writes_them_back() {
        let pythia = serde_json::json!({
            "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
            "vocab_size": 50304, "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "rotary_pct": 0.25,
            "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": true,
            "hidden_act": "gelu", "max_position_embeddings": 2048, "tie_word_embeddings": false,
            "bos_token_id": 0, "eos_token_id": 0
        });
        let c = ModelConfig::from_json(&pythia, Path::new("p/config.json")).unwrap();
        assert_eq!(c.architecture, Architecture::GptNeox);
        assert_eq!(
            (c.head_dim, c.rotary_dims(), c.num_key_value_heads),
            (64, 16, 12)
        );
        assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 10000.0));
        assert!(c.parallel_residual && !c.tie_word_embeddings);
        assert_eq!(
            ModelConfig::from_json(&c.to_hf_json(), Path::new("x")).unwrap(),
            c
        );
        // v5 spelling: the partial factor inside rope_parameters.
        let mut v5 = pythia.clone();
        let object = v5.as_object_mut().unwrap();
        object.remove("rotary_pct");
        object.remove("rotary_emb_base");
        object.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        );
        let c5 = ModelConfig::from_json(&v5, Path::new("p/config.json")).unwrap();
        assert_eq!(c5.rotary_dims(), 32);
        // What the forward does not build is refused in one line naming the field.
        assert_each_refused_in_one_line(
            &pythia,
            "p/config.json",
            [
                ("hidden_act", serde_json::json!("gelu_new")),
                ("attention_bias", serde_json::json!(false)),
                ("rotary_pct", serde_json::json!(1.5)),
            ],
        );
    }

    #[test]
    fn gqa_heads_must_divide() {
        let mut v = olmo_json();
        v["num_key_value_heads"] = serde_json::json!(5);
        assert!(ModelConfig::from_json(&v, Path::new("c.json")).is_err());
    }

    #[test]
    fn max_position_embeddings_zero_is_refused() {
        let mut v = olmo_json();
        v["max_position_embeddings"] = serde_json::json!(0);
        let e = ModelConfig::from_json(&v, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_position_embeddings must be positive"),
            "{e}"
        );
    }

    #[test]
    fn hidden_not_a_multiple_of_heads_without_head_dim_is_one_error() {
        let mut v = olmo_json();
        v["hidden_size"] = serde_json::json!(4100);
        let e = ModelConfig::from_json(&v, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hidden_size (4100)") && e.contains("num_attention_heads (32)"),
            "{e}"
        );
        // With an explicit head_dim the two are independent (e.g. Gemma-style widths).
        v["head_dim"] = serde_json::json!(128);
        assert!(ModelConfig::from_json(&v, Path::new("c.json")).is_ok());
    }

    #[test]
    fn absurd_sizes_are_refused_before_allocation() {
        for (field, value, needle) in [
            ("hidden_size", 1_000_000_000_000i64, "hidden_size"),
            ("vocab_size", 10_000_000_000, "vocab_size"),
            ("num_hidden_layers", 1_000_000_000, "num_hidden_layers"),
            ("intermediate_size", i64::MAX, "intermediate_size"),
        ] {
            let mut v = olmo_json();
            v[field] = serde_json::json!(value);
            v["head_dim"] = serde_json::json!(128);
            let e = ModelConfig::from_json(&v, Path::new("c.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("largest supported"), "{e}");
        }
        // Each size within its bound, the product still too large.
        let mut v = olmo_json();
        v["hidden_size"] = serde_json::json!(MAX_WIDTH);
        v["intermediate_size"] = serde_json::json!(MAX_WIDTH);
        v["num_hidden_layers"] = serde_json::json!(MAX_LAYERS);
        let e = ModelConfig::from_json(&v, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameters"), "{e}");
        let preset = olmo2_preset("olmo2-32b").unwrap();
        assert!(preset.parameter_count().unwrap() > 30_000_000_000);
        assert!(preset.validate(Path::new("preset")).is_ok());
    }
}

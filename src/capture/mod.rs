//! The sink the layer-streamed forward pushes per-head Q/K/V (and attention maps) into.

pub mod activation_store;
pub mod recorder;

use clap::ValueEnum;
use serde::Serialize;
use tch::Tensor;

use crate::config::ModelConfig;

/// Which per-head vectors: queries, keys or values.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    ValueEnum,
    Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Q,
    K,
    V,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Q => "q",
            HeadKind::K => "k",
            HeadKind::V => "v",
        }
    }

    /// Heads of this kind per layer: query heads for Q, KV heads for K and V (GQA).
    pub fn heads(self, config: &ModelConfig) -> i64 {
        match self {
            HeadKind::Q => config.num_attention_heads,
            HeadKind::K | HeadKind::V => config.num_key_value_heads,
        }
    }
}

/// Where in attention the per-head vectors are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapturePoint {
    /// The raw projections `x·Wᵀ` split into heads.
    Proj,
    /// After QK-norm (OLMo-2); the same as `proj` for models without QK-norm.
    Normed,
    /// After QK-norm and RoPE: what the attention scores are computed from (default).
    Rope,
}

impl CapturePoint {
    pub const ALL: [CapturePoint; 3] =
        [CapturePoint::Proj, CapturePoint::Normed, CapturePoint::Rope];

    pub fn name(self) -> &'static str {
        match self {
            CapturePoint::Proj => "proj",
            CapturePoint::Normed => "normed",
            CapturePoint::Rope => "rope",
        }
    }
}

/// Per-head activations of one layer for one token batch, at one capture point.
///
/// Shapes: `queries` `[batch, num_attention_heads, seq, head_dim]`; `keys` and `values`
/// `[batch, num_key_value_heads, seq, head_dim]` (for GQA a K/V head is a KV head); `attention`
/// `[batch, num_attention_heads, seq, seq]` (rows are query positions) when the sink asked for it.
/// Values are always the raw `v_proj` output: V has neither norm nor RoPE.
pub struct LayerCapture<'a> {
    pub layer: i64,
    pub batch_index: usize,
    pub point: CapturePoint,
    pub queries: &'a Tensor,
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub attention: Option<&'a Tensor>,
}

impl LayerCapture<'_> {
    /// The per-head tensor of `kind`: `[batch, heads, seq, head_dim]`.
    pub fn heads(&self, kind: HeadKind) -> &Tensor {
        match kind {
            HeadKind::Q => self.queries,
            HeadKind::K => self.keys,
            HeadKind::V => self.values,
        }
    }

    /// The per-head vectors of `kind` as token rows `[batch·seq, heads·head_dim]` (see [`token_rows`]).
    pub fn token_rows(&self, kind: HeadKind) -> Tensor {
        token_rows(self.heads(kind))
    }
}

/// `[batch, heads, seq, head_dim]` → `[batch·seq, heads·head_dim]`: one row per token in token order
/// (sequence by sequence, position by position), heads side by side.
pub fn token_rows(heads: &Tensor) -> Tensor {
    let (b, h, s, d) = heads.size4().expect("per-head activations are 4-D");
    heads.permute([0, 2, 1, 3]).reshape([b * s, h * d])
}

/// Receives captures from the forward pass; implementations accumulate statistics or store them.
pub trait CaptureSink {
    /// Capture points this sink wants; empty means it wants nothing from this layer.
    fn points(&self, layer: i64) -> Vec<CapturePoint>;
    /// Whether the forward should compute attention probabilities for this layer (costs s² memory).
    fn wants_attention(&self, _layer: i64) -> bool {
        false
    }
    fn capture(&mut self, capture: &LayerCapture) -> anyhow::Result<()>;
    /// The attention input `x` `[batch, seq, hidden]` of `layer` for one token batch: the raw
    /// residual stream for OLMo-2 (no input norm), the input-normed stream for Llama. What Q/K/V
    /// are projections of (theory/init_bound.md: Σ is its covariance). Default: ignored.
    fn attention_input(
        &mut self,
        _layer: i64,
        _batch_index: usize,
        _x: &Tensor,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    /// The deepest layer this sink needs; a forward that returns no logits stops after it.
    fn last_layer(&self) -> Option<i64> {
        None
    }
    /// Called once every batch has passed `layer`: streaming statistics of that layer are complete.
    fn finish_layer(&mut self, _layer: i64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A sink that wants nothing: a plain forward.
pub struct NoCapture;

impl CaptureSink for NoCapture {
    fn points(&self, _layer: i64) -> Vec<CapturePoint> {
        Vec::new()
    }
    fn capture(&mut self, _capture: &LayerCapture) -> anyhow::Result<()> {
        Ok(())
    }
}

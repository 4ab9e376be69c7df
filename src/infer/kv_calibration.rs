//! Calibration of the compressed KV cache: one layer-streamed forward over calibration text,
//! accumulating per layer the fit and held-out Gram moments of every KV head's keys (before or
//! after RoPE, as the maps will work) and values, then [`plan_kind`] per compressed kind.

use anyhow::Result;
use serde::Serialize;
use tch::Tensor;
use tokenizers::Tokenizer;

use crate::analysis::predictability::LayerGrams;
use crate::capture::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::config::ModelConfig;
use crate::data::corpora::{load_documents, TextSource};
use crate::data::token_set::{Split, TokenSet, TokenSetOptions};
use crate::infer::reference_heads::{plan_kind, CompressionOptions, CompressionPlan, KvMode};
use crate::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use crate::model::head_map::KeySpace;
use crate::model::weights::LoadOptions;
use crate::source::WeightSource;
use crate::stats::gram::Moments;

/// Tokens per forward batch of the calibration pass.
const BATCH_TOKENS: usize = 4096;

/// What the calibration ran on, for the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationRecord {
    pub text: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub fit_sequences: usize,
    pub sequences: usize,
    pub token_set_sha256: String,
}

/// Per-layer [fit, held-out] moments of all KV heads, keys and values.
pub struct Calibration {
    pub keys: Vec<[Moments; 2]>,
    pub values: Vec<[Moments; 2]>,
    /// Where the key moments were taken (maps fitted on them work in this space).
    pub key_space: KeySpace,
    pub record: CalibrationRecord,
}

/// Feeds each layer's K/V captures into [fit, held-out] Grams and keeps the finished moments.
struct KvMomentSink {
    point: CapturePoint,
    grams: LayerGrams,
    keys: Vec<[Moments; 2]>,
    values: Vec<[Moments; 2]>,
}

impl CaptureSink for KvMomentSink {
    fn points(&self, _layer: i64) -> Vec<CapturePoint> {
        vec![self.point]
    }

    fn capture(&mut self, capture: &LayerCapture) -> Result<()> {
        self.grams.add(capture)
    }

    fn finish_layer(&mut self, _layer: i64) -> Result<()> {
        for (kind, moments) in self.grams.finish() {
            match kind {
                HeadKind::K => self.keys.push(moments),
                HeadKind::V => self.values.push(moments),
                HeadKind::Q => {}
            }
        }
        Ok(())
    }
}

/// Runs the calibration text through `source` and collects the moments the planner needs.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    source: &dyn WeightSource,
    tokenizer: &Tokenizer,
    text: &TextSource,
    token_options: &TokenSetOptions,
    key_space: KeySpace,
    load: &LoadOptions,
    hidden_budget: &HiddenBudget,
) -> Result<Calibration> {
    let documents = load_documents(text)?;
    let token_set = TokenSet::build(&documents, tokenizer, token_options)?;
    let record = CalibrationRecord {
        text: text.name(),
        tokens: token_options.tokens,
        seq_len: token_set.seq_len,
        seed: token_options.seed,
        fit_sequences: token_set.fit_sequences,
        sequences: token_set.sequences.len(),
        token_set_sha256: token_set.hash.clone(),
    };
    calibrate_on(
        source,
        &token_set.batches(BATCH_TOKENS),
        key_space,
        load,
        hidden_budget,
        record,
    )
}

/// [`calibrate`] on given token batches, each `([batch, seq] int64, split)`.
pub fn calibrate_on(
    source: &dyn WeightSource,
    batches: &[(Tensor, Split)],
    key_space: KeySpace,
    load: &LoadOptions,
    hidden_budget: &HiddenBudget,
    record: CalibrationRecord,
) -> Result<Calibration> {
    let point = match key_space {
        KeySpace::PreRope => CapturePoint::Normed,
        KeySpace::PostRope => CapturePoint::Rope,
    };
    let mut sink = KvMomentSink {
        point,
        grams: LayerGrams::new(
            vec![HeadKind::K, HeadKind::V],
            batches.iter().map(|(_, split)| *split).collect(),
        ),
        keys: Vec::new(),
        values: Vec::new(),
    };
    let tokens: Vec<Tensor> = batches.iter().map(|(t, _)| t.shallow_clone()).collect();
    forward_streamed(
        source,
        &tokens,
        &mut sink,
        load,
        OutputHead::None,
        hidden_budget,
        None,
    )?;
    Ok(Calibration {
        keys: sink.keys,
        values: sink.values,
        key_space,
        record,
    })
}

/// The plan for `mode`: maps for the kinds it compresses, the other kind stored whole.
pub fn plan(
    calibration: &Calibration,
    mode: KvMode,
    config: &ModelConfig,
    options: &CompressionOptions,
) -> Result<CompressionPlan> {
    let kinds = mode.kinds();
    let (kv_heads, head_dim) = (
        config.num_key_value_heads as usize,
        config.head_dim as usize,
    );
    let for_kind = |kind: HeadKind, moments: &[[Moments; 2]]| {
        kinds
            .contains(&kind)
            .then(|| plan_kind(kind, moments, kv_heads, head_dim, options))
            .transpose()
    };
    Ok(CompressionPlan {
        mode,
        options: options.clone(),
        num_layers: calibration.keys.len() as i64,
        keys: for_kind(HeadKind::K, &calibration.keys)?,
        values: for_kind(HeadKind::V, &calibration.values)?,
    })
}

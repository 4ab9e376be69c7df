//! Linear predictability of attention heads (research/linear_predictability.md §4–5): how well each
//! head's Q, K or V vectors are predicted by OLS from k peer heads of the same layer.
//!
//! Streaming: during the layer-major forward, every layer's per-kind Gram matrix of all heads'
//! vectors is accumulated for the fit and held-out splits; when the layer is finished every fit and
//! score comes from sub-blocks of those Grams, and they are freed. Memory does not grow with tokens.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::Serialize;
use tch::{Device, Tensor};

use crate::capture::{CapturePoint, CaptureSink, LayerCapture};
use crate::data::token_set::Split;
use crate::model::config::ModelConfig;
use crate::stats::gram::Gram;
use crate::stats::selection::{
    fit_and_score, select_references, single_reference_scores, Selection,
};

/// Which per-head vectors are predicted.
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

#[derive(Clone, Debug, Serialize)]
pub struct PredictabilityOptions {
    pub kinds: Vec<HeadKind>,
    pub max_refs: usize,
    pub selection: Selection,
    pub capture_point: CapturePoint,
    /// Layers to analyse (all when `None`); the forward stops after the deepest.
    pub layers: Option<Vec<i64>>,
}

impl PredictabilityOptions {
    /// Refuses options the model cannot satisfy, before any forward pass.
    pub fn check(&self, config: &ModelConfig) -> Result<()> {
        if self.kinds.is_empty() {
            bail!("--kinds: choose at least one of q, k, v");
        }
        if self.max_refs == 0 {
            bail!("--max-refs must be at least 1");
        }
        if let Some(layers) = &self.layers {
            if let Some(bad) = layers
                .iter()
                .find(|&&l| l < 0 || l >= config.num_hidden_layers)
            {
                bail!(
                    "--layers: layer {bad} does not exist (the model has layers 0..{})",
                    config.num_hidden_layers - 1
                );
            }
            if layers.is_empty() {
                bail!("--layers: name at least one layer");
            }
        }
        for kind in &self.kinds {
            let heads = kind.heads(config) as usize;
            if self.max_refs >= heads {
                bail!(
                    "--max-refs {} needs at least {} {} heads per layer to choose from; this model has {heads}",
                    self.max_refs,
                    self.max_refs + 1,
                    kind.name().to_uppercase()
                );
            }
        }
        Ok(())
    }
}

/// One (kind, layer, target head, k) result.
#[derive(Clone, Debug, Serialize)]
pub struct PredictionRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    /// Reference heads in selection order, `;`-separated.
    pub reference_heads: String,
    /// The layer of each reference head, in the same order (all equal to `layer` for same-layer candidates).
    pub reference_layers: String,
    pub r2_heldout: f64,
    pub r2_insample: f64,
    pub r2_pooled_heldout: f64,
    pub r2_pooled_insample: f64,
    pub n_fit: i64,
    pub n_heldout: i64,
    /// Empty when the numbers are real, else why they are NaN.
    pub status: String,
}

/// Single-reference R² of (`layer`, `target_head`) from (`source_layer`, `source_head`): the graph's edge.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub source_layer: i64,
    pub source_head: usize,
    pub target_head: usize,
    pub r2_insample: f64,
    pub r2_heldout: f64,
    pub status: String,
}

/// Accumulates per-layer Grams during the forward and turns each finished layer into rows.
pub struct PredictabilitySink {
    options: PredictabilityOptions,
    checkpoint: String,
    head_dim: usize,
    batch_splits: Vec<Split>,
    /// Per kind: [fit, held-out] Grams of the layer in progress.
    grams: BTreeMap<HeadKind, [Gram; 2]>,
    pub rows: Vec<PredictionRow>,
    pub edges: Vec<EdgeRow>,
}

impl PredictabilitySink {
    /// `batch_splits[i]` is the split of the forward's batch `i` (batches are split-pure).
    pub fn new(
        options: PredictabilityOptions,
        checkpoint: &str,
        config: &ModelConfig,
        batch_splits: Vec<Split>,
    ) -> Self {
        PredictabilitySink {
            options,
            checkpoint: checkpoint.to_string(),
            head_dim: config.head_dim as usize,
            batch_splits,
            grams: BTreeMap::new(),
            rows: Vec::new(),
            edges: Vec::new(),
        }
    }
}

/// `[batch, heads, seq, head_dim]` → `[batch·seq, heads·head_dim]`: one row per token, heads side by side.
pub fn token_rows(heads: &Tensor) -> Tensor {
    let (b, h, s, d) = heads.size4().expect("per-head activations are 4-D");
    heads.permute([0, 2, 1, 3]).reshape([b * s, h * d])
}

impl CaptureSink for PredictabilitySink {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        match &self.options.layers {
            Some(layers) if !layers.contains(&layer) => Vec::new(),
            _ => vec![self.options.capture_point],
        }
    }

    fn last_layer(&self) -> Option<i64> {
        self.options
            .layers
            .as_ref()
            .and_then(|l| l.iter().max().copied())
    }

    fn capture(&mut self, c: &LayerCapture) -> Result<()> {
        let split = match self.batch_splits.get(c.batch_index) {
            Some(Split::Fit) => 0,
            Some(Split::Heldout) => 1,
            None => bail!(
                "capture from batch {} that no split was declared for",
                c.batch_index
            ),
        };
        for &kind in &self.options.kinds {
            let heads = match kind {
                HeadKind::Q => c.queries,
                HeadKind::K => c.keys,
                HeadKind::V => c.values,
            };
            let rows = token_rows(heads);
            let columns = rows.size()[1];
            let device = rows.device();
            let grams = self
                .grams
                .entry(kind)
                .or_insert_with(|| [Gram::new(columns, device), Gram::new(columns, device)]);
            grams[split].add(&rows);
        }
        Ok(())
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        let grams = std::mem::take(&mut self.grams);
        for (kind, [fit_gram, heldout_gram]) in grams {
            // The many small solves below run on the CPU in f64, whatever the compute device.
            let to_cpu = |g: &Gram| {
                let m = g.moments();
                crate::stats::gram::Moments {
                    rows: m.rows,
                    means: m.means.to_device(Device::Cpu),
                    scatter: m.scatter.to_device(Device::Cpu),
                }
            };
            let (fit_split, heldout) = (to_cpu(&fit_gram), to_cpu(&heldout_gram));
            let d = self.head_dim;
            let heads = (fit_split.means.size()[0] as usize) / d;
            let single = single_reference_scores(&fit_split, &heldout, heads, d);
            for (source, row) in single.iter().enumerate() {
                for (target, scores) in row.iter().enumerate() {
                    if let Some(s) = scores {
                        self.edges.push(EdgeRow {
                            checkpoint: self.checkpoint.clone(),
                            kind,
                            layer,
                            source_layer: layer,
                            source_head: source,
                            target_head: target,
                            r2_insample: s.r2_insample,
                            r2_heldout: s.r2_heldout,
                            status: s.status.clone(),
                        });
                    }
                }
            }
            for target in 0..heads {
                let references = select_references(
                    self.options.selection,
                    &fit_split,
                    &single,
                    target,
                    heads,
                    d,
                    self.options.max_refs,
                );
                for k in 1..=references.len() {
                    let s = fit_and_score(&fit_split, &heldout, &references[..k], target, d);
                    self.rows.push(PredictionRow {
                        checkpoint: self.checkpoint.clone(),
                        kind,
                        layer,
                        target_head: target,
                        k,
                        reference_heads: references[..k]
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(";"),
                        reference_layers: vec![layer.to_string(); k].join(";"),
                        r2_heldout: s.r2_heldout,
                        r2_insample: s.r2_insample,
                        r2_pooled_heldout: s.r2_pooled_heldout,
                        r2_pooled_insample: s.r2_pooled_insample,
                        n_fit: fit_split.rows,
                        n_heldout: heldout.rows,
                        status: s.status,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Mean of the finite values and how many were not finite.
pub fn finite_mean(values: impl Iterator<Item = f64>) -> (f64, usize) {
    let (mut sum, mut n, mut bad) = (0.0, 0usize, 0usize);
    for v in values {
        if v.is_finite() {
            sum += v;
            n += 1;
        } else {
            bad += 1;
        }
    }
    (if n > 0 { sum / n as f64 } else { f64::NAN }, bad)
}

/// The population R² of predicting one head from k others when all heads' projections are
/// independent isotropic Gaussians: k·head_dim / d_model (theory/, DESIGN.md).
pub fn isotropic_r2(k: usize, head_dim: i64, hidden_size: i64) -> f64 {
    ((k as f64) * head_dim as f64 / hidden_size as f64).min(1.0)
}

//! The capture sink of `ckpt-scan theory`: per layer, the heads' predictability (fit and held-out
//! splits, analysis/predictability.rs), the attention input's moments on the fit, held-out and
//! covariance splits, the input spectrum Σ̂ from the covariance split, and the conditional
//! replications of the layer at init made from the fit and held-out moments
//! (analysis/init_prediction.rs). The moments are freed when the layer is finished.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::Tensor;

use crate::analysis::heldout_bootstrap::{resample_rows, LayerResamples};
use crate::analysis::init_prediction::{conditional_replicates, Replicates};
use crate::analysis::predictability::{PredictabilityOptions, PredictabilitySink, PredictionRow};
use crate::capture::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::config::ModelConfig;
use crate::data::token_set::Split;
use crate::stats::gram::Gram;
use crate::stats::init_bound::{spectrum_of, WeightLaw};
use crate::stats::sequence_bootstrap::resample_counts;

/// What a forward batch is used for. Covariance batches only feed Σ̂ — the spectrum behind the
/// bound and the population prediction — so that estimate is independent of the fits and scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchRole {
    Fit,
    Heldout,
    Covariance,
}

impl BatchRole {
    fn index(self) -> usize {
        match self {
            BatchRole::Fit => 0,
            BatchRole::Heldout => 1,
            BatchRole::Covariance => 2,
        }
    }
}

/// The per-layer input spectrum of one source.
#[derive(Clone, Debug)]
pub struct LayerSpectrum {
    pub layer: i64,
    /// Rows behind the estimate.
    pub rows: i64,
    /// `covariance` (its own split) or `fit` (no covariance split was given).
    pub split: &'static str,
    pub eigenvalues: Vec<f64>,
}

/// How the conditional replications are drawn.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationSettings {
    /// The law of the replicated weights: the source's own init law, Gaussian for trained sources.
    pub law: WeightLaw,
    /// Replications per layer (0: none).
    pub replications: usize,
    pub seed: u64,
    /// Key of the weight streams (the source label).
    pub stream: String,
    /// Redraws of the held-out sequences per layer for the bootstrap of the measured R² (0:
    /// none; trained sources, whose rows are compared with the replications' null per head).
    pub heldout_resamples: usize,
}

/// Runs predictability sinks (one per group of kinds sharing a reference count), accumulates each
/// analysed layer's attention-input moments per split, and replicates the layer at init.
pub struct BoundSink {
    sinks: Vec<PredictabilitySink>,
    layers: Option<Vec<i64>>,
    last_layer: Option<i64>,
    roles: Vec<BatchRole>,
    /// (heads, largest k) per distinct head count among the kinds checked.
    head_groups: BTreeMap<usize, usize>,
    head_dim: usize,
    replication: ReplicationSettings,
    inputs: BTreeMap<i64, [Gram; 3]>,
    /// The layer in progress's held-out head vectors per kind, one `[b, H, s, d_h]` per batch
    /// (kept only for the bootstrap).
    heldout_heads: BTreeMap<HeadKind, Vec<Tensor>>,
    pub spectra: Vec<LayerSpectrum>,
    /// The bootstrap of every prediction row over held-out sequences (when requested).
    pub resampled: LayerResamples,
    /// Conditional replications keyed by (layer, heads).
    pub replicates: BTreeMap<(i64, usize), Vec<Replicates>>,
}

impl BoundSink {
    /// `kinds` with at most `max_refs` references each, capped per kind at its heads − 1 (GQA
    /// models have fewer K/V heads than Q heads). `roles[i]` is what forward batch `i` is for.
    pub fn new(
        kinds: &[HeadKind],
        max_refs: usize,
        layers: Option<Vec<i64>>,
        checkpoint: &str,
        config: &ModelConfig,
        roles: Vec<BatchRole>,
        replication: ReplicationSettings,
    ) -> Result<Self> {
        let mut groups: BTreeMap<usize, Vec<HeadKind>> = BTreeMap::new();
        let mut head_groups: BTreeMap<usize, usize> = BTreeMap::new();
        for &kind in kinds {
            let heads = kind.heads(config) as usize;
            let cap = heads.saturating_sub(1).min(max_refs);
            if cap == 0 {
                bail!(
                    "{checkpoint}: {} has a single {} head per layer; nothing to predict it from",
                    kind.name().to_uppercase(),
                    kind.name().to_uppercase()
                );
            }
            groups.entry(cap).or_default().push(kind);
            let entry = head_groups.entry(heads).or_insert(0);
            *entry = (*entry).max(cap);
        }
        // The predictability sinks never see covariance batches; their entries are placeholders.
        let splits: Vec<Split> = roles
            .iter()
            .map(|r| match r {
                BatchRole::Fit => Split::Fit,
                BatchRole::Heldout | BatchRole::Covariance => Split::Heldout,
            })
            .collect();
        let mut sinks = Vec::new();
        for (cap, kinds) in groups {
            let options = PredictabilityOptions {
                kinds,
                max_refs: cap,
                selection: crate::stats::selection::Selection::Topn,
                candidates: crate::analysis::predictability::Candidates::SameLayer,
                // Pre-norm, pre-RoPE: y = W_tᵀx exactly, the theorems' setting.
                capture_point: CapturePoint::Proj,
                layers: layers.clone(),
                store_budget_bytes: 0,
            };
            options.check(config)?;
            let mut sink = PredictabilitySink::new(options, checkpoint, config, splits.clone());
            sink.retain_fit_moments = replication.heldout_resamples > 0;
            sinks.push(sink);
        }
        Ok(BoundSink {
            sinks,
            last_layer: layers.as_ref().and_then(|l| l.iter().max().copied()),
            layers,
            roles,
            head_groups,
            head_dim: config.head_dim as usize,
            replication,
            inputs: BTreeMap::new(),
            heldout_heads: BTreeMap::new(),
            spectra: Vec::new(),
            resampled: BTreeMap::new(),
            replicates: BTreeMap::new(),
        })
    }

    fn analyses(&self, layer: i64) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    fn role(&self, batch_index: usize) -> Result<BatchRole> {
        match self.roles.get(batch_index) {
            Some(role) => Ok(*role),
            None => bail!("batch {batch_index} has no declared role (fit, held-out, covariance)"),
        }
    }

    /// Every prediction row of every kind.
    pub fn prediction_rows(&self) -> Vec<&PredictionRow> {
        self.sinks.iter().flat_map(|s| s.rows.iter()).collect()
    }

    /// The prediction rows, to be changed in place (the verification's mutation checks use this
    /// to feed it deliberately wrong measurements).
    pub fn prediction_rows_mut(&mut self) -> impl Iterator<Item = &mut PredictionRow> {
        self.sinks.iter_mut().flat_map(|s| s.rows.iter_mut())
    }

    /// The bootstrap of the finished layer's rows over its held-out sequences; frees its vectors.
    fn resample_layer(&mut self, layer: i64) {
        let heldout_heads = std::mem::take(&mut self.heldout_heads);
        // One set of redraws per layer: every kind and head is scored on the same ones.
        let mut counts: Option<Vec<Vec<f64>>> = None;
        for sink in &self.sinks {
            for (kind, fit_moments) in &sink.finished_fit {
                let Some(batches) = heldout_heads.get(kind) else {
                    continue;
                };
                let heldout = Tensor::cat(batches, 0).to_kind(tch::Kind::Double);
                let counts = counts.get_or_insert_with(|| {
                    resample_counts(
                        heldout.size()[0] as usize,
                        self.replication.heldout_resamples,
                        self.replication.seed,
                        &format!("theory/bootstrap/{}/{layer}", self.replication.stream),
                    )
                });
                let mut by_k: BTreeMap<usize, Vec<&PredictionRow>> = BTreeMap::new();
                for row in sink
                    .rows
                    .iter()
                    .filter(|r| r.layer == layer && r.kind == *kind)
                {
                    by_k.entry(row.k).or_default().push(row);
                }
                for (k, rows) in by_k {
                    self.resampled.insert(
                        (layer, *kind, k),
                        resample_rows(&rows, fit_moments, &heldout, counts),
                    );
                }
            }
        }
    }
}

impl CaptureSink for BoundSink {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        if self.analyses(layer) {
            vec![CapturePoint::Proj]
        } else {
            Vec::new()
        }
    }

    fn last_layer(&self) -> Option<i64> {
        self.last_layer
    }

    fn capture(&mut self, capture: &LayerCapture) -> Result<()> {
        let role = self.role(capture.batch_index)?;
        if role == BatchRole::Covariance {
            return Ok(());
        }
        for sink in &mut self.sinks {
            sink.capture(capture)?;
        }
        if role == BatchRole::Heldout && self.replication.heldout_resamples > 0 {
            for sink in &self.sinks {
                for &kind in sink.kinds() {
                    self.heldout_heads
                        .entry(kind)
                        .or_default()
                        .push(capture.heads(kind).to_device(tch::Device::Cpu));
                }
            }
        }
        Ok(())
    }

    fn attention_input(&mut self, layer: i64, batch_index: usize, x: &Tensor) -> Result<()> {
        if !self.analyses(layer) {
            return Ok(());
        }
        let role = self.role(batch_index)?;
        let hidden = x.size().last().copied().unwrap_or(0);
        let rows = x.reshape([-1, hidden]);
        self.inputs
            .entry(layer)
            .or_insert_with(|| [0, 1, 2].map(|_| Gram::new(hidden, tch::Device::Cpu)))
            [role.index()]
        .add(&rows);
        Ok(())
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        for sink in &mut self.sinks {
            sink.finish_layer(layer)?;
        }
        self.resample_layer(layer);
        let Some([fit, heldout, covariance]) = self.inputs.remove(&layer) else {
            return Ok(());
        };
        // Σ̂ from its own split; from the fit split only when no covariance rows were given.
        let (estimate, split) = if covariance.rows >= 2 {
            (&covariance, "covariance")
        } else {
            (&fit, "fit")
        };
        let moments = estimate.moments();
        let matrix = &moments.scatter / (moments.rows - 1).max(1) as f64;
        self.spectra.push(LayerSpectrum {
            layer,
            rows: moments.rows,
            split,
            eigenvalues: spectrum_of(&matrix),
        });
        if self.replication.replications > 0 && fit.rows > 0 && heldout.rows > 0 {
            let (fit_moments, heldout_moments) = (fit.moments(), heldout.moments());
            for (&heads, &max_k) in &self.head_groups {
                let stream = format!(
                    "theory/conditional/{}/{layer}/{heads}",
                    self.replication.stream
                );
                let replicates = conditional_replicates(
                    &fit_moments,
                    &heldout_moments,
                    heads,
                    self.head_dim,
                    max_k,
                    self.replication.law,
                    self.replication.replications,
                    self.replication.seed,
                    &stream,
                );
                self.replicates.insert((layer, heads), replicates);
            }
        }
        Ok(())
    }
}

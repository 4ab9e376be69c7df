//! Linear predictability of attention heads (research/linear_predictability.md §4–5): how well each
//! head's Q, K or V vectors are predicted by OLS from k other heads, of the same layer here
//! (`--candidates same-layer`) or of the same and all earlier layers (analysis/cross_layer.rs).
//!
//! Streaming: during the layer-major forward, every layer's per-kind Gram matrix of all heads'
//! vectors is accumulated for the fit and held-out splits; when the layer is finished every fit and
//! score comes from sub-blocks of those Grams, and they are freed. Memory does not grow with tokens.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::capture::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::config::ModelConfig;
use crate::data::token_set::Split;
use crate::stats::gram::{Gram, Moments};
use crate::stats::selection::{
    fit_and_score, select_references, single_reference_scores, FitScores, HeadId, HeadLayout,
    Selection, SingleScores,
};

/// Which heads may serve as references for a target head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Candidates {
    /// The other heads of the target's layer.
    SameLayer,
    /// Every head of the target's layer and of all earlier layers, except the target (the
    /// paper's thought graph, research/linear_predictability.md §4.1–4.2).
    EarlierLayers,
}

#[derive(Clone, Debug, Serialize)]
pub struct PredictabilityOptions {
    pub kinds: Vec<HeadKind>,
    pub max_refs: usize,
    pub selection: Selection,
    pub candidates: Candidates,
    pub capture_point: CapturePoint,
    /// Layers to analyse (all when `None`); the forward stops after the deepest.
    pub layers: Option<Vec<i64>>,
    /// Most disk the earlier-layers activation store may take.
    pub store_budget_bytes: u64,
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
        if self.candidates == Candidates::EarlierLayers && self.selection == Selection::Greedy {
            bail!("--select greedy works only with --candidates same-layer: forward selection over every earlier layer's heads needs the cross-layer Gram blocks of all candidates with each chosen head; use --select topn (the paper's rule)");
        }
        // k is capped per kind and layer at the candidates there (GQA models have few K and V
        // heads); only a kind no analysed layer can predict at all is refused. The deepest
        // analysed layer offers the most candidates.
        let deepest = self.last_layer().unwrap_or(config.num_hidden_layers - 1);
        for &kind in &self.kinds {
            if self.reference_candidates(kind, deepest, config) == 0 {
                bail!(
                    "--kinds {}: this model has one {} head per layer, so no {} head has another to be predicted from{}\nhint: leave {} out of --kinds",
                    kind.name(),
                    kind.name().to_uppercase(),
                    kind.name().to_uppercase(),
                    match self.candidates {
                        Candidates::SameLayer => " in its layer",
                        Candidates::EarlierLayers => " in layer 0",
                    },
                    kind.name()
                );
            }
        }
        Ok(())
    }

    /// Heads a target of `kind` in `layer` may take references from.
    pub fn reference_candidates(&self, kind: HeadKind, layer: i64, config: &ModelConfig) -> usize {
        let heads = kind.heads(config) as usize;
        match self.candidates {
            Candidates::SameLayer => heads - 1,
            Candidates::EarlierLayers => (layer.max(0) as usize + 1) * heads - 1,
        }
    }

    /// The largest k computed for `kind` in `layer`: `--max-refs`, capped at the candidates.
    pub fn max_k(&self, kind: HeadKind, layer: i64, config: &ModelConfig) -> usize {
        self.max_refs
            .min(self.reference_candidates(kind, layer, config))
    }

    /// Analysed layers of `kind` whose k is capped below `--max-refs`, with their cap.
    pub fn capped_layers(&self, kind: HeadKind, config: &ModelConfig) -> Vec<(i64, usize)> {
        (0..config.num_hidden_layers)
            .filter(|&l| self.analyses(l))
            .map(|l| (l, self.max_k(kind, l, config)))
            .filter(|&(_, k)| k < self.max_refs)
            .collect()
    }

    /// Whether `layer` is analysed (it may still be captured as a source of deeper layers).
    pub fn analyses(&self, layer: i64) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    /// The deepest layer analysed, when not all are.
    pub fn last_layer(&self) -> Option<i64> {
        self.layers.as_ref().and_then(|l| l.iter().max().copied())
    }
}

/// One (kind, layer, target head, k) result.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// The largest k computed for this kind and layer: `--max-refs`, capped at the number of
    /// candidate heads (GQA layers have fewer K/V heads than Q heads).
    pub max_k: usize,
}

/// Single-reference R² of (`layer`, `target_head`) from (`source_layer`, `source_head`): the graph's edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// The rows both sinks produce for one finished (kind, layer).
pub(crate) struct LayerRows<'a> {
    pub checkpoint: &'a str,
    pub kind: HeadKind,
    pub layer: i64,
    pub n_fit: i64,
    pub n_heldout: i64,
}

impl LayerRows<'_> {
    /// One edge per (source, target) of `single`, in key order: source layer, source head, target.
    pub fn edges(&self, single: &SingleScores) -> Vec<EdgeRow> {
        single
            .iter()
            .map(|((source, target), s)| EdgeRow {
                checkpoint: self.checkpoint.to_string(),
                kind: self.kind,
                layer: target.layer,
                source_layer: source.layer,
                source_head: source.head,
                target_head: target.head,
                r2_insample: s.r2_insample,
                r2_heldout: s.r2_heldout,
                status: s.status.clone(),
            })
            .collect()
    }

    /// The row of `target` predicted from `references` (in selection order), one of the prefixes
    /// of its `max_k` selected references.
    pub fn prediction(
        &self,
        target: HeadId,
        references: &[HeadId],
        s: FitScores,
        max_k: usize,
    ) -> PredictionRow {
        let join =
            |f: &dyn Fn(&HeadId) -> String| references.iter().map(f).collect::<Vec<_>>().join(";");
        PredictionRow {
            checkpoint: self.checkpoint.to_string(),
            kind: self.kind,
            layer: self.layer,
            target_head: target.head,
            k: references.len(),
            reference_heads: join(&|h| h.head.to_string()),
            reference_layers: join(&|h| h.layer.to_string()),
            r2_heldout: s.r2_heldout,
            r2_insample: s.r2_insample,
            r2_pooled_heldout: s.r2_pooled_heldout,
            r2_pooled_insample: s.r2_pooled_insample,
            n_fit: self.n_fit,
            n_heldout: self.n_heldout,
            status: s.status,
            max_k,
        }
    }
}

/// Per-kind [fit, held-out] Grams of the layer in progress, fed from captures.
pub(crate) struct LayerGrams {
    kinds: Vec<HeadKind>,
    batch_splits: Vec<Split>,
    grams: BTreeMap<HeadKind, [Gram; 2]>,
}

impl LayerGrams {
    pub fn new(kinds: Vec<HeadKind>, batch_splits: Vec<Split>) -> Self {
        LayerGrams {
            kinds,
            batch_splits,
            grams: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, c: &LayerCapture) -> Result<()> {
        let split = match self.batch_splits.get(c.batch_index) {
            Some(Split::Fit) => 0,
            Some(Split::Heldout) => 1,
            None => bail!(
                "capture from batch {} that no split was declared for",
                c.batch_index
            ),
        };
        for &kind in &self.kinds {
            let rows = c.token_rows(kind);
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

    /// The finished layer's [fit, held-out] moments per kind, on the CPU; the Grams are freed.
    pub fn finish(&mut self) -> Vec<(HeadKind, [Moments; 2])> {
        // The many small solves that follow run on the CPU in f64, whatever the compute device.
        let to_cpu = |g: Gram| {
            let m = g.into_moments();
            Moments {
                rows: m.rows,
                means: m.means.to_device(Device::Cpu),
                scatter: m.scatter.to_device(Device::Cpu),
            }
        };
        std::mem::take(&mut self.grams)
            .into_iter()
            .map(|(kind, [fit, heldout])| (kind, [to_cpu(fit), to_cpu(heldout)]))
            .collect()
    }
}

/// Accumulates per-layer Grams during the forward and turns each finished layer into rows, with
/// reference candidates from the target's own layer.
pub struct PredictabilitySink {
    options: PredictabilityOptions,
    checkpoint: String,
    head_dim: usize,
    grams: LayerGrams,
    pub rows: Vec<PredictionRow>,
    pub edges: Vec<EdgeRow>,
    /// Whether to keep the last finished layer's fit-split moments in `finished_fit`.
    pub retain_fit_moments: bool,
    /// The last finished layer's fit-split moments per kind (when `retain_fit_moments`): what a
    /// caller rescoring that layer's fits on other rows needs (analysis/heldout_bootstrap.rs).
    pub finished_fit: Vec<(HeadKind, Moments)>,
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
            grams: LayerGrams::new(options.kinds.clone(), batch_splits),
            options,
            checkpoint: checkpoint.to_string(),
            head_dim: config.head_dim as usize,
            rows: Vec::new(),
            edges: Vec::new(),
            retain_fit_moments: false,
            finished_fit: Vec::new(),
        }
    }

    /// The kinds this sink analyses.
    pub fn kinds(&self) -> &[HeadKind] {
        &self.options.kinds
    }
}

/// Rows of one layer from its own heads: single-reference edges, then every target's references
/// and refits. Shared by both sinks, so a layer-0 (or same-layer) result cannot differ between them.
pub(crate) fn same_layer_rows(
    out: &LayerRows,
    selection: Selection,
    max_refs: usize,
    fit_split: &Moments,
    heldout: &Moments,
    head_dim: usize,
) -> (SingleScores, Vec<PredictionRow>) {
    let heads = (fit_split.means.size()[0] as usize) / head_dim;
    let layout = HeadLayout::layer(out.layer, heads, head_dim);
    let single = single_reference_scores(fit_split, heldout, &layout);
    let mut rows = Vec::new();
    for &target in layout.heads() {
        let references = select_references(
            selection,
            &single,
            layout.heads(),
            target,
            Some((fit_split, &layout)),
            max_refs,
        );
        for k in 1..=references.len() {
            let s = fit_and_score(fit_split, heldout, &layout, &references[..k], target);
            rows.push(out.prediction(target, &references[..k], s, references.len()));
        }
    }
    (single, rows)
}

impl CaptureSink for PredictabilitySink {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        if self.options.analyses(layer) {
            vec![self.options.capture_point]
        } else {
            Vec::new()
        }
    }

    fn last_layer(&self) -> Option<i64> {
        self.options.last_layer()
    }

    fn capture(&mut self, c: &LayerCapture) -> Result<()> {
        self.grams.add(c)
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        self.finished_fit.clear();
        for (kind, [fit_split, heldout]) in self.grams.finish() {
            let out = LayerRows {
                checkpoint: &self.checkpoint,
                kind,
                layer,
                n_fit: fit_split.rows,
                n_heldout: heldout.rows,
            };
            let (single, rows) = same_layer_rows(
                &out,
                self.options.selection,
                self.options.max_refs,
                &fit_split,
                &heldout,
                self.head_dim,
            );
            self.edges.extend(out.edges(&single));
            self.rows.extend(rows);
            if self.retain_fit_moments {
                self.finished_fit.push((kind, fit_split));
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

//! Linear predictability with references from the target's layer and all earlier layers
//! (`--candidates earlier-layers`): the paper's thought graph and top-N refits
//! (research/linear_predictability.md §4.1–4.2, §6.1), from Gram blocks computed blockwise.
//!
//! The token rows of every layer up to the deepest analysed go to an on-disk [`ActivationStore`]. When layer l is
//! finished:
//! 1. single-reference fits among its own heads, and refits whose references all lie in it, are
//!    exactly what `same-layer` computes, from the layer's streaming Gram (so layer 0 gives the
//!    same-layer results bit for bit);
//! 2. for each earlier layer m, the cross block `X_mᵀX_l` of each split is streamed from the store in
//!    row chunks, centred with both layers' means, and every source head of m is fitted to all
//!    heads of l at once; the block is then freed;
//! 3. top-k references are ranked over all candidates, and each target's refit moments are
//!    assembled from d×d blocks: within layer l from its Gram, on the diagonal from the kept
//!    per-head scatters of earlier layers, the rest streamed from the store for just those pairs.
//!
//! Nothing of size N × (layers·heads·head_dim) or (layers·heads·head_dim)² ever exists: memory holds
//! one layer's Gram, one cross block and one row chunk per split, plus per layer the means and the
//! per-head d×d scatters (layers × heads × d² × 8 bytes per split).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use tch::{Device, Tensor};

use crate::analysis::predictability::{
    EdgeRow, LayerGrams, LayerRows, PredictabilityOptions, PredictionRow,
};
use crate::capture::activation_store::{ActivationStore, ColumnBlock};
use crate::capture::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::config::ModelConfig;
use crate::data::token_set::Split;
use crate::stats::gram::Moments;
use crate::stats::regression::RegressionBlocks;
use crate::stats::selection::{
    fit_and_score, scores_by_head, select_references, single_reference_scores, HeadId, HeadLayout,
    Selection, SingleScores,
};

/// What later layers need of one split of a finished layer.
struct LayerSummary {
    rows: i64,
    /// `[heads·head_dim]`
    means: Tensor,
    /// Per head `[head_dim, head_dim]`: the diagonal blocks of the layer's scatter.
    head_scatter: Vec<Tensor>,
}

impl LayerSummary {
    fn of(moments: &Moments, heads: usize, head_dim: usize) -> Self {
        let d = head_dim as i64;
        LayerSummary {
            rows: moments.rows,
            means: moments.means.shallow_clone(),
            head_scatter: (0..heads as i64)
                .map(|h| {
                    moments
                        .scatter
                        .narrow(0, h * d, d)
                        .narrow(1, h * d, d)
                        .copy()
                })
                .collect(),
        }
    }

    fn head_means(&self, head: usize, head_dim: usize) -> Tensor {
        let d = head_dim as i64;
        self.means.narrow(0, head as i64 * d, d)
    }
}

/// Centred cross-products `Σ aᵀb − n·μ_a μ_bᵀ`, as [`crate::stats::gram::Gram::scatter`] centres.
fn centre(cross: &Tensor, rows: i64, means_a: &Tensor, means_b: &Tensor) -> Tensor {
    cross.to_device(Device::Cpu) - means_a.outer(means_b) * rows as f64
}

const SPLITS: [Split; 2] = [Split::Fit, Split::Heldout];

/// The earlier-layers counterpart of [`crate::analysis::predictability::PredictabilitySink`].
pub struct CrossLayerSink {
    options: PredictabilityOptions,
    checkpoint: String,
    head_dim: usize,
    heads: BTreeMap<HeadKind, usize>,
    store: ActivationStore,
    grams: LayerGrams,
    /// Per kind, per finished layer: [fit, held-out] summaries.
    history: BTreeMap<HeadKind, Vec<[LayerSummary; 2]>>,
    /// Where the captures arrive, and so where the big cross blocks are multiplied.
    device: Device,
    pub rows: Vec<PredictionRow>,
    pub edges: Vec<EdgeRow>,
}

impl CrossLayerSink {
    /// `store` must hold layers `0..=` the deepest analysed, for every kind analysed, at the
    /// options' capture point; `batch_splits[i]` is the split of the forward's batch `i`.
    pub fn new(
        options: PredictabilityOptions,
        checkpoint: &str,
        config: &ModelConfig,
        batch_splits: Vec<Split>,
        store: ActivationStore,
    ) -> Self {
        let heads = options
            .kinds
            .iter()
            .map(|&k| (k, k.heads(config) as usize))
            .collect();
        CrossLayerSink {
            grams: LayerGrams::new(options.kinds.clone(), batch_splits),
            options,
            checkpoint: checkpoint.to_string(),
            head_dim: config.head_dim as usize,
            heads,
            store,
            history: BTreeMap::new(),
            device: Device::Cpu,
            rows: Vec::new(),
            edges: Vec::new(),
        }
    }

    fn column_block(&self, kind: HeadKind, head: HeadId) -> ColumnBlock {
        let d = self.head_dim as i64;
        ColumnBlock {
            kind,
            layer: head.layer,
            start: head.head as i64 * d,
            width: d,
        }
    }

    fn layer_block(&self, kind: HeadKind, layer: i64) -> ColumnBlock {
        ColumnBlock {
            kind,
            layer,
            start: 0,
            width: (self.heads[&kind] * self.head_dim) as i64,
        }
    }

    /// Means of `head` in split `s`: from the layer in progress or from an earlier layer's summary.
    fn head_means(&self, kind: HeadKind, head: HeadId, layer: &[Moments; 2], s: usize) -> Tensor {
        let d = self.head_dim as i64;
        match self.history[&kind].get(head.layer as usize) {
            Some(summary) => summary[s].head_means(head.head, self.head_dim),
            None => layer[s].means.narrow(0, head.head as i64 * d, d),
        }
    }

    /// Analyses finished layer `l` of `kind` from its moments and the store.
    fn analyse(&mut self, kind: HeadKind, l: i64, layer: &[Moments; 2]) -> Result<()> {
        let (d, heads) = (self.head_dim, self.heads[&kind]);
        // 1. Sources in the layer itself: exactly as same-layer, from the layer's own Gram.
        let layer_layout = HeadLayout::layer(l, heads, d);
        let mut single = single_reference_scores(&layer[0], &layer[1], &layer_layout);
        // 2. Sources in earlier layers.
        for m in 0..l {
            single.extend(self.earlier_layer_scores(kind, m, l, layer)?);
        }
        let out = LayerRows {
            checkpoint: &self.checkpoint,
            kind,
            layer: l,
            n_fit: layer[0].rows,
            n_heldout: layer[1].rows,
        };
        self.edges.extend(out.edges(&single));

        // 3. Top-k references over every candidate, then refits.
        let candidates: Vec<HeadId> = (0..=l)
            .flat_map(|m| (0..heads).map(move |h| HeadId::new(m, h)))
            .collect();
        let chosen: Vec<(HeadId, Vec<HeadId>)> = (0..heads)
            .map(|t| {
                let target = HeadId::new(l, t);
                let references = select_references(
                    Selection::Topn,
                    &single,
                    &candidates,
                    target,
                    None,
                    self.options.max_refs,
                );
                (target, references)
            })
            .collect();
        let pair_scatter = self.pair_scatters(kind, l, layer, &chosen)?;
        let mut rows = Vec::new();
        for (target, references) in chosen {
            let mut all = references.clone();
            all.push(target);
            // References all in layer l (always so in layer 0): the same-layer computation.
            let assembled;
            let (fit_split, heldout, layout) = if all.iter().all(|h| h.layer == l) {
                (&layer[0], &layer[1], &layer_layout)
            } else {
                assembled = (
                    self.joint_moments(kind, l, layer, 0, &all, &pair_scatter[0]),
                    self.joint_moments(kind, l, layer, 1, &all, &pair_scatter[1]),
                    HeadLayout::new(all, d),
                );
                (&assembled.0, &assembled.1, &assembled.2)
            };
            for k in 1..=references.len() {
                let score = fit_and_score(fit_split, heldout, layout, &references[..k], target);
                rows.push(out.prediction(target, &references[..k], score, references.len()));
            }
        }
        self.rows.extend(rows);
        Ok(())
    }

    /// Single-reference scores of every head of layer `l` from every head of earlier layer `m`:
    /// the cross block `X_mᵀX_l` of each split is streamed from the store, centred, and each source
    /// head is fitted to all of layer l's heads at once; the block is freed on return.
    fn earlier_layer_scores(
        &self,
        kind: HeadKind,
        m: i64,
        l: i64,
        layer: &[Moments; 2],
    ) -> Result<SingleScores> {
        let d = self.head_dim;
        let pair = [(self.layer_block(kind, m), self.layer_block(kind, l))];
        let sources = &self.history[&kind][m as usize];
        let mut blocks_by_head: Vec<Vec<RegressionBlocks>> =
            (0..self.heads[&kind]).map(|_| Vec::new()).collect();
        for (s, split) in SPLITS.into_iter().enumerate() {
            let cross = self
                .store
                .cross_products(split, &pair, self.device)?
                .remove(0);
            let scatter = centre(&cross, sources[s].rows, &sources[s].means, &layer[s].means);
            let target_variances = layer[s].scatter.diagonal(0, 0, 1);
            for (h, blocks) in blocks_by_head.iter_mut().enumerate() {
                blocks.push(RegressionBlocks {
                    rows: sources[s].rows,
                    mean_features: sources[s].head_means(h, d),
                    mean_targets: layer[s].means.shallow_clone(),
                    scatter_features: sources[s].head_scatter[h].shallow_clone(),
                    scatter_cross: scatter.narrow(0, (h * d) as i64, d as i64),
                    scatter_targets: target_variances.shallow_clone(),
                });
            }
        }
        let mut single = SingleScores::new();
        for (h, blocks) in blocks_by_head.iter().enumerate() {
            let scores = scores_by_head(&blocks[0], Some(&blocks[1]), d);
            for (t, score) in scores.into_iter().enumerate() {
                single.insert((HeadId::new(m, h), HeadId::new(l, t)), score);
            }
        }
        Ok(single)
    }

    /// Centred d×d scatter blocks, per split, of every pair of distinct heads that some target's
    /// refit needs and that do not both lie in layer `l` (those come from its Gram), streamed from
    /// the store for just those columns. Keyed by (lower, higher) head.
    fn pair_scatters(
        &self,
        kind: HeadKind,
        l: i64,
        layer: &[Moments; 2],
        chosen: &[(HeadId, Vec<HeadId>)],
    ) -> Result<[BTreeMap<(HeadId, HeadId), Tensor>; 2]> {
        let mut pairs: BTreeSet<(HeadId, HeadId)> = BTreeSet::new();
        for (target, references) in chosen {
            let all: Vec<HeadId> = references.iter().chain([target]).copied().collect();
            for (i, &a) in all.iter().enumerate() {
                for &b in &all[i + 1..] {
                    if a.layer != l || b.layer != l {
                        pairs.insert((a.min(b), a.max(b)));
                    }
                }
            }
        }
        let mut scatters: [BTreeMap<(HeadId, HeadId), Tensor>; 2] = Default::default();
        if pairs.is_empty() {
            return Ok(scatters);
        }
        let column_pairs: Vec<(ColumnBlock, ColumnBlock)> = pairs
            .iter()
            .map(|&(a, b)| (self.column_block(kind, a), self.column_block(kind, b)))
            .collect();
        for (s, split) in SPLITS.into_iter().enumerate() {
            let crosses = self
                .store
                .cross_products(split, &column_pairs, self.device)?;
            for (&(a, b), cross) in pairs.iter().zip(crosses) {
                let centred = centre(
                    &cross,
                    layer[s].rows,
                    &self.head_means(kind, a, layer, s),
                    &self.head_means(kind, b, layer, s),
                );
                scatters[s].insert((a, b), centred);
            }
        }
        Ok(scatters)
    }

    /// Moments of split `s` over the columns of `heads` (in order), assembled from d×d blocks.
    fn joint_moments(
        &self,
        kind: HeadKind,
        l: i64,
        layer: &[Moments; 2],
        s: usize,
        heads: &[HeadId],
        pair_scatter: &BTreeMap<(HeadId, HeadId), Tensor>,
    ) -> Moments {
        let d = self.head_dim as i64;
        let block = |a: HeadId, b: HeadId| -> Tensor {
            if a.layer == l && b.layer == l {
                layer[s]
                    .scatter
                    .narrow(0, a.head as i64 * d, d)
                    .narrow(1, b.head as i64 * d, d)
            } else if a == b {
                self.history[&kind][a.layer as usize][s].head_scatter[a.head].shallow_clone()
            } else if a < b {
                pair_scatter[&(a, b)].shallow_clone()
            } else {
                pair_scatter[&(b, a)].transpose(0, 1)
            }
        };
        let scatter_rows: Vec<Tensor> = heads
            .iter()
            .map(|&a| {
                let row: Vec<Tensor> = heads.iter().map(|&b| block(a, b)).collect();
                Tensor::cat(&row, 1)
            })
            .collect();
        let means: Vec<Tensor> = heads
            .iter()
            .map(|&h| self.head_means(kind, h, layer, s))
            .collect();
        Moments {
            rows: layer[s].rows,
            means: Tensor::cat(&means, 0),
            scatter: Tensor::cat(&scatter_rows, 0),
        }
    }
}

impl CaptureSink for CrossLayerSink {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        self.store.points(layer)
    }

    fn last_layer(&self) -> Option<i64> {
        self.store.last_layer()
    }

    fn capture(&mut self, c: &LayerCapture) -> Result<()> {
        self.device = c.keys.device();
        self.store.capture(c)?;
        self.grams.add(c)
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        self.store.finish_layer(layer)?;
        for (kind, moments) in self.grams.finish() {
            if self.options.analyses(layer) {
                self.analyse(kind, layer, &moments)?;
            }
            let summary = moments
                .each_ref()
                .map(|m| LayerSummary::of(m, self.heads[&kind], self.head_dim));
            self.history.entry(kind).or_default().push(summary);
        }
        Ok(())
    }
}

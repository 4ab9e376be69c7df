//! The compressed KV cache's plan: which KV heads are targets (never cached, rebuilt from
//! same-layer reference heads by an OLS map) and the fitted maps. Pure: calibration moments in,
//! [`HeadMap`]s out (`kv_calibration` produces the moments).
//!
//! Choice of targets, per kind (K and V independently, as the paper's code): every KV head is
//! scored by the held-out pooled R² of its best greedy reference set among the other heads of its
//! layer; heads are taken best first, across all layers, until `fraction` of all heads are
//! targets, while each layer keeps at least `min_refs` stored heads. Each target's references are
//! then chosen greedily (fit split) among its layer's *stored* heads, at most `max_refs`, and its
//! map fitted on the fit split; the held-out R² reported is that final map's.

use std::rc::Rc;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::capture::HeadKind;
use crate::model::head_map::{HeadMap, KeySpace};
use crate::stats::gram::Moments;
use crate::stats::regression::fit;
use crate::stats::selection::{
    fit_and_score, select_references, HeadId, HeadLayout, Selection, SingleScores,
};

/// Which of keys and values the cache compresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvMode {
    K,
    V,
    Kv,
}

impl KvMode {
    pub fn name(self) -> &'static str {
        match self {
            KvMode::K => "k",
            KvMode::V => "v",
            KvMode::Kv => "kv",
        }
    }

    pub fn kinds(self) -> Vec<HeadKind> {
        match self {
            KvMode::K => vec![HeadKind::K],
            KvMode::V => vec![HeadKind::V],
            KvMode::Kv => vec![HeadKind::K, HeadKind::V],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CompressionOptions {
    /// Fraction of all KV heads (per kind) to rebuild instead of cache.
    pub fraction: f64,
    pub min_refs: usize,
    pub max_refs: usize,
    pub key_space: KeySpace,
}

impl CompressionOptions {
    pub fn check(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.fraction) {
            bail!(
                "--kv-compress {} must lie in [0, 1): the fraction of KV heads rebuilt",
                self.fraction
            );
        }
        if self.min_refs == 0 || self.min_refs > self.max_refs {
            bail!(
                "--kv-min-refs {} / --kv-max-refs {}: need 1 ≤ min ≤ max",
                self.min_refs,
                self.max_refs
            );
        }
        Ok(())
    }
}

/// One rebuilt head, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct TargetRow {
    /// The compression mode (`kv-k`, `kv-v`, `kv-kv`) this plan belongs to.
    pub mode: String,
    pub kind: String,
    pub layer: i64,
    pub target: usize,
    /// Reference heads of the same layer, in selection order, space-separated.
    pub references: String,
    /// The held-out pooled R² that ranked it (best references among all other heads).
    pub rank_r2_heldout: f64,
    /// The final map (references among stored heads only).
    pub r2_heldout: f64,
    pub r2_pooled_heldout: f64,
    pub r2_insample: f64,
}

/// The maps of one kind: per layer, `None` where nothing is rebuilt.
pub struct KindPlan {
    pub kind: HeadKind,
    pub maps: Vec<Option<Rc<HeadMap>>>,
    pub rows: Vec<TargetRow>,
    pub heads_total: usize,
    /// `fraction · heads_total` rounded: what was asked.
    pub targets_wanted: usize,
}

impl KindPlan {
    /// Heads rebuilt over all layers.
    pub fn targets(&self) -> usize {
        self.maps.iter().flatten().map(|m| m.targets.len()).sum()
    }
}

pub struct CompressionPlan {
    pub mode: KvMode,
    pub options: CompressionOptions,
    pub num_layers: i64,
    pub keys: Option<KindPlan>,
    pub values: Option<KindPlan>,
}

impl CompressionPlan {
    pub fn rows(&self) -> Vec<TargetRow> {
        [&self.keys, &self.values]
            .into_iter()
            .flatten()
            .flat_map(|p| p.rows.clone())
            .map(|row| TargetRow {
                mode: format!("kv-{}", self.mode.name()),
                ..row
            })
            .collect()
    }

    /// Fraction of the K and V head slots the cache no longer holds (the paper's accounting:
    /// compression 1/(1 − this), maps and positions not counted).
    pub fn dropped_fraction(&self) -> f64 {
        let plans = || [&self.keys, &self.values].into_iter().flatten();
        let heads = plans().map(|p| p.heads_total).max().unwrap_or(0);
        let dropped: usize = plans().map(KindPlan::targets).sum();
        dropped as f64 / (2 * heads).max(1) as f64
    }
}

/// Plans one kind from each layer's [fit, held-out] moments over all its KV heads.
pub fn plan_kind(
    kind: HeadKind,
    moments: &[[Moments; 2]],
    heads: usize,
    head_dim: usize,
    options: &CompressionOptions,
) -> Result<KindPlan> {
    options.check()?;
    let heads_total = moments.len() * heads;
    let targets_wanted = (options.fraction * heads_total as f64).round() as usize;
    let per_layer_cap = heads.saturating_sub(options.min_refs);
    let no_single = SingleScores::new();
    let best_refs = |layer: usize, target: usize, candidates: &[usize]| {
        let layout = HeadLayout::layer(layer as i64, heads, head_dim);
        let [fit_split, heldout] = &moments[layer];
        let id = |h: usize| HeadId::new(layer as i64, h);
        let candidates: Vec<HeadId> = candidates.iter().map(|&h| id(h)).collect();
        let refs = select_references(
            Selection::Greedy,
            &no_single,
            &candidates,
            id(target),
            Some((fit_split, &layout)),
            options.max_refs,
        );
        let scores = fit_and_score(fit_split, heldout, &layout, &refs, id(target));
        (refs, scores)
    };

    // Rank every head by its best achievable held-out R².
    let mut ranked: Vec<(usize, usize, f64)> = Vec::new();
    for layer in 0..moments.len() {
        let all: Vec<usize> = (0..heads).collect();
        for target in 0..heads {
            let (_, scores) = best_refs(layer, target, &all);
            let r2 = scores.r2_pooled_heldout;
            ranked.push((
                layer,
                target,
                if r2.is_nan() { f64::NEG_INFINITY } else { r2 },
            ));
        }
    }
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    let mut chosen: Vec<Vec<(usize, f64)>> = vec![Vec::new(); moments.len()];
    let mut count = 0;
    for &(layer, target, r2) in &ranked {
        if count == targets_wanted {
            break;
        }
        if chosen[layer].len() < per_layer_cap && r2.is_finite() {
            chosen[layer].push((target, r2));
            count += 1;
        }
    }

    let mut maps = Vec::with_capacity(moments.len());
    let mut rows = Vec::new();
    let d = head_dim as i64;
    for (layer, targets) in chosen.iter_mut().enumerate() {
        if targets.is_empty() {
            maps.push(None);
            continue;
        }
        targets.sort_by_key(|&(t, _)| t);
        let target_heads: Vec<usize> = targets.iter().map(|&(t, _)| t).collect();
        let stored: Vec<usize> = (0..heads).filter(|h| !target_heads.contains(h)).collect();
        let layout = HeadLayout::layer(layer as i64, heads, head_dim);
        let coefficients = Tensor::zeros(
            [stored.len() as i64 * d, target_heads.len() as i64 * d],
            (Kind::Double, tch::Device::Cpu),
        );
        let intercept = Tensor::zeros(
            [target_heads.len() as i64 * d],
            (Kind::Double, tch::Device::Cpu),
        );
        for (slot, &(target, rank_r2)) in targets.iter().enumerate() {
            let (refs, scores) = best_refs(layer, target, &stored);
            let model = fit(
                &moments[layer][0],
                &layout.columns_of(&refs),
                &layout.columns(HeadId::new(layer as i64, target)),
            )
            .map_err(|e| anyhow::anyhow!("{} layer {layer} head {target}: {e}", kind.name()))?;
            let columns = coefficients.narrow(1, slot as i64 * d, d);
            for (i, reference) in refs.iter().enumerate() {
                let row = stored
                    .iter()
                    .position(|&h| h == reference.head)
                    .expect("references are stored heads") as i64;
                columns
                    .narrow(0, row * d, d)
                    .copy_(&model.coefficients.narrow(0, i as i64 * d, d));
            }
            intercept
                .narrow(0, slot as i64 * d, d)
                .copy_(&model.intercept);
            rows.push(TargetRow {
                mode: String::new(),
                kind: kind.name().into(),
                layer: layer as i64,
                target,
                references: refs
                    .iter()
                    .map(|r| r.head.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                rank_r2_heldout: rank_r2,
                r2_heldout: scores.r2_heldout,
                r2_pooled_heldout: scores.r2_pooled_heldout,
                r2_insample: scores.r2_insample,
            });
        }
        maps.push(Some(Rc::new(HeadMap::new(
            heads,
            head_dim,
            stored,
            target_heads,
            coefficients,
            intercept,
        ))));
    }
    Ok(KindPlan {
        kind,
        maps,
        rows,
        heads_total,
        targets_wanted,
    })
}

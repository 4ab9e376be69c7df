//! One alignment measurement of a source: weight-only principal angles and R² for every layer
//! and kind, with measured held-out R² set beside the weights' prediction for the same references.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::analysis::alignment::{
    align_layer, head_blocks, null_spread, spearman, AlignmentOptions, LayerRow, PairRow,
    WeightR2Row,
};
use crate::analysis::predictability::PredictionRow;
use crate::capture::HeadKind;
use crate::source::WeightSource;
use crate::stats::principal_angles::weight_only_r2;

/// A measured held-out R² beside the weights' prediction of it, for the same reference set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WeightVsMeasuredRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    pub reference_heads: String,
    pub r2_heldout: f64,
    pub weight_r2: f64,
}

/// A measured held-out R² and its reference set, to set beside the weights' prediction (a row of
/// `predict`'s predictability.csv).
#[derive(Clone, Debug, Deserialize)]
pub struct MeasuredReferenceSet {
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    /// `;`-separated head indices, as predict writes them.
    pub reference_heads: String,
    /// The layer of each reference head; absent in files that predate cross-layer candidates.
    pub reference_layers: Option<String>,
    pub r2_heldout: f64,
}

impl MeasuredReferenceSet {
    /// Whether every reference head is in the target's layer (only those have weights to compare).
    fn is_same_layer(&self) -> bool {
        self.reference_layers
            .as_deref()
            .is_none_or(|l| l.split(';').all(|x| x == self.layer.to_string()))
    }
}

impl From<&PredictionRow> for MeasuredReferenceSet {
    fn from(row: &PredictionRow) -> Self {
        MeasuredReferenceSet {
            kind: row.kind,
            layer: row.layer,
            target_head: row.target_head,
            k: row.k,
            reference_heads: row.reference_heads.clone(),
            reference_layers: Some(row.reference_layers.clone()),
            r2_heldout: row.r2_heldout,
        }
    }
}

/// Everything `align` produced for one checkpoint, before it is written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AlignOutput {
    pub layers: Vec<LayerRow>,
    pub pairs: Vec<PairRow>,
    pub weight_rows: Vec<WeightR2Row>,
    /// Measured vs weight-only R², for the measured reference sets given.
    pub versus: Vec<WeightVsMeasuredRow>,
}

impl AlignOutput {
    /// Spearman ρ between weight-only and measured R², per kind with rows: (kind, ρ, rows).
    pub fn spearman_by_kind(&self, kinds: &[HeadKind]) -> Vec<(HeadKind, f64, usize)> {
        kinds
            .iter()
            .filter_map(|&kind| {
                let sel: Vec<&WeightVsMeasuredRow> =
                    self.versus.iter().filter(|r| r.kind == kind).collect();
                (!sel.is_empty()).then(|| {
                    let x: Vec<f64> = sel.iter().map(|r| r.weight_r2).collect();
                    let y: Vec<f64> = sel.iter().map(|r| r.r2_heldout).collect();
                    (kind, spearman(&x, &y), sel.len())
                })
            })
            .collect()
    }
}

/// Runs the weight-only analysis on an open source, one layer's projections at a time.
///
/// Measured reference sets that span several layers are skipped: their weights live in other layers.
pub fn run_alignment(
    source: &dyn WeightSource,
    options: &AlignmentOptions,
    max_refs: usize,
    measured: &[MeasuredReferenceSet],
    progress: &mut dyn FnMut(i64, i64),
) -> Result<AlignOutput> {
    let config = source.config();
    let mut by_layer: HashMap<(HeadKind, i64), Vec<&MeasuredReferenceSet>> = HashMap::new();
    for row in measured.iter().filter(|r| r.is_same_layer()) {
        by_layer.entry((row.kind, row.layer)).or_default().push(row);
    }
    let nulls: HashMap<HeadKind, (f64, f64)> = options
        .kinds
        .iter()
        .map(|&k| {
            (
                k,
                null_spread(
                    config.hidden_size,
                    config.head_dim,
                    options.null_samples,
                    options.seed,
                ),
            )
        })
        .collect();
    let mut output = AlignOutput::default();
    for layer in 0..config.num_hidden_layers {
        for &kind in &options.kinds {
            let blocks = head_blocks(source, layer, kind, options.fold_norm)?;
            let result = align_layer(
                &source.provenance().spec,
                kind,
                layer,
                &blocks,
                max_refs,
                options,
                nulls[&kind],
            );
            for m in by_layer.get(&(kind, layer)).into_iter().flatten() {
                let refs: Vec<usize> = m
                    .reference_heads
                    .split(';')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!(
                            "reference heads {:?} are not head indices",
                            m.reference_heads
                        )
                    })?;
                if let Some(&bad) = refs.iter().find(|&&r| r >= blocks.len()) {
                    bail!(
                        "measured reference head {bad} of layer {layer} does not exist ({} {} heads)",
                        blocks.len(),
                        kind.name().to_uppercase()
                    );
                }
                let w_refs = Tensor::cat(
                    &refs
                        .iter()
                        .map(|&r| blocks[r].shallow_clone())
                        .collect::<Vec<_>>(),
                    1,
                );
                output.versus.push(WeightVsMeasuredRow {
                    checkpoint: source.provenance().spec.clone(),
                    kind,
                    layer,
                    target_head: m.target_head,
                    k: m.k,
                    reference_heads: m.reference_heads.clone(),
                    r2_heldout: m.r2_heldout,
                    weight_r2: weight_only_r2(&blocks[m.target_head], &w_refs),
                });
            }
            output.layers.push(result.layer);
            output.pairs.extend(result.pairs);
            output.weight_rows.extend(result.weight_r2);
        }
        progress(layer + 1, config.num_hidden_layers);
    }
    Ok(output)
}

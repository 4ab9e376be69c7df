//! A scan's rows across checkpoints (checkpoints, predictability, alignment, sinks) and the
//! summary means per checkpoint, kind and k that the report and figures show.

use serde::Serialize;

use crate::analysis::alignment::{LayerRow, PairRow, WeightR2Row};
use crate::analysis::alignment_pass::{AlignOutput, WeightVsMeasuredRow};
use crate::analysis::predictability::{finite_mean, isotropic_r2, PredictionRow};
use crate::analysis::sinks::SinkRow;
use crate::capture::HeadKind;
use crate::config::ModelConfig;

/// One checkpoint of the scan, for checkpoints.csv.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointRow {
    pub checkpoint: String,
    pub step: Option<u64>,
    pub tokens: String,
    pub is_init: bool,
    pub source: String,
    pub revision_sha: String,
    pub fingerprint: String,
    /// The earlier checkpoint with identical weights, if any.
    pub duplicate_of: String,
}

/// One number of the per-checkpoint summary, in long form.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SummaryRow {
    pub checkpoint: String,
    pub step: Option<u64>,
    pub is_init: bool,
    pub kind: String,
    /// Reference-set size, 0 where the metric has none.
    pub k: usize,
    pub metric: String,
    pub value: f64,
    /// Finite values the mean is over.
    pub n: usize,
}

/// Every row of the scan, in checkpoint order.
#[derive(Default)]
pub struct ScanTables {
    pub checkpoints: Vec<CheckpointRow>,
    pub labels: Vec<String>,
    pub predictions: Vec<PredictionRow>,
    pub alignment_layers: Vec<LayerRow>,
    pub alignment_pairs: Vec<PairRow>,
    pub weight_r2: Vec<WeightR2Row>,
    pub weight_vs_measured: Vec<WeightVsMeasuredRow>,
    pub sinks: Vec<SinkRow>,
}

impl ScanTables {
    /// Adds one checkpoint's rows (already labelled).
    pub fn add(
        &mut self,
        label: &str,
        predictions: Vec<PredictionRow>,
        align: AlignOutput,
        sinks: Vec<SinkRow>,
    ) {
        self.labels.push(label.to_string());
        self.predictions.extend(predictions);
        self.alignment_layers.extend(align.layers);
        self.alignment_pairs.extend(align.pairs);
        self.weight_r2.extend(align.weight_rows);
        self.weight_vs_measured.extend(align.versus);
        self.sinks.extend(sinks);
    }

    /// Means per checkpoint, kind and k over layers and heads.
    pub fn summary(
        &self,
        kinds: &[HeadKind],
        max_refs: usize,
        config: &ModelConfig,
    ) -> Vec<SummaryRow> {
        let mut rows = Vec::new();
        for c in &self.checkpoints {
            let mut push = |kind: &str, k: usize, metric: &str, (value, n): (f64, usize)| {
                rows.push(SummaryRow {
                    checkpoint: c.checkpoint.clone(),
                    step: c.step,
                    is_init: c.is_init,
                    kind: kind.to_string(),
                    k,
                    metric: metric.to_string(),
                    value,
                    n,
                })
            };
            for &kind in kinds {
                let name = kind.name();
                let preds = || {
                    self.predictions
                        .iter()
                        .filter(move |r| r.checkpoint == c.checkpoint && r.kind == kind)
                };
                for k in 1..=max_refs {
                    push(
                        name,
                        k,
                        "r2_heldout",
                        mean_and_count(preds().filter(|r| r.k == k).map(|r| r.r2_heldout)),
                    );
                    push(
                        name,
                        k,
                        "r2_insample",
                        mean_and_count(preds().filter(|r| r.k == k).map(|r| r.r2_insample)),
                    );
                    push(
                        name,
                        k,
                        "weight_r2",
                        mean_and_count(
                            self.weight_vs_measured
                                .iter()
                                .filter(|r| {
                                    r.checkpoint == c.checkpoint && r.kind == kind && r.k == k
                                })
                                .map(|r| r.weight_r2),
                        ),
                    );
                    push(
                        name,
                        k,
                        "isotropic_bound",
                        (isotropic_r2(k, config.head_dim, config.hidden_size), 1),
                    );
                }
                let layers = || {
                    self.alignment_layers
                        .iter()
                        .filter(move |r| r.checkpoint == c.checkpoint && r.kind == kind)
                };
                push(
                    name,
                    0,
                    "mean_cos2",
                    mean_and_count(layers().map(|r| r.mean_pairwise_cos2)),
                );
                push(
                    name,
                    0,
                    "null_cos2",
                    mean_and_count(layers().map(|r| r.null_mean_cos2)),
                );
                push(
                    name,
                    0,
                    "overlap_dimension",
                    mean_and_count(layers().map(|r| r.overlap_dimension as f64)),
                );
            }
            let sinks = || self.sinks.iter().filter(|r| r.checkpoint == c.checkpoint);
            push(
                "attention",
                0,
                "first_column_score",
                mean_and_count(sinks().map(|r| r.first_column_score)),
            );
            push(
                "attention",
                0,
                "sinks_beyond_first",
                mean_and_count(sinks().map(|r| r.sinks_beyond_first_evidenced)),
            );
            push(
                "attention",
                0,
                "heads_with_extra_sink",
                mean_and_count(
                    sinks().map(|r| f64::from(u8::from(r.share_with_extra_sink >= 0.5))),
                ),
            );
        }
        rows
    }
}

/// The mean of the finite values and how many there were (a summary row's `n`).
fn mean_and_count(values: impl Iterator<Item = f64>) -> (f64, usize) {
    let values: Vec<f64> = values.collect();
    let (mean, non_finite) = finite_mean(values.iter().copied());
    (mean, values.len() - non_finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `n` held the count of non-finite values, so a full row read `n = 0`.
    #[test]
    fn summary_n_counts_the_finite_values_the_mean_is_over() {
        let (mean, n) = mean_and_count([1.0, f64::NAN, 3.0].into_iter());
        assert_eq!((mean, n), (2.0, 2));
        assert_eq!(mean_and_count(std::iter::empty()).1, 0);
    }
}

//! Per-head attention-sink statistics with ACT's detection rule (research/act.md §1.1): a key
//! position is a sink candidate when the mean attention it receives over the queries that can see
//! it exceeds τ; the earliest candidate (in practice the first token) is exempt.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::capture::{CapturePoint, CaptureSink, LayerCapture};

/// ACT's absolute threshold on the visible-query column mean (0.1 in the released scripts).
pub const SINK_THRESHOLD: f64 = 0.1;
/// A late key is seen by few queries (the last by one), so its column mean is weak evidence; the
/// second count keeps only sinks seen by at least this many queries.
pub const MIN_VISIBLE_QUERIES: i64 = 16;

/// Column scores of causal attention: `a_j = Σ_i P[i, j] / (N − j)`, the mean attention key `j`
/// receives over the `N − j` queries that see it.
///
/// `probabilities`: `[..., N, N]` (rows are queries, causal) → f32 `[..., N]`.
pub fn column_scores(probabilities: &Tensor) -> Tensor {
    let n = probabilities.size()[probabilities.dim() - 1];
    let visible = Tensor::arange_start_step(n, 0, -1, (Kind::Float, probabilities.device()));
    probabilities
        .to_kind(Kind::Float)
        .sum_dim_intlist(-2, false, Kind::Float)
        / visible
}

/// Sink counts beyond the exempt first candidate: `(all, seen by ≥ min_visible queries)`, each
/// `[...]` int64, from column scores `[..., N]`.
pub fn sinks_beyond_first(scores: &Tensor, threshold: f64, min_visible: i64) -> (Tensor, Tensor) {
    let n = scores.size()[scores.dim() - 1];
    let candidates = scores.gt(threshold);
    let all = (candidates.sum_dim_intlist(-1, false, Kind::Int64) - 1).clamp_min(0);
    // Positions seen by ≥ min_visible queries form a prefix, so when any candidate lies in it the
    // exempt (earliest) candidate does too.
    let well_seen = (n - min_visible + 1).clamp(0, n);
    let evidenced = (candidates
        .narrow(-1, 0, well_seen)
        .sum_dim_intlist(-1, false, Kind::Int64)
        - 1)
    .clamp_min(0);
    (all, evidenced)
}

/// One head's sink statistics, averaged over sequences.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkRow {
    pub checkpoint: String,
    pub layer: i64,
    pub head: usize,
    pub sequences: i64,
    pub seq_len: i64,
    /// Mean column score of the first position.
    pub first_column_score: f64,
    /// Mean count of sink positions beyond the exempt first candidate, per sequence.
    pub sinks_beyond_first: f64,
    /// The same, counting only positions seen by at least `min_visible` queries.
    pub sinks_beyond_first_evidenced: f64,
    /// Share of sequences with at least one evidenced sink beyond the first.
    pub share_with_extra_sink: f64,
}

/// Running sums for one layer: `[heads]` each.
struct LayerSums {
    first_score: Tensor,
    beyond: Tensor,
    evidenced: Tensor,
    with_extra: Tensor,
    sequences: i64,
    seq_len: i64,
}

/// Accumulates [`SinkRow`]s from the attention probabilities of every layer.
pub struct SinkStatisticsSink {
    checkpoint: String,
    threshold: f64,
    min_visible: i64,
    layers: Vec<Option<LayerSums>>,
}

impl SinkStatisticsSink {
    /// `threshold`: τ on the column mean; `min_visible`: queries a sink must be seen by to count
    /// as evidenced (ACT counts every position; the report uses [`MIN_VISIBLE_QUERIES`]).
    pub fn new(checkpoint: &str, num_layers: i64, threshold: f64, min_visible: i64) -> Self {
        SinkStatisticsSink {
            checkpoint: checkpoint.to_string(),
            threshold,
            min_visible,
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    pub fn rows(&self) -> Result<Vec<SinkRow>> {
        let mut rows = Vec::new();
        for (layer, sums) in self.layers.iter().enumerate() {
            let Some(s) = sums else { continue };
            let per_sequence = |t: &Tensor| -> Result<Vec<f64>> {
                Ok(Vec::<f64>::try_from(
                    t.to_kind(Kind::Double) / s.sequences as f64,
                )?)
            };
            let first = per_sequence(&s.first_score)?;
            let beyond = per_sequence(&s.beyond)?;
            let evidenced = per_sequence(&s.evidenced)?;
            let extra = per_sequence(&s.with_extra)?;
            for head in 0..first.len() {
                rows.push(SinkRow {
                    checkpoint: self.checkpoint.clone(),
                    layer: layer as i64,
                    head,
                    sequences: s.sequences,
                    seq_len: s.seq_len,
                    first_column_score: first[head],
                    sinks_beyond_first: beyond[head],
                    sinks_beyond_first_evidenced: evidenced[head],
                    share_with_extra_sink: extra[head],
                });
            }
        }
        Ok(rows)
    }
}

impl CaptureSink for SinkStatisticsSink {
    fn points(&self, _layer: i64) -> Vec<CapturePoint> {
        // Any one point: the sink reads only the attention probabilities that come with it.
        vec![CapturePoint::Rope]
    }

    fn wants_attention(&self, _layer: i64) -> bool {
        true
    }

    fn capture(&mut self, capture: &LayerCapture) -> Result<()> {
        let Some(probabilities) = capture.attention else {
            anyhow::bail!("sink statistics need attention probabilities");
        };
        let (b, _, s, _) = probabilities.size4()?;
        let scores = column_scores(probabilities).to_device(tch::Device::Cpu);
        let (beyond, evidenced) = sinks_beyond_first(&scores, self.threshold, self.min_visible);
        let over_batch = |t: &Tensor| t.to_kind(Kind::Double).sum_dim_intlist(0, false, None);
        let first_score = over_batch(&scores.select(-1, 0));
        let with_extra = over_batch(&evidenced.gt(0));
        let (beyond, evidenced) = (over_batch(&beyond), over_batch(&evidenced));
        let slot = &mut self.layers[capture.layer as usize];
        match slot {
            Some(sums) => {
                sums.first_score += first_score;
                sums.beyond += beyond;
                sums.evidenced += evidenced;
                sums.with_extra += with_extra;
                sums.sequences += b;
            }
            None => {
                *slot = Some(LayerSums {
                    first_score,
                    beyond,
                    evidenced,
                    with_extra,
                    sequences: b,
                    seq_len: s,
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causal 4×4 map of a head that puts half of every row on token 0 and the rest uniformly.
    fn half_on_first() -> Tensor {
        let rows: [[f32; 4]; 4] = [
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.5, 0.25, 0.25, 0.0],
            [0.5, 0.5 / 3.0, 0.5 / 3.0, 0.5 / 3.0],
        ];
        Tensor::from_slice(rows.as_flattened()).reshape([4, 4])
    }

    #[test]
    fn column_scores_are_means_over_visible_queries() {
        let a =
            Vec::<f64>::try_from(column_scores(&half_on_first()).to_kind(Kind::Double)).unwrap();
        // Column 0: (1 + .5 + .5 + .5)/4; column 1: (.5 + .25 + 1/6)/3; column 3: 1/6 over one query.
        let expected = [
            2.5 / 4.0,
            (0.5 + 0.25 + 1.0 / 6.0) / 3.0,
            (0.25 + 1.0 / 6.0) / 2.0,
            1.0 / 6.0,
        ];
        for (x, e) in a.iter().zip(expected) {
            assert!((x - e).abs() < 1e-6, "{a:?}");
        }
    }

    #[test]
    fn first_candidate_is_exempt_and_late_sinks_need_evidence() {
        let scores = Tensor::from_slice(&[0.6f32, 0.05, 0.3, 0.2, 0.01, 0.5]).reshape([1, 6]);
        let (all, evidenced) = sinks_beyond_first(&scores, 0.1, 3);
        // Candidates 0, 2, 3, 5: three beyond the first. Positions seen by ≥ 3 queries: 0..=3.
        assert_eq!(i64::try_from(all.get(0)).unwrap(), 3);
        assert_eq!(i64::try_from(evidenced.get(0)).unwrap(), 2);
        let none = Tensor::from_slice(&[0.05f32, 0.05]).reshape([1, 2]);
        let (all, evidenced) = sinks_beyond_first(&none, 0.1, 1);
        assert_eq!(i64::try_from(all.get(0)).unwrap(), 0);
        assert_eq!(i64::try_from(evidenced.get(0)).unwrap(), 0);
    }
}

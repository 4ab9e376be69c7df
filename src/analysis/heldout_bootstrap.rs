//! The bootstrap over held-out sequences of one finished layer (theory/init_bound.md §7 check 4,
//! trained rows): every prediction row's map, fitted on the fit split, is rescored on redraws of
//! the held-out sequences. All heads of a (layer, kind) share the redraws, so the layer mean has
//! a bootstrap law too. This is the measurement's sampling spread; the replications
//! (analysis/init_prediction.rs) are the null's spread over weights.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::analysis::predictability::PredictionRow;
use crate::capture::HeadKind;
use crate::stats::gram::Moments;
use crate::stats::regression::fit;
use crate::stats::sequence_bootstrap::SequenceSums;

/// One target head's held-out pooled R² on every redraw.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadResamples {
    pub target_head: usize,
    pub r2_pooled: Vec<f64>,
}

/// Per (layer, kind, k): every target head's resampled R², all on the same redraws.
pub type LayerResamples = BTreeMap<(i64, HeadKind, usize), Vec<HeadResamples>>;

fn head_columns(head: usize, head_dim: usize) -> impl Iterator<Item = i64> {
    (head * head_dim..(head + 1) * head_dim).map(|c| c as i64)
}

/// The reference heads of `row`, in selection order.
fn references(row: &PredictionRow) -> Vec<usize> {
    row.reference_heads
        .split(';')
        .filter_map(|h| h.parse().ok())
        .collect()
}

/// Rescores each of `rows` (one layer, one kind) on the redraws `counts` of the held-out
/// sequences. `fit_moments` are the kind's fit-split moments over all heads (head-major columns),
/// `heldout` the kind's held-out vectors `[sequences, heads, positions, head_dim]` (f64, as the
/// moments). A row whose map cannot be fitted gets NaN on every redraw.
pub fn resample_rows(
    rows: &[&PredictionRow],
    fit_moments: &Moments,
    heldout: &Tensor,
    counts: &[Vec<f64>],
) -> Vec<HeadResamples> {
    let (sequences, _, positions, head_dim) = heldout.size4().expect("[S, H, s, d_h]");
    rows.iter()
        .map(|row| {
            let refs = references(row);
            let features: Vec<i64> = refs
                .iter()
                .flat_map(|&h| head_columns(h, head_dim as usize))
                .collect();
            let targets: Vec<i64> = head_columns(row.target_head, head_dim as usize).collect();
            let r2_pooled = match fit(fit_moments, &features, &targets) {
                Ok(map) => {
                    let index: Vec<i64> = refs.iter().map(|&h| h as i64).collect();
                    // [S, k, s, d_h] → [S, s, k·d_h]: reference-major columns, as `features`.
                    let x = heldout
                        .index_select(1, &Tensor::from_slice(&index))
                        .permute([0, 2, 1, 3])
                        .reshape([sequences, positions, -1]);
                    let predicted = x.matmul(&map.coefficients) + &map.intercept;
                    let y = heldout.select(1, row.target_head as i64);
                    let sums = SequenceSums::from_rows(&y, &predicted);
                    counts.iter().map(|c| sums.r2_pooled(c)).collect()
                }
                Err(_) => vec![f64::NAN; counts.len()],
            };
            HeadResamples {
                target_head: row.target_head,
                r2_pooled,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::predictability::{same_layer_rows, LayerRows};
    use crate::capture::token_rows;
    use crate::stats::gram::Gram;
    use crate::stats::selection::Selection;
    use crate::stats::sequence_bootstrap::resample_counts;
    use tch::Kind;

    /// Heads sharing a component (so R² is far from 0) for `sequences` sequences.
    fn heads(sequences: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let opts = (Kind::Double, tch::Device::Cpu);
        let shared = Tensor::randn([sequences, 1, 16, 4], opts);
        Tensor::randn([sequences, 5, 16, 4], opts) * 0.8 + shared + 0.3
    }

    fn moments(h: &Tensor) -> Moments {
        let mut gram = Gram::new(20, tch::Device::Cpu);
        gram.add(&token_rows(h));
        gram.moments()
    }

    #[test]
    fn all_sequences_once_rescore_to_the_gram_held_out_r2() {
        let (fit_heads, heldout_heads) = (heads(12, 1), heads(6, 2));
        let (fit_moments, heldout_moments) = (moments(&fit_heads), moments(&heldout_heads));
        let out = LayerRows {
            checkpoint: "test",
            kind: HeadKind::K,
            layer: 0,
            n_fit: fit_moments.rows,
            n_heldout: heldout_moments.rows,
        };
        let (_, rows) =
            same_layer_rows(&out, Selection::Topn, 3, &fit_moments, &heldout_moments, 4);
        assert_eq!(rows.len(), 15);
        let refs: Vec<&PredictionRow> = rows.iter().collect();
        let mut counts = resample_counts(6, 4, 0, "test");
        counts.insert(0, vec![1.0; 6]);
        let resampled = resample_rows(&refs, &fit_moments, &heldout_heads, &counts);
        for (row, r) in rows.iter().zip(&resampled) {
            assert_eq!(r.target_head, row.target_head);
            assert!(row.r2_pooled_heldout > 0.2, "{}", row.r2_pooled_heldout);
            // The rows path against the Gram path of `predict`.
            assert!(
                (r.r2_pooled[0] - row.r2_pooled_heldout).abs() < 1e-9,
                "{} vs {}",
                r.r2_pooled[0],
                row.r2_pooled_heldout
            );
            // Redraws move it.
            assert!(r.r2_pooled[1..]
                .iter()
                .any(|v| (v - r.r2_pooled[0]).abs() > 1e-6));
        }
    }
}

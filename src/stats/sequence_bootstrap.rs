//! How much a held-out R² owes to *which* sequences were held out: a bootstrap that redraws the
//! held-out sequences with replacement and rescores the same fitted map on each redraw.
//!
//! A held-out pooled R² is 1 − ΣSSE/ΣSST over the held-out rows, SST about those rows' own mean.
//! Both sums decompose by sequence (SST through Σy and Σy²), so a redraw, given as a count per
//! sequence, is scored from per-sequence sums alone, without the rows.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::stats::regression::pooled_r2;

/// Per held-out sequence: rows, Σ‖y − ŷ‖², Σy per target column and Σ‖y‖².
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceSums {
    pub rows: Vec<f64>,
    pub sse: Vec<f64>,
    /// `[sequence][column]`
    pub y_sum: Vec<Vec<f64>>,
    pub y_squares: Vec<f64>,
}

impl SequenceSums {
    /// From targets and predictions `[sequences, positions, columns]` (any float kind).
    pub fn from_rows(targets: &Tensor, predictions: &Tensor) -> Self {
        let y = targets.to_kind(Kind::Double);
        let residual = &y - predictions.to_kind(Kind::Double);
        let (sequences, positions, _) = y.size3().expect("[sequences, positions, columns]");
        let per_sequence = |t: Tensor| -> Vec<f64> {
            Vec::<f64>::try_from(t.sum_dim_intlist([1, 2].as_slice(), false, Kind::Double))
                .expect("f64 sums")
        };
        let y_sum: Vec<f64> = Vec::try_from(
            y.sum_dim_intlist([1].as_slice(), false, Kind::Double)
                .reshape([-1]),
        )
        .expect("f64 sums");
        let columns = y_sum.len() / sequences.max(1) as usize;
        SequenceSums {
            rows: vec![positions as f64; sequences as usize],
            sse: per_sequence(residual.square()),
            y_sum: y_sum.chunks(columns.max(1)).map(<[f64]>::to_vec).collect(),
            y_squares: per_sequence(y.square()),
        }
    }

    pub fn sequences(&self) -> usize {
        self.rows.len()
    }

    /// Pooled R² of the redraw that takes sequence `s` `counts[s]` times (all ones: the held-out
    /// R² itself), with `Score::r2_pooled`'s convention for a zero SST.
    pub fn r2_pooled(&self, counts: &[f64]) -> f64 {
        let weighted = |v: &[f64]| -> f64 { v.iter().zip(counts).map(|(x, c)| x * c).sum() };
        let rows = weighted(&self.rows);
        let sse = weighted(&self.sse);
        let columns = self.y_sum.first().map_or(0, Vec::len);
        let squared_sums: f64 = (0..columns)
            .map(|j| {
                let total: f64 = self.y_sum.iter().zip(counts).map(|(s, c)| s[j] * c).sum();
                total * total
            })
            .sum();
        let sst = weighted(&self.y_squares) - squared_sums / rows.max(f64::MIN_POSITIVE);
        pooled_r2(sse, sst)
    }
}

/// `resamples` redraws of `sequences` sequences with replacement, as counts per sequence, from the
/// ChaCha8 stream keyed by sha256(seed, `stream`): the same on every machine and thread count.
pub fn resample_counts(
    sequences: usize,
    resamples: usize,
    seed: u64,
    stream: &str,
) -> Vec<Vec<f64>> {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(stream.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    (0..resamples)
        .map(|_| {
            let mut counts = vec![0.0; sequences];
            for _ in 0..sequences {
                counts[(rng.next_u64() % sequences as u64) as usize] += 1.0;
            }
            counts
        })
        .collect()
}

/// The `q` quantile of the finite values (linear interpolation between order statistics, as
/// numpy's default); NaN when there are none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 − SSE/SST of the rows a redraw materialises, computed directly on the rows.
    fn direct_r2(targets: &Tensor, predictions: &Tensor, counts: &[f64]) -> f64 {
        let mut picked = Vec::new();
        for (s, &c) in counts.iter().enumerate() {
            for _ in 0..c as usize {
                picked.push(s as i64);
            }
        }
        let index = Tensor::from_slice(&picked);
        let columns = targets.size()[2];
        let y = targets.index_select(0, &index).reshape([-1, columns]);
        let p = predictions.index_select(0, &index).reshape([-1, columns]);
        let sse = f64::try_from((&y - &p).square().sum(Kind::Double)).unwrap();
        let centred = &y - y.mean_dim([0].as_slice(), true, Kind::Double);
        let sst = f64::try_from(centred.square().sum(Kind::Double)).unwrap();
        1.0 - sse / sst
    }

    #[test]
    fn a_redraw_scores_as_the_rows_it_stands_for() {
        tch::manual_seed(3);
        let targets = Tensor::randn([7, 5, 3], (Kind::Double, tch::Device::Cpu)) + 0.4;
        let predictions =
            &targets * 0.7 + Tensor::randn([7, 5, 3], (Kind::Double, tch::Device::Cpu)) * 0.5;
        let sums = SequenceSums::from_rows(&targets, &predictions);
        assert_eq!(sums.sequences(), 7);
        let ones = vec![1.0; 7];
        let all = direct_r2(&targets, &predictions, &ones);
        assert!((sums.r2_pooled(&ones) - all).abs() < 1e-12);
        for counts in resample_counts(7, 20, 1, "test") {
            assert_eq!(counts.iter().sum::<f64>(), 7.0);
            let direct = direct_r2(&targets, &predictions, &counts);
            assert!(
                (sums.r2_pooled(&counts) - direct).abs() < 1e-12,
                "{counts:?}: {} vs {direct}",
                sums.r2_pooled(&counts)
            );
        }
    }

    #[test]
    fn redraws_are_keyed_by_seed_and_stream() {
        let a = resample_counts(10, 3, 0, "x");
        assert_eq!(a, resample_counts(10, 3, 0, "x"));
        assert_ne!(a, resample_counts(10, 3, 1, "x"));
        assert_ne!(a, resample_counts(10, 3, 0, "y"));
    }

    #[test]
    fn quantiles_interpolate_as_numpy() {
        // numpy.quantile([1, 2, 3, 4, 10], [0, 0.05, 0.5, 0.9, 1]) = 1, 1.2, 3, 7.6, 10.
        let v = [4.0, 1.0, 10.0, 3.0, 2.0, f64::NAN];
        for (q, want) in [(0.0, 1.0), (0.05, 1.2), (0.5, 3.0), (0.9, 7.6), (1.0, 10.0)] {
            assert!((quantile(&v, q) - want).abs() < 1e-12, "{q}");
        }
        assert!(quantile(&[], 0.5).is_nan());
    }
}

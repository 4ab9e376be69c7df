//! Reference-head selection and per-head predictability from the two splits' moments.
//!
//! Heads are blocks of `head_dim` consecutive columns. References are ranked on the fit split only
//! (in-sample), so the held-out score stays honest.

use clap::ValueEnum;
use serde::Serialize;

use crate::stats::gram::Moments;
use crate::stats::regression::{fit, score, RegressionError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Rank candidates by single-reference R² and take the top k (the paper).
    Topn,
    /// Forward selection: add the candidate that raises fit-split R² most, k times.
    Greedy,
}

/// Scores of one fit of a target head from a reference set.
#[derive(Clone, Debug, Serialize)]
pub struct FitScores {
    pub r2_insample: f64,
    pub r2_heldout: f64,
    pub r2_pooled_insample: f64,
    pub r2_pooled_heldout: f64,
    /// Empty when the numbers are real; else why they are NaN.
    pub status: String,
}

impl FitScores {
    fn failed(reason: &RegressionError) -> Self {
        FitScores {
            r2_insample: f64::NAN,
            r2_heldout: f64::NAN,
            r2_pooled_insample: f64::NAN,
            r2_pooled_heldout: f64::NAN,
            status: reason.to_string(),
        }
    }
}

/// One head's column range.
pub fn head_columns(head: usize, head_dim: usize) -> Vec<i64> {
    ((head * head_dim) as i64..((head + 1) * head_dim) as i64).collect()
}

fn columns_of(heads: &[usize], head_dim: usize) -> Vec<i64> {
    heads
        .iter()
        .flat_map(|&h| head_columns(h, head_dim))
        .collect()
}

/// Fits `target` from `references` on `fit_split`, scores it there and on `heldout`.
pub fn fit_and_score(
    fit_split: &Moments,
    heldout: &Moments,
    references: &[usize],
    target: usize,
    head_dim: usize,
) -> FitScores {
    let features = columns_of(references, head_dim);
    let targets = head_columns(target, head_dim);
    let model = match fit(fit_split, &features, &targets) {
        Ok(m) => m,
        Err(e) => return FitScores::failed(&e),
    };
    let insample = match score(&model, fit_split) {
        Ok(s) => s,
        Err(e) => return FitScores::failed(&e),
    };
    let features_plus_intercept = features.len() as i64 + 1;
    let (heldout_uniform, heldout_pooled, status) = if heldout.rows <= features_plus_intercept {
        // Scoring needs no solve, but a held-out estimate from fewer rows than parameters is noise.
        (
            f64::NAN,
            f64::NAN,
            format!(
                "too few held-out rows: {} for {} parameters",
                heldout.rows, features_plus_intercept
            ),
        )
    } else {
        match score(&model, heldout) {
            Ok(s) => (s.r2_uniform(), s.r2_pooled(), String::new()),
            Err(e) => (f64::NAN, f64::NAN, e.to_string()),
        }
    };
    FitScores {
        r2_insample: insample.r2_uniform(),
        r2_heldout: heldout_uniform,
        r2_pooled_insample: insample.r2_pooled(),
        r2_pooled_heldout: heldout_pooled,
        status,
    }
}

/// Single-reference scores `matrix[source][target]` for all ordered pairs of distinct heads.
pub fn single_reference_scores(
    fit_split: &Moments,
    heldout: &Moments,
    heads: usize,
    head_dim: usize,
) -> Vec<Vec<Option<FitScores>>> {
    (0..heads)
        .map(|source| {
            (0..heads)
                .map(|target| {
                    (source != target)
                        .then(|| fit_and_score(fit_split, heldout, &[source], target, head_dim))
                })
                .collect()
        })
        .collect()
}

/// The reference sets for k = 1..=max_refs, in order of selection (each a prefix of the next).
pub fn select_references(
    selection: Selection,
    fit_split: &Moments,
    single: &[Vec<Option<FitScores>>],
    target: usize,
    heads: usize,
    head_dim: usize,
    max_refs: usize,
) -> Vec<usize> {
    let candidates: Vec<usize> = (0..heads).filter(|&h| h != target).collect();
    match selection {
        Selection::Topn => {
            let mut ranked: Vec<(usize, f64)> = candidates
                .iter()
                .map(|&s| {
                    (
                        s,
                        single[s][target]
                            .as_ref()
                            .map_or(f64::NEG_INFINITY, |f| nan_low(f.r2_insample)),
                    )
                })
                .collect();
            // Ties (and NaNs, ranked last) resolve to the lower head index: stable across runs.
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.into_iter().take(max_refs).map(|(s, _)| s).collect()
        }
        Selection::Greedy => {
            let mut chosen: Vec<usize> = Vec::new();
            let empty = Moments {
                rows: 0,
                means: fit_split.means.shallow_clone(),
                scatter: fit_split.scatter.shallow_clone(),
            };
            for _ in 0..max_refs {
                let best = candidates
                    .iter()
                    .filter(|c| !chosen.contains(c))
                    .map(|&c| {
                        let mut trial = chosen.clone();
                        trial.push(c);
                        // Only the fit split matters here; `empty` skips the held-out score.
                        let s = fit_and_score(fit_split, &empty, &trial, target, head_dim);
                        (c, nan_low(s.r2_insample))
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
                match best {
                    Some((c, _)) => chosen.push(c),
                    None => break,
                }
            }
            chosen
        }
    }
}

fn nan_low(x: f64) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::gram::Gram;
    use tch::{Device, Kind, Tensor};

    /// Head 2 = head 0 + noise; head 1 and 3 independent: head 0 must be head 2's first reference.
    #[test]
    fn the_informative_head_is_chosen_first_by_both_rules() {
        tch::manual_seed(9);
        let opts = (Kind::Double, Device::Cpu);
        let h0 = Tensor::randn([600, 2], opts);
        let h1 = Tensor::randn([600, 2], opts);
        let h2 = &h0 * 2.0 + Tensor::randn([600, 2], opts) * 0.1;
        let h3 = Tensor::randn([600, 2], opts);
        let x = Tensor::cat(&[&h0, &h1, &h2, &h3], 1);
        let (mut a, mut b) = (Gram::new(8, Device::Cpu), Gram::new(8, Device::Cpu));
        a.add(&x.narrow(0, 0, 450));
        b.add(&x.narrow(0, 450, 150));
        let (fit_split, heldout) = (a.moments(), b.moments());
        let single = single_reference_scores(&fit_split, &heldout, 4, 2);
        for rule in [Selection::Topn, Selection::Greedy] {
            let refs = select_references(rule, &fit_split, &single, 2, 4, 2, 3);
            assert_eq!(refs[0], 0, "{rule:?}: {refs:?}");
            assert_eq!(refs.len(), 3);
        }
        let s = single[0][2].as_ref().unwrap();
        assert!(s.r2_heldout > 0.99 && s.status.is_empty(), "{s:?}");
        assert!(single[1][2].as_ref().unwrap().r2_heldout < 0.05);
        assert!(single[2][2].is_none());
    }
}

//! Reference-head selection and per-head predictability from the two splits' moments.
//!
//! A head is named by its layer and index, [`HeadId`], so candidates may come from the target's own
//! layer or from earlier ones. In a moments matrix a head is a block of `head_dim` consecutive
//! columns, placed by a [`HeadLayout`]. References are ranked on the fit split only (in-sample), so
//! the held-out score stays honest.

use std::collections::BTreeMap;

use clap::ValueEnum;
use serde::Serialize;

use crate::stats::gram::Moments;
use crate::stats::regression::{
    fit_blocks, score_blocks, RegressionBlocks, RegressionError, Score,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Rank candidates by single-reference R² and take the top k (the paper).
    Topn,
    /// Forward selection: add the candidate that raises fit-split R² most, k times.
    Greedy,
}

/// One attention head (query or KV head, by the kind analysed): its layer and index in the layer.
/// Ordered by layer, then head: ties in a ranking go to the shallower, then lower-numbered head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeadId {
    pub layer: i64,
    pub head: usize,
}

impl HeadId {
    pub fn new(layer: i64, head: usize) -> Self {
        HeadId { layer, head }
    }
}

/// Which head each block of `head_dim` columns of a moments matrix holds.
#[derive(Clone, Debug)]
pub struct HeadLayout {
    heads: Vec<HeadId>,
    head_dim: usize,
}

impl HeadLayout {
    /// `heads[i]` occupies columns `i·head_dim .. (i+1)·head_dim`.
    pub fn new(heads: Vec<HeadId>, head_dim: usize) -> Self {
        HeadLayout { heads, head_dim }
    }

    /// Heads `0..heads` of `layer`, in order: the layout of one layer's token rows.
    pub fn layer(layer: i64, heads: usize, head_dim: usize) -> Self {
        Self::new(
            (0..heads).map(|h| HeadId::new(layer, h)).collect(),
            head_dim,
        )
    }

    pub fn heads(&self) -> &[HeadId] {
        &self.heads
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The columns of `head`; a head missing from the layout is a bug in the caller.
    pub fn columns(&self, head: HeadId) -> Vec<i64> {
        let position = self
            .heads
            .iter()
            .position(|&h| h == head)
            .unwrap_or_else(|| panic!("{head:?} is not in the layout"));
        head_columns(position, self.head_dim)
    }

    /// The columns of `heads`, concatenated in the order given.
    pub fn columns_of(&self, heads: &[HeadId]) -> Vec<i64> {
        heads.iter().flat_map(|&h| self.columns(h)).collect()
    }

    /// Every column, in layout order.
    pub fn all_columns(&self) -> Vec<i64> {
        (0..(self.heads.len() * self.head_dim) as i64).collect()
    }
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

/// Single-reference scores keyed by (source, target).
pub type SingleScores = BTreeMap<(HeadId, HeadId), FitScores>;

/// Column range of the head at `position` of a layout.
pub fn head_columns(position: usize, head_dim: usize) -> Vec<i64> {
    ((position * head_dim) as i64..((position + 1) * head_dim) as i64).collect()
}

/// Fits all target columns of `fit_split` from its features at once, scores the fit there
/// (in-sample) and on `heldout` when given, and reports one [`FitScores`] per target head: each
/// `head_dim` consecutive target columns. A batched fit gives each target exactly what fitting it
/// alone would: the solve and the sums of squares are per target column.
pub fn scores_by_head(
    fit_split: &RegressionBlocks,
    heldout: Option<&RegressionBlocks>,
    head_dim: usize,
) -> Vec<FitScores> {
    let d = head_dim as i64;
    let heads = (fit_split.mean_targets.size()[0] / d) as usize;
    let model = match fit_blocks(fit_split) {
        Ok(m) => m,
        Err(e) => return vec![FitScores::failed(&e); heads],
    };
    let insample = match score_blocks(&model, fit_split) {
        Ok(s) => s,
        Err(e) => return vec![FitScores::failed(&e); heads],
    };
    let features_plus_intercept = fit_split.features() + 1;
    let heldout: Result<Score, String> = match heldout {
        None => Err("held-out split not scored".to_string()),
        // Scoring needs no solve, but a held-out estimate from fewer rows than parameters is noise.
        Some(h) if h.rows <= features_plus_intercept => Err(format!(
            "too few held-out rows: {} for {} parameters",
            h.rows, features_plus_intercept
        )),
        Some(h) => score_blocks(&model, h).map_err(|e| e.to_string()),
    };
    (0..heads as i64)
        .map(|i| {
            let ins = insample.columns(i * d, d);
            let (r2_heldout, r2_pooled_heldout, status) = match &heldout {
                Ok(s) => {
                    let out = s.columns(i * d, d);
                    (out.r2_uniform(), out.r2_pooled(), String::new())
                }
                Err(e) => (f64::NAN, f64::NAN, e.clone()),
            };
            FitScores {
                r2_insample: ins.r2_uniform(),
                r2_heldout,
                r2_pooled_insample: ins.r2_pooled(),
                r2_pooled_heldout,
                status,
            }
        })
        .collect()
}

/// Fits `target` from `references` on `fit_split`, scores it there and on `heldout`; both
/// moments hold the heads at the columns `layout` gives.
pub fn fit_and_score(
    fit_split: &Moments,
    heldout: &Moments,
    layout: &HeadLayout,
    references: &[HeadId],
    target: HeadId,
) -> FitScores {
    let features = layout.columns_of(references);
    let targets = layout.columns(target);
    let fit_blocks = RegressionBlocks::select(fit_split, &features, &targets);
    let heldout_blocks = RegressionBlocks::select(heldout, &features, &targets);
    scores_by_head(&fit_blocks, Some(&heldout_blocks), layout.head_dim())
        .pop()
        .expect("one target head gives one score")
}

/// Single-reference scores of every head in `layout` from every other head in it (one layer's
/// graph): one batched fit per source head.
pub fn single_reference_scores(
    fit_split: &Moments,
    heldout: &Moments,
    layout: &HeadLayout,
) -> SingleScores {
    let all = layout.all_columns();
    let mut single = SingleScores::new();
    for &source in layout.heads() {
        let features = layout.columns(source);
        let scores = scores_by_head(
            &RegressionBlocks::select(fit_split, &features, &all),
            Some(&RegressionBlocks::select(heldout, &features, &all)),
            layout.head_dim(),
        );
        for (&target, s) in layout.heads().iter().zip(scores) {
            if target != source {
                single.insert((source, target), s);
            }
        }
    }
    single
}

/// The reference sets for k = 1..=max_refs, in order of selection (each a prefix of the next),
/// chosen among `candidates` (the target itself is skipped).
///
/// `Topn` ranks by the single-reference in-sample R² in `single`. `Greedy` refits on the fit
/// split's `joint` moments, which must hold every candidate and the target.
pub fn select_references(
    selection: Selection,
    single: &SingleScores,
    candidates: &[HeadId],
    target: HeadId,
    joint: Option<(&Moments, &HeadLayout)>,
    max_refs: usize,
) -> Vec<HeadId> {
    let candidates: Vec<HeadId> = candidates
        .iter()
        .copied()
        .filter(|&h| h != target)
        .collect();
    match selection {
        Selection::Topn => {
            let mut ranked: Vec<(HeadId, f64)> = candidates
                .iter()
                .map(|&s| {
                    (
                        s,
                        single
                            .get(&(s, target))
                            .map_or(f64::NEG_INFINITY, |f| nan_low(f.r2_insample)),
                    )
                })
                .collect();
            // Ties (and NaNs, ranked last) resolve to the lower (layer, head): stable across runs.
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.into_iter().take(max_refs).map(|(s, _)| s).collect()
        }
        Selection::Greedy => {
            // PredictabilityOptions::check refuses greedy where no joint moments exist.
            let (fit_split, layout) =
                joint.expect("greedy selection needs the fit split's joint moments");
            let targets = layout.columns(target);
            let mut chosen: Vec<HeadId> = Vec::new();
            for _ in 0..max_refs {
                let best = candidates
                    .iter()
                    .filter(|c| !chosen.contains(c))
                    .map(|&c| {
                        let mut trial = chosen.clone();
                        trial.push(c);
                        let blocks = RegressionBlocks::select(
                            fit_split,
                            &layout.columns_of(&trial),
                            &targets,
                        );
                        // Only the fit split matters here: no held-out score.
                        let s = scores_by_head(&blocks, None, layout.head_dim());
                        (c, nan_low(s[0].r2_insample))
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
        let layout = HeadLayout::layer(0, 4, 2);
        let single = single_reference_scores(&fit_split, &heldout, &layout);
        let head = |h| HeadId::new(0, h);
        for rule in [Selection::Topn, Selection::Greedy] {
            let refs = select_references(
                rule,
                &single,
                layout.heads(),
                head(2),
                Some((&fit_split, &layout)),
                3,
            );
            assert_eq!(refs[0], head(0), "{rule:?}: {refs:?}");
            assert_eq!(refs.len(), 3);
            assert!(!refs.contains(&head(2)));
        }
        let s = &single[&(head(0), head(2))];
        assert!(s.r2_heldout > 0.99 && s.status.is_empty(), "{s:?}");
        assert!(single[&(head(1), head(2))].r2_heldout < 0.05);
        assert!(!single.contains_key(&(head(2), head(2))));
        assert_eq!(single.len(), 4 * 3);
    }

    /// A batched fit of several target heads gives each what fitting it alone gives, to the bit.
    #[test]
    fn batched_targets_score_as_single_fits() {
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::randn([300, 8], opts).matmul(&Tensor::randn([8, 8], opts));
        let (mut a, mut b) = (Gram::new(8, Device::Cpu), Gram::new(8, Device::Cpu));
        a.add(&x.narrow(0, 0, 200));
        b.add(&x.narrow(0, 200, 100));
        let (fit_split, heldout) = (a.moments(), b.moments());
        let layout = HeadLayout::layer(3, 4, 2);
        let all = layout.all_columns();
        let source = HeadId::new(3, 1);
        let features = layout.columns(source);
        let batched = scores_by_head(
            &RegressionBlocks::select(&fit_split, &features, &all),
            Some(&RegressionBlocks::select(&heldout, &features, &all)),
            2,
        );
        assert_eq!(batched.len(), 4);
        for (&target, s) in layout.heads().iter().zip(&batched) {
            let alone = fit_and_score(&fit_split, &heldout, &layout, &[source], target);
            assert_eq!(s.r2_insample.to_bits(), alone.r2_insample.to_bits());
            assert_eq!(s.r2_heldout.to_bits(), alone.r2_heldout.to_bits());
        }
        assert!(
            (batched[1].r2_insample - 1.0).abs() < 1e-12,
            "a head predicts itself"
        );
    }
}

//! Key-subspace alignment (research/linear_predictability.md §8): principal angles between heads'
//! projection subspaces, overlap dimension, a random-subspace null, and the weight-only prediction
//! of R² — from the weights alone, one layer's projection at a time.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::analysis::torch_threads::single_threaded;
use crate::capture::HeadKind;
use crate::model::weights::{load_tensor, LoadOptions};
use crate::source::WeightSource;
use crate::stats::principal_angles::{
    f32_rank_tolerance, orthonormal_basis, principal_cosines, summarize, ProjectionGram,
};
use crate::stats::random::with_torch_seed;

#[derive(Clone, Debug, Serialize)]
pub struct AlignmentOptions {
    pub kinds: Vec<HeadKind>,
    /// Multiply each projection row by its QK-norm gain (OLMo-2's q_norm/k_norm weights).
    pub fold_norm: bool,
    /// Partners per anchor in the paper code's anchor-vs-span variant.
    pub partners: usize,
    /// Random subspace pairs drawn for the null baseline's spread.
    pub null_samples: usize,
    pub seed: u64,
}

/// One pair of heads in one layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub head_a: usize,
    pub head_b: usize,
    pub mean_cos2: f64,
    pub grassmann_distance: f64,
    pub min_angle_degrees: f64,
    pub mean_angle_degrees: f64,
    pub max_angle_degrees: f64,
    /// Weight-only R² of b from a and of a from b (isotropic input).
    pub weight_r2_a_to_b: f64,
    pub weight_r2_b_to_a: f64,
}

/// One layer's summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub heads: usize,
    pub head_dim: i64,
    pub d_model: i64,
    pub mean_pairwise_cos2: f64,
    /// E[mean cos²] of independent random subspaces: head_dim / d_model.
    pub null_mean_cos2: f64,
    /// Mean and standard deviation of mean cos² over sampled random subspace pairs.
    pub null_sampled_mean: f64,
    pub null_sampled_std: f64,
    pub rank_sum: i64,
    pub joint_rank: i64,
    /// rank_sum − joint_rank.
    pub overlap_dimension: i64,
    pub rank_tolerance: f64,
    /// Paper-code variant: anchor vs span of its top partners (by weight-only R²), averaged.
    pub anchor_mean_angle_degrees: f64,
    pub anchor_max_angle_degrees: f64,
    pub anchor_sum_sin2: f64,
    pub anchor_shared_directions: f64,
}

/// Weight-only R² of a target from a reference set (for comparison with measured R²).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WeightR2Row {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    pub reference_heads: String,
    pub weight_r2: f64,
}

/// `[d_model, head_dim]` blocks of one layer's projection, one per head (KV heads for K and V).
pub fn head_blocks(
    source: &dyn WeightSource,
    layer: i64,
    kind: HeadKind,
    fold_norm: bool,
) -> Result<Vec<Tensor>> {
    let config = source.config();
    let heads = kind.heads(config);
    let d = config.head_dim;
    let name = |suffix: &str| format!("model.layers.{layer}.self_attn.{suffix}");
    let proj = match kind {
        HeadKind::Q => "q_proj.weight",
        HeadKind::K => "k_proj.weight",
        HeadKind::V => "v_proj.weight",
    };
    let options = LoadOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        allow_nan: false,
    };
    let mut w = load_tensor(
        source,
        &name(proj),
        &[heads * d, config.hidden_size],
        &options,
    )?
    .to_kind(Kind::Double);
    let norm = match kind {
        HeadKind::Q => Some("q_norm.weight"),
        HeadKind::K => Some("k_norm.weight"),
        HeadKind::V => None,
    };
    if let (true, Some(norm)) = (fold_norm, norm) {
        if source.contains(&name(norm)) {
            let gain =
                load_tensor(source, &name(norm), &[heads * d], &options)?.to_kind(Kind::Double);
            w *= gain.unsqueeze(1);
        }
    }
    // Rows h·d..(h+1)·d of the [out, in] weight are head h; transposed, its columns span the subspace.
    Ok((0..heads)
        .map(|h| w.narrow(0, h * d, d).transpose(0, 1).contiguous())
        .collect())
}

/// Everything `align` computes for one layer and kind.
pub struct LayerAlignment {
    pub layer: LayerRow,
    pub pairs: Vec<PairRow>,
    pub weight_r2: Vec<WeightR2Row>,
}

/// Mean cos² of principal angles between independent Gaussian subspaces, sampled.
pub fn null_spread(d_model: i64, head_dim: i64, samples: usize, seed: u64) -> (f64, f64) {
    // Torch-seeded (the published null spreads were drawn this way), under the generator's lock.
    let values: Vec<f64> = with_torch_seed(seed as i64, || {
        (0..samples)
            .map(|_| {
                let a = orthonormal_basis(&Tensor::randn(
                    [d_model, head_dim],
                    (Kind::Double, Device::Cpu),
                ));
                let b = orthonormal_basis(&Tensor::randn(
                    [d_model, head_dim],
                    (Kind::Double, Device::Cpu),
                ));
                summarize(&principal_cosines(&a, &b)).mean_cos2
            })
            .collect()
    });
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

pub fn align_layer(
    checkpoint: &str,
    kind: HeadKind,
    layer: i64,
    blocks: &[Tensor],
    max_refs: usize,
    options: &AlignmentOptions,
    null: (f64, f64),
) -> LayerAlignment {
    let heads = blocks.len();
    let d_model = blocks[0].size()[0];
    let head_dim = blocks[0].size()[1];
    // One Gram product per layer; every comparison below is a solve on its sub-blocks.
    let gram = ProjectionGram::new(blocks);
    let tolerance = f32_rank_tolerance(d_model, head_dim * heads as i64);
    let all: Vec<usize> = (0..heads).collect();
    // Threads by operation size: the product above and the joint rank below are large and use
    // every thread; the thousands of head-sized solves in between run on one, where OpenMP's
    // spinning made `align init:olmo2-7b` 4× slower with two threads (benches/README.md).
    let (pairs, weight_r2, anchor, rank_sum) = single_threaded(|| {
        let mut pairs = Vec::new();
        // single[source][target]; filled by index, as each pair writes both directions.
        let mut single = vec![vec![f64::NAN; heads]; heads];
        #[allow(clippy::needless_range_loop)]
        for a in 0..heads {
            for b in (a + 1)..heads {
                let s = summarize(&gram.cosines(&[a], &[b]));
                let r2_ab = gram.weight_only_r2(b, &[a]);
                let r2_ba = gram.weight_only_r2(a, &[b]);
                single[a][b] = r2_ab;
                single[b][a] = r2_ba;
                let angles = &s.angles_degrees;
                pairs.push(PairRow {
                    checkpoint: checkpoint.to_string(),
                    kind,
                    layer,
                    head_a: a,
                    head_b: b,
                    mean_cos2: s.mean_cos2,
                    grassmann_distance: s.grassmann_distance,
                    min_angle_degrees: angles.iter().copied().fold(f64::INFINITY, f64::min),
                    mean_angle_degrees: angles.iter().sum::<f64>() / angles.len().max(1) as f64,
                    max_angle_degrees: angles.iter().copied().fold(0.0, f64::max),
                    weight_r2_a_to_b: r2_ab,
                    weight_r2_b_to_a: r2_ba,
                });
            }
        }
        // Reference sets for k = 1..max_refs: the top sources by weight-only single-reference R².
        let mut weight_r2 = Vec::new();
        for target in 0..heads {
            let ranked = ranked_sources(&single, target);
            for k in 1..=max_refs.min(heads - 1) {
                let refs = &ranked[..k];
                weight_r2.push(WeightR2Row {
                    checkpoint: checkpoint.to_string(),
                    kind,
                    layer,
                    target_head: target,
                    k,
                    reference_heads: refs
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(";"),
                    weight_r2: gram.weight_only_r2(target, refs),
                });
            }
        }
        // Paper-code variant: each anchor against the span of the partners it predicts best.
        let partners = options.partners.min(heads - 1);
        let mut anchor = (0.0, 0.0, 0.0, 0.0, 0usize);
        if partners > 0 {
            for (a, predicts) in single.iter().enumerate() {
                let mut by_target: Vec<usize> = (0..heads).filter(|&t| t != a).collect();
                by_target.sort_by(|&x, &y| predicts[y].total_cmp(&predicts[x]).then(x.cmp(&y)));
                let s = summarize(&gram.cosines(&by_target[..partners], &[a]));
                let n = s.angles_degrees.len().max(1) as f64;
                anchor.0 += s.angles_degrees.iter().sum::<f64>() / n;
                anchor.1 += s.angles_degrees.iter().copied().fold(0.0, f64::max);
                anchor.2 += s.sum_sin2;
                anchor.3 += s.shared_directions as f64;
                anchor.4 += 1;
            }
        }
        let rank_sum: i64 = all.iter().map(|&h| gram.rank(&[h], tolerance)).sum();
        (pairs, weight_r2, anchor, rank_sum)
    });
    let anchors = anchor.4.max(1) as f64;
    let joint_rank = gram.rank(&all, tolerance);
    let mean_pairwise_cos2 =
        pairs.iter().map(|p| p.mean_cos2).sum::<f64>() / pairs.len().max(1) as f64;
    LayerAlignment {
        layer: LayerRow {
            checkpoint: checkpoint.to_string(),
            kind,
            layer,
            heads,
            head_dim,
            d_model,
            mean_pairwise_cos2,
            null_mean_cos2: head_dim as f64 / d_model as f64,
            null_sampled_mean: null.0,
            null_sampled_std: null.1,
            rank_sum,
            joint_rank,
            overlap_dimension: rank_sum - joint_rank,
            rank_tolerance: tolerance,
            anchor_mean_angle_degrees: anchor.0 / anchors,
            anchor_max_angle_degrees: anchor.1 / anchors,
            anchor_sum_sin2: anchor.2 / anchors,
            anchor_shared_directions: anchor.3 / anchors,
        },
        pairs,
        weight_r2,
    }
}

/// Sources ordered by weight-only R² for `target`, best first; ties to the lower index.
fn ranked_sources(single: &[Vec<f64>], target: usize) -> Vec<usize> {
    let mut sources: Vec<usize> = (0..single.len()).filter(|&s| s != target).collect();
    sources.sort_by(|&x, &y| {
        single[y][target]
            .total_cmp(&single[x][target])
            .then(x.cmp(&y))
    });
    sources
}

/// Spearman rank correlation (average ranks for ties); NaN when fewer than 3 pairs.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let pairs: Vec<(f64, f64)> = x
        .iter()
        .zip(y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .collect();
    if pairs.len() < 3 {
        return f64::NAN;
    }
    let rx = ranks(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let ry = ranks(&pairs.iter().map(|p| p.1).collect::<Vec<_>>());
    pearson(&rx, &ry)
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = average;
        }
        i = j + 1;
    }
    r
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_data() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!((spearman(&x, &[2.0, 4.0, 8.0, 16.0, 32.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties take average ranks: scipy.stats.spearmanr([1,2,2,3],[1,2,3,4]) = 0.9486833.
        assert!(
            (spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.948_683_298_050_513_8)
                .abs()
                < 1e-12
        );
    }
}

//! A low-rank KV code for one layer: all KV heads' vectors (concatenated) projected onto their top
//! principal directions on calibration text, the cache holding `rank` values per token and
//! attention reading every head back through the projection. Like Palu's per-group low rank, but
//! from calibration activations (centred PCA, the squared-error-optimal rank-`rank` code on that
//! text) rather than an SVD of the projection weights, which would ignore QK-norm and the
//! input's correlations.

use tch::{Device, Kind, Tensor};

use crate::model::row_map::{ConvertedMaps, RowMap};
use crate::stats::gram::Moments;

#[derive(Debug)]
pub struct LowRankMap {
    pub heads: usize,
    pub head_dim: usize,
    /// f32 `[heads·head_dim, rank]`: orthonormal principal directions, largest first.
    basis: Tensor,
    /// f32 `[heads·head_dim]`: the calibration mean, subtracted before projecting.
    mean: Tensor,
    /// f32 `[heads, rank, head_dim]` and `[heads, head_dim]`: the basis and mean per head.
    read: Tensor,
    read_intercept: Tensor,
    converted: ConvertedMaps,
}

impl LowRankMap {
    /// The top-`rank` principal directions of `fit`'s moments over `heads · head_dim` columns.
    pub fn fit(fit: &Moments, heads: usize, head_dim: usize, rank: i64) -> Self {
        let width = (heads * head_dim) as i64;
        assert_eq!(fit.scatter.size(), [width, width], "moments of all heads");
        assert!((1..=width).contains(&rank), "rank {rank} in 1..={width}");
        let scatter = fit.scatter.to_kind(Kind::Double).to_device(Device::Cpu);
        // Ascending eigenvalues: the last `rank` columns are the leading directions.
        let (_, vectors) = scatter.linalg_eigh("L");
        let basis = vectors
            .narrow(1, width - rank, rank)
            .flip([1])
            .to_kind(Kind::Float);
        Self::new(
            heads,
            head_dim,
            basis,
            fit.means.to_kind(Kind::Float).to_device(Device::Cpu),
        )
    }

    /// A map from an orthonormal `basis` `[heads·head_dim, rank]` and `mean` `[heads·head_dim]`.
    pub fn new(heads: usize, head_dim: usize, basis: Tensor, mean: Tensor) -> Self {
        let (h, d) = (heads as i64, head_dim as i64);
        let rank = basis.size()[1];
        let read = basis
            .transpose(0, 1)
            .reshape([rank, h, d])
            .permute([1, 0, 2])
            .contiguous();
        let read_intercept = mean.view([h, d]);
        LowRankMap {
            heads,
            head_dim,
            basis,
            mean,
            read,
            read_intercept,
            converted: ConvertedMaps::default(),
        }
    }

    pub fn rank(&self) -> i64 {
        self.basis.size()[1]
    }

    /// Pooled R² of the rank-`rank` code on `moments` (another split): 1 − E‖x − x̂‖² / E‖x − x̄‖²,
    /// with x̂ = mean + P(x − mean), P the projection, x̄ the split's own mean.
    pub fn r2_pooled(&self, moments: &Moments) -> f64 {
        let n = moments.rows.max(2) as f64;
        let covariance = moments.scatter.to_kind(Kind::Double).to_device(Device::Cpu) / (n - 1.0);
        let shift = (moments.means.to_kind(Kind::Double).to_device(Device::Cpu)
            - self.mean.to_kind(Kind::Double))
        .unsqueeze(1);
        let basis = self.basis.to_kind(Kind::Double);
        let width = basis.size()[0];
        let residual = Tensor::eye(width, (Kind::Double, Device::Cpu)) - basis.matmul(&basis.tr());
        let second_moment = &covariance + shift.matmul(&shift.tr());
        let error = f64::try_from(residual.matmul(&second_moment).trace()).unwrap_or(f64::NAN);
        let total = f64::try_from(covariance.trace()).unwrap_or(f64::NAN);
        1.0 - error / total
    }
}

impl RowMap for LowRankMap {
    fn width(&self) -> i64 {
        self.rank()
    }

    fn encode(&self, all: &Tensor) -> Tensor {
        let (b, _, s, _) = all.size4().expect("per-head tensors are 4-D");
        let (device, kind) = (all.device(), all.kind());
        let rows = all.permute([0, 2, 1, 3]).reshape([b, s, -1]);
        (rows - self.mean.to_device(device).to_kind(kind))
            .matmul(&self.basis.to_device(device).to_kind(kind))
    }

    fn read_maps(&self, device: Device, kind: Kind) -> (Tensor, Tensor) {
        self.converted
            .get(&self.read, &self.read_intercept, device, kind)
    }

    fn bytes(&self) -> i64 {
        (self.basis.numel() + self.mean.numel()) as i64 * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::row_map::read_all_heads;
    use crate::stats::gram::Gram;

    fn moments_of(x: &Tensor) -> Moments {
        let mut gram = Gram::new(x.size()[1], Device::Cpu);
        gram.add(&x.to_kind(Kind::Double));
        gram.moments()
    }

    /// Vectors in a 2-D affine subspace of 3 heads × 2: rank 2 rebuilds them exactly (R² = 1),
    /// rank 1 keeps the larger direction's share of the variance.
    #[test]
    fn rank_of_the_data_rebuilds_it_and_lower_rank_keeps_the_leading_share() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let directions = Tensor::linalg_qr(&Tensor::randn([6, 2], opts), "reduced").0;
        let scales = Tensor::from_slice(&[3.0f32, 1.0]);
        let latent = Tensor::randn([400, 2], opts) * scales;
        let x = latent.matmul(&directions.tr())
            + Tensor::from_slice(&[1.0f32, -2.0, 0.5, 0.0, 3.0, 1.0]);
        let moments = moments_of(&x);
        let full = LowRankMap::fit(&moments, 3, 2, 2);
        let all = x.view([1, 400, 3, 2]).permute([0, 2, 1, 3]);
        let rebuilt = read_all_heads(&full, &full.encode(&all));
        let err = f64::try_from((&rebuilt - &all).abs().max()).unwrap();
        assert!(err < 1e-4, "rank 2 rebuilds: {err}");
        assert!((full.r2_pooled(&moments) - 1.0).abs() < 1e-5);
        let one = LowRankMap::fit(&moments, 3, 2, 1);
        let variances = latent.var_dim(0, true, false);
        let share = f64::try_from(variances.get(0) / variances.sum(Kind::Float)).unwrap();
        assert!((one.r2_pooled(&moments) - share).abs() < 0.02, "{share}");
        assert_eq!(one.bytes(), (6 + 6) * 4);
        assert_eq!(one.width(), 1);
    }
}

//! Ordinary least squares with intercept, fitted and scored from Gram statistics alone
//! (DESIGN.md "Key algorithm"): a fit is a small solve on sub-blocks of the fit split's scatter
//! matrix; its error on any split follows from that split's Gram, without the rows.
//!
//! Legend: F = feature columns (p of them), T = target columns (d), S = scatter `XᵀX − nμμᵀ`.

use tch::{Kind, Tensor};

use crate::stats::gram::Moments;

/// Why a fit or score has no number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegressionError {
    #[error("rank-deficient fit: {rows} rows for {features} features (+ intercept)")]
    RankDeficient { rows: i64, features: i64 },
    #[error("too few rows to score: {rows} rows")]
    TooFewRows { rows: i64 },
}

/// `targets ≈ coefficientsᵀ·features + intercept`.
pub struct Fit {
    /// `[p, d]`
    pub coefficients: Tensor,
    /// `[d]`
    pub intercept: Tensor,
    /// Column indices in the fit split's moments (empty for a fit from [`RegressionBlocks`]).
    pub features: Vec<i64>,
    pub targets: Vec<i64>,
}

/// Residual and total sums of squares per target column on one split.
pub struct Score {
    /// `[d]` Σ (y − ŷ)²
    pub sse: Tensor,
    /// `[d]` Σ (y − ȳ)² about this split's own mean
    pub sst: Tensor,
    pub rows: i64,
}

/// Rows ÷ features below which a fit is refused as numerically meaningless.
const MIN_ROWS_PER_FIT: i64 = 1;

/// `m[rows][:, cols]`. Heads are runs of consecutive columns, so the block is cut by narrowing to
/// each run (a view) and copying only the result: an `index_select` of whole rows first would copy
/// `rows × D` of a 4096² scatter for every fit.
fn select(m: &Tensor, rows: &[i64], cols: &[i64]) -> Tensor {
    let row_runs = consecutive_runs(rows);
    if row_runs.len() <= 1 {
        return gather(&gather(m, 0, rows), 1, cols);
    }
    let pieces: Vec<Tensor> = row_runs
        .iter()
        .map(|&(start, len)| gather(&m.narrow(0, start, len), 1, cols))
        .collect();
    Tensor::cat(&pieces, 0)
}

fn pick(v: &Tensor, entries: &[i64]) -> Tensor {
    gather(v, 0, entries)
}

/// `t`'s `entries` along `dim`: a view for one run of consecutive entries, else one copy.
fn gather(t: &Tensor, dim: i64, entries: &[i64]) -> Tensor {
    let runs = consecutive_runs(entries);
    match runs.as_slice() {
        [] => t.index_select(dim, &Tensor::zeros([0], (Kind::Int64, t.device()))),
        [(start, len)] => t.narrow(dim, *start, *len),
        _ => Tensor::cat(
            &runs
                .iter()
                .map(|&(start, len)| t.narrow(dim, start, len))
                .collect::<Vec<_>>(),
            dim,
        ),
    }
}

/// `entries` as maximal runs `(start, length)` of consecutive values, in order.
fn consecutive_runs(entries: &[i64]) -> Vec<(i64, i64)> {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &e in entries {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == e => *len += 1,
            _ => runs.push((e, 1)),
        }
    }
    runs
}

/// The parts of one split's moments that a regression of T on F touches: all a fit or a score
/// needs. Built from a full [`Moments`] by [`RegressionBlocks::select`], or assembled from Gram
/// blocks of several layers that never share one matrix (analysis/cross_layer.rs).
pub struct RegressionBlocks {
    pub rows: i64,
    /// `[p]` feature means
    pub mean_features: Tensor,
    /// `[d]` target means
    pub mean_targets: Tensor,
    /// `[p, p]` feature scatter
    pub scatter_features: Tensor,
    /// `[p, d]` feature–target scatter
    pub scatter_cross: Tensor,
    /// `[d]` target variances × rows: the diagonal of the target scatter
    pub scatter_targets: Tensor,
}

impl RegressionBlocks {
    /// The blocks of `gram` for `features` and `targets` (column indices).
    pub fn select(gram: &Moments, features: &[i64], targets: &[i64]) -> Self {
        let scatter = &gram.scatter;
        RegressionBlocks {
            rows: gram.rows,
            mean_features: pick(&gram.means, features),
            mean_targets: pick(&gram.means, targets),
            scatter_features: select(scatter, features, features),
            scatter_cross: select(scatter, features, targets),
            scatter_targets: pick(&scatter.diagonal(0, 0, 1), targets),
        }
    }

    pub fn features(&self) -> i64 {
        self.mean_features.size()[0]
    }
}

/// Fits OLS with intercept of `targets` on `features` from the fit split's Gram.
pub fn fit(gram: &Moments, features: &[i64], targets: &[i64]) -> Result<Fit, RegressionError> {
    let mut model = fit_blocks(&RegressionBlocks::select(gram, features, targets))?;
    model.features = features.to_vec();
    model.targets = targets.to_vec();
    Ok(model)
}

/// Fits OLS with intercept from the fit split's blocks (`features` and `targets` of the result
/// are left empty: the blocks carry no column names).
pub fn fit_blocks(blocks: &RegressionBlocks) -> Result<Fit, RegressionError> {
    let p = blocks.features();
    if blocks.rows < MIN_ROWS_PER_FIT * (p + 1) + 1 {
        return Err(RegressionError::RankDeficient {
            rows: blocks.rows,
            features: p,
        });
    }
    let s_ff = &blocks.scatter_features;
    let (chol, info) = s_ff.linalg_cholesky_ex(false, false);
    let coefficients =
        if i64::try_from(info.max()).unwrap_or(1) != 0 || !pivots_are_sound(&chol, s_ff) {
            min_norm_solve(s_ff, &blocks.scatter_cross)
        } else {
            blocks.scatter_cross.cholesky_solve(&chol, false)
        };
    let intercept =
        &blocks.mean_targets - coefficients.transpose(0, 1).matmul(&blocks.mean_features);
    Ok(Fit {
        coefficients,
        intercept,
        features: Vec::new(),
        targets: Vec::new(),
    })
}

/// Eigenvalues of the feature scatter below this fraction of the largest count as zero in a
/// min-norm fit: singular values of the centred features below f32 ε × the largest, the cutoff
/// scipy's `lstsq` (behind sklearn's `LinearRegression`) applies to f32 data.
const MIN_NORM_EIGEN_CUTOFF: f64 = (f32::EPSILON as f64) * (f32::EPSILON as f64);

/// The minimum-norm least-squares coefficients when features are linearly dependent (a head whose
/// QK-norm gain is zero in some dimensions, as in Gemma-3-270M): `S_ff⁺ S_ft` through the
/// eigendecomposition, dropping the null directions. Predictions equal any exact solution's, so
/// R² is what lstsq gives, not NaN.
fn min_norm_solve(s_ff: &Tensor, s_ft: &Tensor) -> Tensor {
    let (eigenvalues, eigenvectors) = s_ff.linalg_eigh("L");
    let largest = f64::try_from(eigenvalues.max()).unwrap_or(0.0).max(0.0);
    let keep = eigenvalues.gt(largest * MIN_NORM_EIGEN_CUTOFF);
    let inverse = eigenvalues
        .reciprocal()
        .where_self(&keep, &eigenvalues.zeros_like());
    let projected = eigenvectors.transpose(0, 1).matmul(s_ft) * inverse.unsqueeze(1);
    eigenvectors.matmul(&projected)
}

/// Relative size below which a Cholesky pivot means a (numerically) dependent feature.
const PIVOT_TOLERANCE: f64 = 1e-10;

/// Cholesky succeeds on matrices that are singular up to rounding; reject pivots that are tiny
/// relative to the feature's own scatter, i.e. features explained by the others to ~1e-10.
fn pivots_are_sound(chol: &Tensor, s_ff: &Tensor) -> bool {
    let pivots = chol.diagonal(0, 0, 1).pow_tensor_scalar(2);
    let scale = s_ff.diagonal(0, 0, 1).clamp_min(f64::MIN_POSITIVE);
    f64::try_from((pivots / scale).min()).is_ok_and(|r| r > PIVOT_TOLERANCE)
}

/// Sums of squares of `fit` on the split summarised by `gram` (the fit split gives in-sample).
pub fn score(fit: &Fit, gram: &Moments) -> Result<Score, RegressionError> {
    score_blocks(
        fit,
        &RegressionBlocks::select(gram, &fit.features, &fit.targets),
    )
}

/// Sums of squares of `fit` on the split whose blocks (same features and targets) are given.
pub fn score_blocks(fit: &Fit, blocks: &RegressionBlocks) -> Result<Score, RegressionError> {
    if blocks.rows < 2 {
        return Err(RegressionError::TooFewRows { rows: blocks.rows });
    }
    let s_ff = &blocks.scatter_features;
    let s_ft = &blocks.scatter_cross;
    let s_tt = &blocks.scatter_targets;
    let beta = &fit.coefficients;
    // Σ over rows of the centred residual², per target: S_tt − 2βᵀS_ft + βᵀS_ffβ (diagonals).
    let centred_sse = s_tt - (beta * s_ft).sum_dim_intlist(0, false, Kind::Double) * 2.0
        + (beta * s_ff.matmul(beta)).sum_dim_intlist(0, false, Kind::Double);
    // Plus n × (mean residual)², the part of the error the split's mean shift adds.
    let mean_residual =
        &blocks.mean_targets - beta.transpose(0, 1).matmul(&blocks.mean_features) - &fit.intercept;
    let sse =
        (centred_sse + mean_residual.pow_tensor_scalar(2) * blocks.rows as f64).clamp_min(0.0);
    Ok(Score {
        sse,
        sst: s_tt.clamp_min(0.0),
        rows: blocks.rows,
    })
}

impl Score {
    /// The sums of squares of `len` target columns from `start`: one target head of a batched fit.
    pub fn columns(&self, start: i64, len: i64) -> Score {
        Score {
            sse: self.sse.narrow(0, start, len),
            sst: self.sst.narrow(0, start, len),
            rows: self.rows,
        }
    }

    /// R² per target column averaged uniformly (sklearn's `r2_score` default, as the paper's code).
    /// A constant column scores 1 if predicted exactly, else 0 (sklearn's `force_finite`).
    pub fn r2_uniform(&self) -> f64 {
        let ratio = (&self.sse / self.sst.clamp_min(f64::MIN_POSITIVE))
            .where_self(&self.sst.gt(0.0), &self.sse.gt(0.0).to_kind(Kind::Double));
        f64::try_from((ratio.neg() + 1.0).mean(Kind::Double)).unwrap_or(f64::NAN)
    }

    /// Pooled R²: 1 − ΣSSE / ΣSST over all target columns.
    pub fn r2_pooled(&self) -> f64 {
        let sse = f64::try_from(self.sse.sum(Kind::Double)).unwrap_or(f64::NAN);
        let sst = f64::try_from(self.sst.sum(Kind::Double)).unwrap_or(f64::NAN);
        pooled_r2(sse, sst)
    }
}

/// 1 − SSE/SST; a zero SST scores 1 if predicted exactly, else 0 (sklearn's `force_finite`).
pub fn pooled_r2(sse: f64, sst: f64) -> f64 {
    if sst > 0.0 {
        1.0 - sse / sst
    } else if sse > 0.0 {
        0.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::gram::Gram;
    use tch::Device;

    /// Direct OLS with intercept through LAPACK's least squares on the rows, and sklearn-style R².
    fn direct(x: &Tensor, y: &Tensor, xe: &Tensor, ye: &Tensor) -> (f64, f64, f64, f64) {
        let ones = Tensor::ones([x.size()[0], 1], (Kind::Double, Device::Cpu));
        let design = Tensor::cat(&[x, &ones], 1);
        let (solution, _, _, _) = design.linalg_lstsq(y, None, "gelsd");
        let r2 = |xx: &Tensor, yy: &Tensor| {
            let ones = Tensor::ones([xx.size()[0], 1], (Kind::Double, Device::Cpu));
            let pred = Tensor::cat(&[xx, &ones], 1).matmul(&solution);
            let sse = (yy - pred)
                .pow_tensor_scalar(2)
                .sum_dim_intlist(0, false, Kind::Double);
            let sst = (yy - yy.mean_dim(0, true, Kind::Double))
                .pow_tensor_scalar(2)
                .sum_dim_intlist(0, false, Kind::Double);
            let uniform = f64::try_from(((&sse / &sst).neg() + 1.0).mean(Kind::Double)).unwrap();
            let pooled = 1.0
                - f64::try_from(sse.sum(Kind::Double)).unwrap()
                    / f64::try_from(sst.sum(Kind::Double)).unwrap();
            (uniform, pooled)
        };
        let (a, b) = r2(x, y);
        let (c, d) = r2(xe, ye);
        (a, b, c, d)
    }

    #[test]
    fn gram_ols_equals_direct_lstsq_in_and_out_of_sample() {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let mixing = Tensor::randn([10, 10], opts);
        let data = Tensor::randn([400, 10], opts).matmul(&mixing) + Tensor::randn([10], opts) * 2.0;
        let (train, test) = (data.narrow(0, 0, 300), data.narrow(0, 300, 100));
        let features = [0i64, 2, 3, 7];
        let targets = [1i64, 4, 5];
        let pick = |m: &Tensor, c: &[i64]| m.index_select(1, &Tensor::from_slice(c));
        let mut g_train = Gram::new(10, Device::Cpu);
        g_train.add(&train);
        let mut g_test = Gram::new(10, Device::Cpu);
        g_test.add(&test);
        let (m_train, m_test) = (g_train.moments(), g_test.moments());
        let f = fit(&m_train, &features, &targets).unwrap();
        let ins = score(&f, &m_train).unwrap();
        let out = score(&f, &m_test).unwrap();
        let (iu, ip, ou, op) = direct(
            &pick(&train, &features),
            &pick(&train, &targets),
            &pick(&test, &features),
            &pick(&test, &targets),
        );
        for (got, want) in [
            (ins.r2_uniform(), iu),
            (ins.r2_pooled(), ip),
            (out.r2_uniform(), ou),
            (out.r2_pooled(), op),
        ] {
            assert!((got - want).abs() < 1e-10, "{got} vs {want}");
        }
    }

    #[test]
    fn a_column_predicts_itself_perfectly() {
        tch::manual_seed(4);
        let x = Tensor::randn([100, 3], (Kind::Double, Device::Cpu));
        let mut g = Gram::new(3, Device::Cpu);
        g.add(&x);
        let m = g.moments();
        let f = fit(&m, &[0, 1], &[1]).unwrap();
        let s = score(&f, &m).unwrap();
        assert!((s.r2_uniform() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn dependent_features_get_lstsq_min_norm_r2_and_too_few_rows_are_refused() {
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::randn([100, 3], opts);
        // Columns: 0, 1, a copy of 0, a constant (a zero-gain dimension), then the target 2.
        let data = Tensor::cat(
            &[
                x.narrow(1, 0, 2),
                x.narrow(1, 0, 1),
                Tensor::full([100, 1], 0.5, opts),
                x.narrow(1, 2, 1) + x.narrow(1, 0, 1) * 0.7,
            ],
            1,
        );
        let (train, test) = (data.narrow(0, 0, 70), data.narrow(0, 70, 30));
        let mut g_train = Gram::new(5, Device::Cpu);
        g_train.add(&train);
        let mut g_test = Gram::new(5, Device::Cpu);
        g_test.add(&test);
        let features = [0i64, 1, 2, 3];
        let f = fit(&g_train.moments(), &features, &[4]).unwrap();
        let ins = score(&f, &g_train.moments()).unwrap();
        let out = score(&f, &g_test.moments()).unwrap();
        let pick = |m: &Tensor, c: &[i64]| m.index_select(1, &Tensor::from_slice(c));
        let (iu, _, ou, _) = direct(
            &pick(&train, &features),
            &pick(&train, &[4]),
            &pick(&test, &features),
            &pick(&test, &[4]),
        );
        assert!(
            (ins.r2_uniform() - iu).abs() < 1e-10,
            "{} vs {iu}",
            ins.r2_uniform()
        );
        assert!(
            (out.r2_uniform() - ou).abs() < 1e-10,
            "{} vs {ou}",
            out.r2_uniform()
        );
        assert!(iu > 0.2 && iu < 0.9, "a real, imperfect fit: {iu}");
        let mut few = Gram::new(3, Device::Cpu);
        few.add(&x.narrow(0, 0, 2));
        assert!(matches!(
            fit(&few.moments(), &[0, 1], &[2]),
            Err(RegressionError::RankDeficient {
                rows: 2,
                features: 2
            })
        ));
    }
}

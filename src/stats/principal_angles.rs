//! Principal angles between subspaces, overlap dimension, and the weight-only R² of one head's
//! projection from others' (pure f64 linear algebra on weight matrices).
//!
//! Legend: a head's projection is W ∈ ℝ^{d_model × d_head}, its columns spanning the head's
//! subspace; Q_A is an orthonormal basis of span(A).

use std::cell::OnceCell;

use tch::{Kind, Tensor};

/// Orthonormal basis `[d, r]` of the column span of `w` `[d, m]` (reduced QR; `w` full column rank).
pub fn orthonormal_basis(w: &Tensor) -> Tensor {
    let (q, _) = Tensor::linalg_qr(&w.to_kind(Kind::Double), "reduced");
    q
}

/// Singular values of `m`, largest first.
pub fn singular_values(m: &Tensor) -> Tensor {
    // `Tensor::svd` rather than `linalg_svdvals`: tch always passes a driver string, which
    // libtorch's CPU SVD refuses.
    let (_, s, _) = m.to_kind(Kind::Double).svd(true, false);
    s
}

/// Cosines of the principal angles between span(qa) and span(qb), given orthonormal bases;
/// `min(dim a, dim b)` values in [0, 1], largest first (smallest angle first).
pub fn principal_cosines(qa: &Tensor, qb: &Tensor) -> Tensor {
    singular_values(&qa.transpose(0, 1).matmul(qb)).clamp(0.0, 1.0)
}

/// Summary of the principal angles between two subspaces.
#[derive(Clone, Debug, PartialEq)]
pub struct AngleSummary {
    /// All principal angles in degrees, smallest first.
    pub angles_degrees: Vec<f64>,
    /// Mean of cos²θ_i over the angles (1 for equal subspaces, d_head/d_model expected at random).
    pub mean_cos2: f64,
    /// sqrt(Σ θ_i²) in radians: the geodesic distance on the Grassmannian.
    pub grassmann_distance: f64,
    /// Σ (1 − cos²θ_i), the paper code's "sum of sin²".
    pub sum_sin2: f64,
    /// Angles whose cosine is ≥ 1 − 1e-6 (shared directions).
    pub shared_directions: usize,
}

/// Cosines at or above this count as a shared direction (the paper code's threshold).
pub const SHARED_COSINE: f64 = 1.0 - 1e-6;

pub fn summarize(cosines: &Tensor) -> AngleSummary {
    let c = Vec::<f64>::try_from(&cosines.to_kind(Kind::Double)).unwrap_or_default();
    let angles: Vec<f64> = c.iter().map(|&x| x.min(1.0).acos()).collect();
    let n = c.len().max(1) as f64;
    AngleSummary {
        angles_degrees: angles.iter().map(|a| a.to_degrees()).collect(),
        mean_cos2: c.iter().map(|x| x * x).sum::<f64>() / n,
        grassmann_distance: angles.iter().map(|a| a * a).sum::<f64>().sqrt(),
        sum_sin2: c.iter().map(|x| 1.0 - x * x).sum(),
        shared_directions: c.iter().filter(|&&x| x >= SHARED_COSINE).count(),
    }
}

/// Numerical rank of `w`: singular values above `tolerance · σ_max`.
pub fn rank(w: &Tensor, relative_tolerance: f64) -> i64 {
    let s = singular_values(w);
    let max = f64::try_from(s.max()).unwrap_or(0.0);
    i64::try_from(s.gt(relative_tolerance * max).sum(Kind::Int64)).unwrap_or(0)
}

/// The relative rank tolerance for weights stored in f32: max(m, n)·ε_f32, numpy's and torch's
/// default rule applied at the precision the weights were trained and stored in.
pub fn f32_rank_tolerance(rows: i64, cols: i64) -> f64 {
    rows.max(cols) as f64 * f32::EPSILON as f64
}

/// Σ_h rank(W_h) − rank([W_1 … W_H]): how many dimensions the heads' subspaces share.
pub fn overlap_dimension(blocks: &[Tensor], relative_tolerance: f64) -> (i64, i64) {
    let individual: i64 = blocks.iter().map(|b| rank(b, relative_tolerance)).sum();
    let joint = rank(&Tensor::cat(blocks, 1), relative_tolerance);
    (individual, joint)
}

/// Population pooled R² of predicting `y = W_tᵀx` from `z = W_Rᵀx` by the best linear map when
/// `x` is isotropic: ‖P_R W_t‖²_F / ‖W_t‖²_F, P_R the orthogonal projector onto span(W_R).
pub fn weight_only_r2(w_target: &Tensor, w_references: &Tensor) -> f64 {
    let q = orthonormal_basis(w_references);
    let t = w_target.to_kind(Kind::Double);
    let projected = q.transpose(0, 1).matmul(&t);
    let num = f64::try_from(projected.pow_tensor_scalar(2).sum(Kind::Double)).unwrap_or(f64::NAN);
    let den = f64::try_from(t.pow_tensor_scalar(2).sum(Kind::Double)).unwrap_or(f64::NAN);
    num / den
}

/// Eigenvalues of a Gram block below this × its size × its largest are null directions: the f64
/// Gram of f32 weights carries rounding of about f64 ε relative to the largest eigenvalue.
const WHITENING_EIGEN_TOLERANCE: f64 = 1e-13;

/// The same quantities from the Gram matrix `G = [W_1 … W_H]ᵀ[W_1 … W_H]` of one layer: after one
/// `d·n²` product every pairwise and set-wise quantity is a small solve on sub-blocks, instead of a
/// QR of a `d × k·d_head` matrix per comparison.
pub struct ProjectionGram {
    /// `[n, n]` f64, n = heads·head_dim.
    pub gram: Tensor,
    pub head_dim: i64,
    /// Each single head's whitening, computed on first use: a layer's pairwise comparisons
    /// whiten every head H − 1 times otherwise (one eigendecomposition each).
    single_head_whitening: Vec<OnceCell<Tensor>>,
}

impl ProjectionGram {
    /// `blocks`: the heads' `[d_model, head_dim]` projections.
    pub fn new(blocks: &[Tensor]) -> Self {
        let w = Tensor::cat(blocks, 1).to_kind(Kind::Double);
        ProjectionGram {
            gram: w.transpose(0, 1).matmul(&w),
            head_dim: blocks[0].size()[1],
            single_head_whitening: blocks.iter().map(|_| OnceCell::new()).collect(),
        }
    }

    fn columns(&self, heads: &[usize]) -> Tensor {
        let d = self.head_dim;
        let idx: Vec<i64> = heads
            .iter()
            .flat_map(|&h| (h as i64 * d)..((h as i64 + 1) * d))
            .collect();
        Tensor::from_slice(&idx)
    }

    fn block(&self, rows: &[usize], cols: &[usize]) -> Tensor {
        self.gram
            .index_select(0, &self.columns(rows))
            .index_select(1, &self.columns(cols))
    }

    /// `B` with `W_heads·B` an orthonormal basis of span(W_heads): `V_r Λ_r^−½` from the
    /// eigendecomposition of the heads' Gram block, null directions dropped. A set of heads need
    /// not have full column rank: three Gemma-3-270M heads span 768 columns in 640 dimensions, and
    /// a zero QK-norm gain folded in leaves a head rank-deficient.
    fn whitening(&self, heads: &[usize]) -> Tensor {
        match heads {
            [head] => self.single_head_whitening[*head]
                .get_or_init(|| self.compute_whitening(heads))
                .shallow_clone(),
            _ => self.compute_whitening(heads),
        }
    }

    fn compute_whitening(&self, heads: &[usize]) -> Tensor {
        let (eigenvalues, eigenvectors) = self.block(heads, heads).linalg_eigh("L");
        let largest = f64::try_from(eigenvalues.max()).unwrap_or(0.0).max(0.0);
        let n = eigenvalues.size()[0];
        let keep = eigenvalues.gt(largest * WHITENING_EIGEN_TOLERANCE * n as f64);
        let kept = keep.nonzero().squeeze_dim(1);
        let values = eigenvalues.index_select(0, &kept);
        eigenvectors.index_select(1, &kept) * values.rsqrt().unsqueeze(0)
    }

    /// Cosines of the principal angles between span(W_A) and span(W_B): the singular values of
    /// `B_Aᵀ G_AB B_B`, with `B` the [`whitening`](Self::whitening) of each side (equal to the
    /// Cholesky route `L_A⁻¹ G_AB L_B⁻ᵀ` when both have full column rank).
    pub fn cosines(&self, a: &[usize], b: &[usize]) -> Tensor {
        let (w_a, w_b) = (self.whitening(a), self.whitening(b));
        let m = w_a.transpose(0, 1).matmul(&self.block(a, b)).matmul(&w_b);
        singular_values(&m).clamp(0.0, 1.0)
    }

    /// Weight-only R² of `target` from `references`: tr(G_tR G_RR⁺ G_Rt) / tr(G_tt), the
    /// pseudo-inverse through the references' whitening.
    pub fn weight_only_r2(&self, target: usize, references: &[usize]) -> f64 {
        let projected = self
            .whitening(references)
            .transpose(0, 1)
            .matmul(&self.block(references, &[target]));
        let explained = projected.pow_tensor_scalar(2).sum(Kind::Double);
        let total = self.block(&[target], &[target]).trace();
        f64::try_from(explained / total).unwrap_or(f64::NAN)
    }

    /// Numerical rank of W_heads: singular values of W are the square roots of G's eigenvalues.
    pub fn rank(&self, heads: &[usize], relative_tolerance: f64) -> i64 {
        let s = self
            .block(heads, heads)
            .linalg_eigvalsh("L")
            .clamp_min(0.0)
            .sqrt();
        let max = f64::try_from(s.max()).unwrap_or(0.0);
        i64::try_from(s.gt(relative_tolerance * max).sum(Kind::Int64)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(rows: i64, cols: i64) -> Tensor {
        Tensor::randn([rows, cols], (Kind::Double, Device::Cpu))
    }

    #[test]
    fn a_subspace_with_itself_and_with_its_complement() {
        tch::manual_seed(1);
        let w = randn(10, 3);
        let q = orthonormal_basis(&w);
        let same = summarize(&principal_cosines(
            &q,
            &orthonormal_basis(&(w.matmul(&randn(3, 3)))),
        ));
        assert!(same.angles_degrees.iter().all(|a| *a < 1e-4), "{same:?}");
        assert_eq!(same.shared_directions, 3);
        // The orthogonal complement: every angle is 90°.
        let full = orthonormal_basis(&Tensor::cat(&[&w, &randn(10, 7)], 1));
        let complement = full.narrow(1, 3, 7);
        let perp = summarize(&principal_cosines(&q, &complement));
        assert!(
            perp.angles_degrees.iter().all(|a| (a - 90.0).abs() < 1e-6),
            "{perp:?}"
        );
        assert!(perp.mean_cos2 < 1e-12);
    }

    #[test]
    fn known_angle_in_the_plane() {
        // span(e1) vs span(cos t e1 + sin t e2): one angle t.
        let t = 0.3f64;
        let a = Tensor::from_slice(&[1.0f64, 0.0, 0.0]).view([3, 1]);
        let b = Tensor::from_slice(&[t.cos(), t.sin(), 0.0]).view([3, 1]);
        let s = summarize(&principal_cosines(
            &orthonormal_basis(&a),
            &orthonormal_basis(&b),
        ));
        assert!((s.angles_degrees[0] - t.to_degrees()).abs() < 1e-9);
        assert!((s.grassmann_distance - t).abs() < 1e-12);
    }

    #[test]
    fn overlap_counts_shared_dimensions() {
        tch::manual_seed(2);
        let shared = randn(20, 2);
        let a = Tensor::cat(&[&shared, &randn(20, 3)], 1);
        let b = Tensor::cat(&[&shared, &randn(20, 3)], 1);
        let (individual, joint) = overlap_dimension(&[a, b], f32_rank_tolerance(20, 10));
        assert_eq!((individual, joint), (10, 8));
    }

    #[test]
    fn gram_route_equals_the_basis_route() {
        tch::manual_seed(5);
        let blocks: Vec<Tensor> = (0..4).map(|_| randn(30, 3)).collect();
        let g = ProjectionGram::new(&blocks);
        let direct = principal_cosines(
            &orthonormal_basis(&blocks[0]),
            &orthonormal_basis(&blocks[2]),
        );
        assert!(f64::try_from((g.cosines(&[0], &[2]) - direct).abs().max()).unwrap() < 1e-10);
        let refs = Tensor::cat(&[&blocks[1], &blocks[3]], 1);
        assert!((g.weight_only_r2(0, &[1, 3]) - weight_only_r2(&blocks[0], &refs)).abs() < 1e-10);
        assert_eq!(g.rank(&[0, 1, 2, 3], f32_rank_tolerance(30, 12)), 12);
    }

    #[test]
    fn rank_deficient_heads_and_sets_wider_than_the_model_match_the_basis_route() {
        tch::manual_seed(6);
        // d_model 8, head_dim 3: head 0 loses a column (a zero gain), heads 1–3 together are 9
        // columns in 8 dimensions.
        let blocks: Vec<Tensor> = (0..4).map(|_| randn(8, 3)).collect();
        let _ = blocks[0].narrow(1, 2, 1).zero_();
        let g = ProjectionGram::new(&blocks);
        let basis = |heads: &[usize]| {
            let w = Tensor::cat(
                &heads
                    .iter()
                    .map(|&h| blocks[h].shallow_clone())
                    .collect::<Vec<_>>(),
                1,
            );
            let (u, s, _) = w.to_kind(Kind::Double).svd(true, true);
            let r = i64::try_from(
                s.gt(1e-9 * f64::try_from(s.max()).unwrap())
                    .sum(Kind::Int64),
            )
            .unwrap();
            u.narrow(1, 0, r)
        };
        for (a, b) in [
            (vec![0usize], vec![1usize]),
            (vec![1, 2, 3], vec![0]),
            (vec![0, 1], vec![2, 3]),
        ] {
            let direct = principal_cosines(&basis(&a), &basis(&b));
            let via_gram = g.cosines(&a, &b);
            assert_eq!(via_gram.size(), direct.size(), "{a:?} vs {b:?}");
            assert!(
                f64::try_from((via_gram - direct).abs().max()).unwrap() < 1e-9,
                "{a:?} vs {b:?}"
            );
        }
        let refs = Tensor::cat(
            &[
                blocks[1].shallow_clone(),
                blocks[2].shallow_clone(),
                blocks[3].shallow_clone(),
            ],
            1,
        );
        let r2 = g.weight_only_r2(0, &[1, 2, 3]);
        assert!(
            (r2 - weight_only_r2(&blocks[0], &refs)).abs() < 1e-9,
            "{r2}"
        );
        assert!((r2 - 1.0).abs() < 1e-9, "8 dimensions spanned: {r2}");
    }

    #[test]
    fn weight_only_r2_of_a_head_inside_and_outside_the_span() {
        tch::manual_seed(3);
        let refs = randn(12, 4);
        let inside = refs.matmul(&randn(4, 2));
        assert!((weight_only_r2(&inside, &refs) - 1.0).abs() < 1e-12);
        let q = orthonormal_basis(&Tensor::cat(&[&refs, &randn(12, 2)], 1));
        let outside = q.narrow(1, 4, 2);
        assert!(weight_only_r2(&outside, &refs).abs() < 1e-12);
    }
}

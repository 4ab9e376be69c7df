//! The init-time bound on linear predictability (theory/init_bound.md): the top-m eigenvalue share
//! B(Σ, m), the Gaussian floor, the isotropic closed forms, the selection slack, and a Monte Carlo
//! estimator of E[R²] and ρ̄ over random projections for a given input spectrum.
//!
//! Legend: d = input dimension, d_h = head_dim, k = reference heads, m = k·d_h, r = rank Σ,
//! λ = eigenvalues of Σ (descending). The Monte Carlo works in Σ's eigenbasis, Σ = diag(λ): for
//! Gaussian weights that is no loss (rotation invariance, §3 "Structure under Gaussian weights");
//! for other laws it is the coordinate-aligned Σ of theory/init_bound.md §6.3.

use tch::{Device, Kind, Tensor};

use crate::stats::random::sample_normal;

/// Eigenvalues at most this many `d·ε_mach·λ₁` count as zero when taking the rank (§7).
pub const RANK_TOLERANCE_FACTOR: f64 = 1.0;

/// Eigenvalues sorted descending, negatives (round-off of a PSD estimate) set to 0.
pub fn descending(eigenvalues: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = eigenvalues.iter().map(|&l| l.max(0.0)).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted
}

/// Numerical rank: eigenvalues above `d·ε_mach·λ₁` (theory/init_bound.md §7).
pub fn numerical_rank(eigenvalues: &[f64]) -> usize {
    let sorted = descending(eigenvalues);
    let Some(&top) = sorted.first() else {
        return 0;
    };
    let cut = RANK_TOLERANCE_FACTOR * sorted.len() as f64 * f64::EPSILON * top;
    sorted.iter().filter(|&&l| l > cut).count()
}

/// The bound B(Σ, m) = Σ_{i ≤ min(m, r)} λᵢ / tr Σ: the top-m eigenvalue share (Theorems 1–2).
/// NaN for an empty or all-zero spectrum.
pub fn top_share_bound(eigenvalues: &[f64], m: usize) -> f64 {
    let sorted = descending(eigenvalues);
    let total: f64 = sorted.iter().sum();
    let rank = numerical_rank(&sorted);
    let top: f64 = sorted.iter().take(m.min(rank)).sum();
    top / total
}

/// The Gaussian-init floor min(m, r)/r (Theorem 2(ii)); also the isotropic exact value m/r.
pub fn gaussian_floor(m: usize, rank: usize) -> f64 {
    m.min(rank) as f64 / rank as f64
}

/// The standard deviation of one head's pooled R² for Σ ∝ Π_r (Theorem 3(b): a Beta law).
pub fn isotropic_pooled_sd(m: usize, rank: usize, head_dim: usize) -> f64 {
    beta_variance(m, rank, head_dim).sqrt()
}

/// Var[R²_pool] = (m/r)(1 − m/r) / (r·d_h/2 + 1) for Σ ∝ Π_r and Gaussian weights.
pub fn beta_variance(m: usize, rank: usize, head_dim: usize) -> f64 {
    let p = m as f64 / rank as f64;
    p * (1.0 - p) / (rank as f64 * head_dim as f64 / 2.0 + 1.0)
}

/// The most the choice among `sets` candidate reference sets can add to E[R²] (§6.8, isotropic):
/// √(2 ln N / (2 r d_h + 4)).
pub fn selection_slack(sets: f64, rank: usize, head_dim: usize) -> f64 {
    selection_slack_for_variance(sets, 1.0 / (2.0 * rank as f64 * head_dim as f64 + 4.0))
}

/// The same maximal inequality for `sets` sub-Gaussian values with proxy variance `variance`:
/// √(2 ln N · v). With v = 1/(2 r d_h + 4) it is [`selection_slack`] (proven, isotropic); with a
/// Monte Carlo variance of one head's R² it is §6.8's heuristic for anisotropic Σ.
pub fn selection_slack_for_variance(sets: f64, variance: f64) -> f64 {
    if sets <= 1.0 {
        return 0.0;
    }
    (2.0 * sets.ln() * variance).sqrt()
}

/// The binomial coefficient C(n, k) as f64 (for counting reference sets).
pub fn choose(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Named input spectra for the Monte Carlo grid.
#[derive(Clone, Debug, PartialEq)]
pub enum Spectrum {
    /// λᵢ = 1 for i ≤ rank, 0 beyond (Σ = Π_r; rank = d is Σ = I).
    Isotropic { dimension: usize, rank: usize },
    /// λᵢ = i^(−α) for i ≤ rank, 0 beyond.
    PowerLaw {
        dimension: usize,
        alpha: f64,
        rank: usize,
    },
    /// Eigenvalues measured from a model layer's attention input.
    Measured { name: String, eigenvalues: Vec<f64> },
}

impl Spectrum {
    /// The two full-rank reference spectra at `dimension`: isotropic and power law α = 1.
    pub fn isotropic_and_power_law(dimension: usize) -> [Spectrum; 2] {
        [
            Spectrum::Isotropic {
                dimension,
                rank: dimension,
            },
            Spectrum::PowerLaw {
                dimension,
                alpha: 1.0,
                rank: dimension,
            },
        ]
    }

    pub fn eigenvalues(&self) -> Vec<f64> {
        match self {
            Spectrum::Isotropic { dimension, rank } => (0..*dimension)
                .map(|i| if i < *rank { 1.0 } else { 0.0 })
                .collect(),
            Spectrum::PowerLaw {
                dimension,
                alpha,
                rank,
            } => (0..*dimension)
                .map(|i| {
                    if i < *rank {
                        ((i + 1) as f64).powf(-alpha)
                    } else {
                        0.0
                    }
                })
                .collect(),
            Spectrum::Measured { eigenvalues, .. } => descending(eigenvalues),
        }
    }

    /// A short name for tables: `isotropic`, `isotropic rank 48`, `power 1`, `power 1 rank 48`, or the measured name.
    pub fn name(&self) -> String {
        let rank_note = |rank: usize, dimension: usize| {
            if rank < dimension {
                format!(" rank {rank}")
            } else {
                String::new()
            }
        };
        match self {
            Spectrum::Isotropic { dimension, rank } => {
                format!("isotropic{}", rank_note(*rank, *dimension))
            }
            Spectrum::PowerLaw {
                dimension,
                alpha,
                rank,
            } => format!("power {alpha}{}", rank_note(*rank, *dimension)),
            Spectrum::Measured { name, .. } => name.clone(),
        }
    }

    pub fn is_isotropic(&self) -> bool {
        matches!(self, Spectrum::Isotropic { .. })
    }
}

/// The law of the projection weights' entries (scale is irrelevant: every R² is scale-free).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightLaw {
    Gaussian,
    /// N(0, 1) truncated at ±3 (OLMo-2's init, §6.3).
    TruncatedNormal,
}

impl WeightLaw {
    pub fn name(self) -> &'static str {
        match self {
            WeightLaw::Gaussian => "gaussian",
            WeightLaw::TruncatedNormal => "truncated-normal",
        }
    }

    /// Where the law is cut, in standard deviations (∞ for the plain Gaussian).
    pub fn cut_sigmas(self) -> f64 {
        match self {
            WeightLaw::Gaussian => f64::INFINITY,
            WeightLaw::TruncatedNormal => crate::stats::random::TRUNCATION_SIGMAS,
        }
    }
}

/// Monte Carlo means over weight draws for one reference count k, with standard errors.
#[derive(Clone, Debug, PartialEq)]
pub struct MonteCarloPoint {
    pub k: usize,
    pub draws: usize,
    /// E[R²_pool] and its standard error.
    pub r2_pooled: f64,
    pub r2_pooled_se: f64,
    /// E[R²_unif] (mean over output coordinates) and its standard error.
    pub r2_uniform: f64,
    pub r2_uniform_se: f64,
    /// ρ̄ = E tr(P_M Σ) / tr Σ and its standard error.
    pub rho_bar: f64,
    pub rho_bar_se: f64,
    /// Sample variance of R²_pool across draws (for the Beta law check).
    pub r2_pooled_variance: f64,
    /// Sample variance of R²_unif across draws.
    pub r2_uniform_variance: f64,
    /// Mean and standard error of the paired differences R²_pool − tr(P_M Σ)/tr Σ and
    /// R²_unif − tr(P_M Σ)/tr Σ (Theorem 2(ii) says both means are ≤ 0).
    pub pooled_minus_rho: (f64, f64),
    pub uniform_minus_rho: (f64, f64),
    /// The largest per-draw tr(P_M Σ)/tr Σ − B (Ky Fan: never > 0 up to round-off).
    pub worst_ky_fan_excess: f64,
}

/// Per-draw exact population quantities for k = 1..=max_k, from one pair (W_t, W_R).
#[derive(Clone, Debug, PartialEq)]
pub struct DrawValues {
    pub r2_pooled: Vec<f64>,
    pub r2_uniform: Vec<f64>,
    /// tr(P_M Σ) / tr Σ
    pub explained_share: Vec<f64>,
}

/// Exact population R² (formula (2) of theory/init_bound.md) of a target from nested reference
/// sets, for `Σ = diag(eigenvalues)`.
///
/// Shapes: `target` `[d, d_h]`, `references` `[d, max_k·d_h]` (reference head i is columns
/// i·d_h..(i+1)·d_h), f64. The first k heads form the set for k. Needs max_k·d_h ≤ rank Σ so the
/// reference projections have full column rank (Lemma 4); the caller checks.
pub fn population_values(
    eigenvalues: &[f64],
    target: &Tensor,
    references: &Tensor,
    head_dim: usize,
    max_k: usize,
) -> DrawValues {
    let lambda = Tensor::from_slice(eigenvalues).to_kind(Kind::Double);
    let root = lambda.sqrt().unsqueeze(1);
    let n = target * &root; // Σ^{1/2} W_t
    let m = references * &root; // Σ^{1/2} W_R
                                // Reduced QR: the first j columns of Q span the first j columns of M, so one QR serves every k.
    let (q, _) = Tensor::linalg_qr(&m, "reduced");
    let coefficients = q.transpose(0, 1).matmul(&n).square(); // [m, d_h]
    let totals = n.square().sum_dim_intlist(0, false, Kind::Double); // [d_h]
    let direction_share =
        (q.square() * lambda.unsqueeze(1)).sum_dim_intlist(0, false, Kind::Double)
            / lambda.sum(Kind::Double);
    let cumulative = coefficients.cumsum(0, Kind::Double);
    let shares = direction_share.cumsum(0, Kind::Double);
    let total_all = f64::try_from(totals.sum(Kind::Double)).expect("scalar");
    let mut values = DrawValues {
        r2_pooled: Vec::with_capacity(max_k),
        r2_uniform: Vec::with_capacity(max_k),
        explained_share: Vec::with_capacity(max_k),
    };
    for k in 1..=max_k {
        let row = (k * head_dim - 1) as i64;
        let explained = cumulative.get(row); // [d_h]
        values
            .r2_pooled
            .push(f64::try_from(explained.sum(Kind::Double)).expect("scalar") / total_all);
        values
            .r2_uniform
            .push(f64::try_from((&explained / &totals).mean(Kind::Double)).expect("scalar"));
        values
            .explained_share
            .push(f64::try_from(shares.get(row)).expect("scalar"));
    }
    values
}

/// Draws `draws` independent (W_t, W_R) with iid entries of `law` and averages the exact
/// population quantities, for k = 1..=max_k. Deterministic in (`seed`, `stream`): draw i uses
/// the ChaCha8 stream of `"{stream}/{i}/target"` and `".../references"`.
pub fn monte_carlo(
    eigenvalues: &[f64],
    head_dim: usize,
    max_k: usize,
    law: WeightLaw,
    draws: usize,
    seed: u64,
    stream: &str,
) -> Vec<MonteCarloPoint> {
    let eigenvalues = descending(eigenvalues);
    let d = eigenvalues.len() as i64;
    let cut = law.cut_sigmas();
    let bounds: Vec<f64> = (1..=max_k)
        .map(|k| top_share_bound(&eigenvalues, k * head_dim))
        .collect();
    let per_draw: Vec<DrawValues> = (0..draws)
        .map(|i| {
            let target = sample_normal(
                &[d, head_dim as i64],
                seed,
                &format!("{stream}/{i}/target"),
                1.0,
                cut,
            )
            .to_kind(Kind::Double);
            let references = sample_normal(
                &[d, (max_k * head_dim) as i64],
                seed,
                &format!("{stream}/{i}/references"),
                1.0,
                cut,
            )
            .to_kind(Kind::Double);
            population_values(&eigenvalues, &target, &references, head_dim, max_k)
        })
        .collect();
    (0..max_k)
        .map(|j| {
            let pooled: Vec<f64> = per_draw.iter().map(|v| v.r2_pooled[j]).collect();
            let uniform: Vec<f64> = per_draw.iter().map(|v| v.r2_uniform[j]).collect();
            let share: Vec<f64> = per_draw.iter().map(|v| v.explained_share[j]).collect();
            let diff =
                |a: &[f64]| -> Vec<f64> { a.iter().zip(&share).map(|(x, s)| x - s).collect() };
            let (p, p_se, p_var) = mean_se(&pooled);
            let (u, u_se, u_var) = mean_se(&uniform);
            let (s, s_se, _) = mean_se(&share);
            let (pd, pd_se, _) = mean_se(&diff(&pooled));
            let (ud, ud_se, _) = mean_se(&diff(&uniform));
            MonteCarloPoint {
                k: j + 1,
                draws,
                r2_pooled: p,
                r2_pooled_se: p_se,
                r2_uniform: u,
                r2_uniform_se: u_se,
                rho_bar: s,
                rho_bar_se: s_se,
                r2_pooled_variance: p_var,
                r2_uniform_variance: u_var,
                pooled_minus_rho: (pd, pd_se),
                uniform_minus_rho: (ud, ud_se),
                worst_ky_fan_excess: share
                    .iter()
                    .map(|s| s - bounds[j])
                    .fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Mean, standard error of the mean, and sample variance (n − 1). SE and variance are NaN for n < 2.
pub fn mean_se(values: &[f64]) -> (f64, f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN, f64::NAN);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt(), variance)
}

/// Eigenvalues of a symmetric PSD matrix `[d, d]` (any float kind), descending, on the CPU in f64.
pub fn spectrum_of(covariance: &Tensor) -> Vec<f64> {
    let c = covariance.to_device(Device::Cpu).to_kind(Kind::Double);
    let symmetric = (&c + c.transpose(0, 1)) / 2.0;
    descending(&Vec::<f64>::try_from(symmetric.linalg_eigvalsh("L")).expect("eigenvalues"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round-off allowance for sums of a few hundred f64 terms of size ≤ 1.
    const ROUND_OFF: f64 = 1e-12;

    #[test]
    fn bound_of_a_hand_checkable_spectrum() {
        // λ = 4, 3, 2, 1, 0: tr = 10; top-1 = 0.4, top-2 = 0.7, top-4 = 1, m beyond the rank caps at 1.
        let l = [1.0, 4.0, 0.0, 3.0, 2.0];
        assert_eq!(numerical_rank(&l), 4);
        assert!((top_share_bound(&l, 1) - 0.4).abs() < ROUND_OFF);
        assert!((top_share_bound(&l, 2) - 0.7).abs() < ROUND_OFF);
        assert!((top_share_bound(&l, 4) - 1.0).abs() < ROUND_OFF);
        assert!((top_share_bound(&l, 9) - 1.0).abs() < ROUND_OFF);
        assert!((gaussian_floor(2, 4) - 0.5).abs() < ROUND_OFF);
        // Isotropic: B = m/d.
        let iso = Spectrum::Isotropic {
            dimension: 64,
            rank: 64,
        }
        .eigenvalues();
        assert!((top_share_bound(&iso, 8) - 0.125).abs() < ROUND_OFF);
        // A round-off negative eigenvalue does not count.
        assert_eq!(numerical_rank(&[1.0, 1e-20, -1e-17]), 1);
    }

    #[test]
    fn isotropic_sd_matches_the_corollary_b_table() {
        // OLMo-2-1B: d = 2048, d_h = 128, k = 1 → 6.7e-4.
        let sd = isotropic_pooled_sd(128, 2048, 128);
        assert!((sd - 6.7e-4).abs() < 0.05e-4, "{sd}");
        // OLMo-2-7B: 3.4e-4.
        assert!((isotropic_pooled_sd(128, 4096, 128) - 3.4e-4).abs() < 0.05e-4);
    }

    #[test]
    fn selection_slack_matches_section_6_8() {
        // OLMo-2-1B, k = 1: N = 15, adds 0.0032; k = 2: N = 105, adds 0.0042.
        assert!((selection_slack(choose(15, 1), 2048, 128) - 0.0032).abs() < 0.00005);
        assert!((selection_slack(choose(15, 2), 2048, 128) - 0.0042).abs() < 0.00005);
        assert_eq!(choose(15, 2), 105.0);
        assert_eq!(selection_slack(1.0, 2048, 128), 0.0);
        // The variance form with the isotropic proxy variance is the same number.
        let v = 1.0 / (2.0 * 2048.0 * 128.0 + 4.0);
        assert_eq!(
            selection_slack_for_variance(15.0, v),
            selection_slack(15.0, 2048, 128)
        );
    }

    #[test]
    fn ky_fan_bound_is_never_below_the_exact_share_on_random_instances() {
        // Random PSD Σ (random basis, random spectrum) and random projectors of every rank q:
        // tr(PΣ)/tr Σ ≤ B(Σ, q).
        for seed in 0..6u64 {
            let d = 24;
            let a = sample_normal(&[d, d], seed, "ky-fan/sigma", 1.0, f64::INFINITY)
                .to_kind(Kind::Double);
            let sigma = a.matmul(&a.transpose(0, 1)) * (seed as f64 + 1.0);
            let eigenvalues = spectrum_of(&sigma);
            let trace = f64::try_from(sigma.trace()).unwrap();
            for q in 1..=d {
                let w = sample_normal(&[d, q], seed, &format!("ky-fan/p{q}"), 1.0, f64::INFINITY)
                    .to_kind(Kind::Double);
                let (basis, _) = Tensor::linalg_qr(&w, "reduced");
                let exact =
                    f64::try_from(basis.transpose(0, 1).matmul(&sigma).matmul(&basis).trace())
                        .unwrap()
                        / trace;
                let bound = top_share_bound(&eigenvalues, q as usize);
                assert!(
                    exact <= bound + 1e-10,
                    "seed {seed} q {q}: {exact} > {bound}"
                );
            }
        }
    }

    #[test]
    fn population_values_equal_the_normal_equations_with_a_pseudo_inverse() {
        // Lemma 1: MSE = tr(C_yy − C_yz C_zz⁺ C_zy), computed directly with pinv in the original
        // coordinates (Σ = diag λ), against the QR/projector route.
        let (d, head_dim, max_k) = (40usize, 4usize, 3usize);
        let lambda = Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: d,
        }
        .eigenvalues();
        let target = sample_normal(
            &[d as i64, head_dim as i64],
            1,
            "lemma1/t",
            1.0,
            f64::INFINITY,
        )
        .to_kind(Kind::Double);
        let references = sample_normal(
            &[d as i64, (max_k * head_dim) as i64],
            1,
            "lemma1/r",
            1.0,
            f64::INFINITY,
        )
        .to_kind(Kind::Double);
        let values = population_values(&lambda, &target, &references, head_dim, max_k);
        let sigma = Tensor::from_slice(&lambda).diag(0);
        for k in 1..=max_k {
            let wr = references.narrow(1, 0, (k * head_dim) as i64);
            let czz = wr.transpose(0, 1).matmul(&sigma).matmul(&wr);
            let czy = wr.transpose(0, 1).matmul(&sigma).matmul(&target);
            let cyy = target.transpose(0, 1).matmul(&sigma).matmul(&target);
            let explained = czy
                .transpose(0, 1)
                .matmul(&czz.linalg_pinv(1e-12, true))
                .matmul(&czy);
            let pooled =
                f64::try_from(explained.trace()).unwrap() / f64::try_from(cyy.trace()).unwrap();
            let uniform = f64::try_from(
                (explained.diagonal(0, 0, 1) / cyy.diagonal(0, 0, 1)).mean(Kind::Double),
            )
            .unwrap();
            assert!((values.r2_pooled[k - 1] - pooled).abs() < 1e-10, "k {k}");
            assert!((values.r2_uniform[k - 1] - uniform).abs() < 1e-10, "k {k}");
            // tr(P_M Σ)/tr Σ with P_M = M (MᵀM)⁺ Mᵀ, M = Σ^{1/2} W_R.
            let m = sigma.sqrt().matmul(&wr);
            let projector = m
                .matmul(&m.transpose(0, 1).matmul(&m).linalg_pinv(1e-12, true))
                .matmul(&m.transpose(0, 1));
            let share = f64::try_from(projector.matmul(&sigma).trace()).unwrap()
                / f64::try_from(sigma.trace()).unwrap();
            assert!(
                (values.explained_share[k - 1] - share).abs() < 1e-10,
                "k {k}"
            );
        }
    }

    #[test]
    fn population_r2_equals_least_squares_on_sampled_data() {
        // One instance: x ~ N(0, diag λ), y = W_tᵀx, z = W_Rᵀx; OLS with intercept by libtorch's
        // lstsq on n rows. Adjusted R² (§6.6) removes the in-sample inflation; what is left is
        // sampling noise of order (1 − ρ²)·√(2/n)·few.
        let (d, head_dim, k, n) = (40i64, 4usize, 3usize, 40_000i64);
        let lambda = Spectrum::PowerLaw {
            dimension: d as usize,
            alpha: 1.0,
            rank: d as usize,
        }
        .eigenvalues();
        let target = sample_normal(&[d, head_dim as i64], 2, "lstsq/t", 1.0, f64::INFINITY)
            .to_kind(Kind::Double);
        let references = sample_normal(
            &[d, (k * head_dim) as i64],
            2,
            "lstsq/r",
            1.0,
            f64::INFINITY,
        )
        .to_kind(Kind::Double);
        let population = population_values(&lambda, &target, &references, head_dim, k);
        let x = sample_normal(&[n, d], 2, "lstsq/x", 1.0, f64::INFINITY).to_kind(Kind::Double)
            * Tensor::from_slice(&lambda).sqrt();
        let y = x.matmul(&target);
        let z = x.matmul(&references);
        let design = Tensor::cat(&[Tensor::ones([n, 1], (Kind::Double, Device::Cpu)), z], 1);
        let (solution, _, _, _) = design.linalg_lstsq(&y, None::<f64>, "gelsd");
        let residual = &y - design.matmul(&solution);
        let sse = f64::try_from(residual.square().sum(Kind::Double)).unwrap();
        let centred = &y - y.mean_dim(0, true, Kind::Double);
        let sst = f64::try_from(centred.square().sum(Kind::Double)).unwrap();
        let p = (k * head_dim) as f64;
        let adjusted = 1.0 - (sse / sst) * (n as f64 - 1.0) / (n as f64 - p - 1.0);
        let exact = population.r2_pooled[k - 1];
        assert!(
            (adjusted - exact).abs() < 0.01,
            "lstsq {adjusted} vs population {exact}"
        );
    }

    #[test]
    fn isotropic_monte_carlo_equals_the_closed_form() {
        // Theorem 3: E R² = m/d, Var R²_pool = Beta variance, ρ̄ = m/d exactly per draw.
        let (d, head_dim, max_k, draws) = (48usize, 4usize, 3usize, 1500usize);
        let lambda = Spectrum::Isotropic {
            dimension: d,
            rank: d,
        }
        .eigenvalues();
        let points = monte_carlo(
            &lambda,
            head_dim,
            max_k,
            WeightLaw::Gaussian,
            draws,
            11,
            "test/iso",
        );
        for p in &points {
            let exact = (p.k * head_dim) as f64 / d as f64;
            assert!((p.r2_pooled - exact).abs() < 4.0 * p.r2_pooled_se, "{p:?}");
            assert!(
                (p.r2_uniform - exact).abs() < 4.0 * p.r2_uniform_se,
                "{p:?}"
            );
            assert!((p.rho_bar - exact).abs() < 1e-12, "{p:?}");
            let beta = beta_variance(p.k * head_dim, d, head_dim);
            // SE of a sample variance of n near-normal values: var·√(2/(n−1)).
            let variance_se = beta * (2.0 / (draws as f64 - 1.0)).sqrt();
            assert!(
                (p.r2_pooled_variance - beta).abs() < 4.0 * variance_se,
                "{p:?} vs {beta}"
            );
        }
    }

    #[test]
    fn power_law_monte_carlo_lies_in_the_theorem_2_bracket() {
        let (d, head_dim, max_k) = (48usize, 4usize, 3usize);
        let lambda = Spectrum::PowerLaw {
            dimension: d,
            alpha: 1.0,
            rank: d,
        }
        .eigenvalues();
        let points = monte_carlo(
            &lambda,
            head_dim,
            max_k,
            WeightLaw::Gaussian,
            400,
            3,
            "test/power",
        );
        for p in &points {
            let m = p.k * head_dim;
            let bound = top_share_bound(&lambda, m);
            assert!(
                p.r2_pooled > gaussian_floor(m, d) + 4.0 * p.r2_pooled_se,
                "{p:?}"
            );
            assert!(p.rho_bar < bound, "{p:?} vs {bound}");
            assert!(p.pooled_minus_rho.0 < 4.0 * p.pooled_minus_rho.1, "{p:?}");
            assert!(p.worst_ky_fan_excess <= 1e-12, "{p:?}");
        }
    }
}

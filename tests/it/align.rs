//! Subspace alignment against independent references: principal angles from a plain SVD basis,
//! ranks from libtorch's matrix_rank, the random-subspace null, weight-only R² vs measured R².

use crate::common::cli;

use crate::common::tiny_config;
use ckpt_scan::analysis::alignment::{align_layer, head_blocks, null_spread, AlignmentOptions};
use ckpt_scan::analysis::predictability::{Candidates, PredictabilityOptions, PredictabilitySink};
use ckpt_scan::capture::HeadKind;
use ckpt_scan::capture::{CapturePoint, CaptureSink, LayerCapture};
use ckpt_scan::config::Architecture;
use ckpt_scan::data::token_set::Split;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::stats::principal_angles::weight_only_r2;
use ckpt_scan::stats::selection::Selection;
use tch::{Device, Kind, Tensor};

const EXACTNESS: f64 = 1e-6;

fn options() -> AlignmentOptions {
    AlignmentOptions {
        kinds: vec![HeadKind::K],
        fold_norm: false,
        partners: 2,
        null_samples: 8,
        seed: 0,
    }
}

/// Principal-angle cosines the textbook way: left singular vectors as bases, then an SVD.
fn reference_cosines(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let basis = |w: &Tensor| {
        let (u, _, _) = w.to_kind(Kind::Double).svd(true, true);
        u
    };
    let (_, s, _) = basis(a).transpose(0, 1).matmul(&basis(b)).svd(true, false);
    Vec::<f64>::try_from(&s.clamp(0.0, 1.0)).unwrap()
}

#[test]
fn angles_and_overlap_equal_an_independent_svd_and_rank() {
    let mut config = tiny_config(Architecture::Olmo2);
    config.hidden_size = 24; // 4 heads × 8 = 32 > 24: the heads' subspaces must overlap by ≥ 8
    config.num_attention_heads = 4;
    config.num_key_value_heads = 4;
    let source = InitSource::new(config.clone(), 3, InitScheme::Olmo, "init:tiny");
    let blocks = head_blocks(&source, 1, HeadKind::K, false).unwrap();
    let result = align_layer(
        "init:tiny",
        HeadKind::K,
        1,
        &blocks,
        2,
        &options(),
        (0.0, 0.0),
    );
    assert_eq!(result.pairs.len(), 6);
    for pair in &result.pairs {
        let cos = reference_cosines(&blocks[pair.head_a], &blocks[pair.head_b]);
        let mean_cos2 = cos.iter().map(|c| c * c).sum::<f64>() / cos.len() as f64;
        let angles: Vec<f64> = cos.iter().map(|c| c.acos().to_degrees()).collect();
        let grassmann = cos.iter().map(|c| c.acos().powi(2)).sum::<f64>().sqrt();
        assert!((pair.mean_cos2 - mean_cos2).abs() < EXACTNESS, "{pair:?}");
        assert!(
            (pair.grassmann_distance - grassmann).abs() < EXACTNESS,
            "{pair:?}"
        );
        assert!(
            (pair.max_angle_degrees - angles.iter().copied().fold(0.0, f64::max)).abs() < 1e-4,
            "{pair:?}"
        );
        // Weight-only R² by an explicit projector: W_aᵀ-least-squares of W_b.
        let (wa, wb) = (
            blocks[pair.head_a].to_kind(Kind::Double),
            blocks[pair.head_b].to_kind(Kind::Double),
        );
        let projector = wa.matmul(&wa.linalg_pinv(1e-12, false));
        let r2 = projector
            .matmul(&wb)
            .pow_tensor_scalar(2)
            .sum(Kind::Double)
            .double_value(&[])
            / wb.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]);
        assert!(
            (pair.weight_r2_a_to_b - r2).abs() < EXACTNESS,
            "{pair:?} vs {r2}"
        );
    }
    let rank = |w: &Tensor| {
        w.to_kind(Kind::Double)
            .linalg_matrix_rank(0.0, false)
            .int64_value(&[])
    };
    let rank_sum: i64 = blocks.iter().map(rank).sum();
    let joint = rank(&Tensor::cat(&blocks, 1));
    assert_eq!(
        (result.layer.rank_sum, result.layer.joint_rank),
        (rank_sum, joint)
    );
    assert_eq!(result.layer.overlap_dimension, 32 - 24);
}

#[test]
fn random_init_and_the_null_baseline_sit_at_head_dim_over_d_model() {
    let source = ckpt_scan::source::open_source("init:olmo2-1b?seed=1").unwrap();
    let blocks = head_blocks(source.as_ref(), 0, HeadKind::K, false).unwrap();
    let null = null_spread(2048, 128, 16, 0);
    let result = align_layer("init", HeadKind::K, 0, &blocks, 1, &options(), null);
    let analytic = 128.0 / 2048.0;
    for (what, value) in [
        ("init layer", result.layer.mean_pairwise_cos2),
        ("sampled null", null.0),
    ] {
        assert!(
            ((value - analytic) / analytic).abs() < 0.02,
            "{what}: {value} vs {analytic}"
        );
    }
    // 16 × 128 columns fill ℝ^2048 exactly: [W_1 … W_16] is a square Gaussian matrix, whose
    // σ_min/σ_max ≈ 1/(2n) sits at the f32 rank tolerance n·ε: a dimension or two may count as shared.
    assert!(result.layer.overlap_dimension <= 2, "{:?}", result.layer);
}

/// Synthetic isotropic input: heads y_h = W_hᵀx with x ~ N(0, I). The measured pooled held-out
/// R² of each (target, references) fit equals the weights' prediction up to sampling error.
#[test]
fn weight_only_r2_equals_measured_r2_for_isotropic_input() {
    let (d, heads, head_dim) = (64i64, 8usize, 8i64);
    tch::manual_seed(17);
    let blocks: Vec<Tensor> = (0..heads)
        .map(|_| Tensor::randn([d, head_dim], (Kind::Double, Device::Cpu)))
        .collect();
    // Heads 1 and 2 lean towards head 0's subspace (without sharing an exact direction, which would
    // make some reference sets rank-deficient), so R² ranges widely.
    let mixed = |i: usize| &blocks[0] * 0.8 + &blocks[i] * (0.6 * i as f64);
    let blocks: Vec<Tensor> = (0..heads)
        .map(|i| {
            if i == 1 || i == 2 {
                mixed(i)
            } else {
                blocks[i].shallow_clone()
            }
        })
        .collect();
    let w = Tensor::cat(&blocks, 1); // [d, heads·head_dim]
    let mut config = tiny_config(Architecture::Olmo2);
    config.num_attention_heads = heads as i64;
    config.num_key_value_heads = heads as i64;
    config.head_dim = head_dim;
    let splits: Vec<Split> = (0..40)
        .map(|i| if i < 30 { Split::Fit } else { Split::Heldout })
        .collect();
    let options = PredictabilityOptions {
        kinds: vec![HeadKind::K],
        max_refs: 3,
        selection: Selection::Topn,
        capture_point: CapturePoint::Rope,
        layers: None,
        candidates: Candidates::SameLayer,
        store_budget_bytes: u64::MAX,
    };
    let mut sink = PredictabilitySink::new(options, "synthetic", &config, splits);
    for i in 0..40 {
        let x = Tensor::randn([1000, d], (Kind::Double, Device::Cpu));
        let y = x
            .matmul(&w)
            .view([1, 1000, heads as i64, head_dim])
            .permute([0, 2, 1, 3])
            .to_kind(Kind::Float);
        sink.capture(&LayerCapture {
            layer: 0,
            batch_index: i,
            point: CapturePoint::Rope,
            queries: &y,
            keys: &y,
            values: &y,
            attention: None,
        })
        .unwrap();
    }
    sink.finish_layer(0).unwrap();
    let mut worst = 0.0f64;
    for row in &sink.rows {
        let refs: Vec<usize> = row
            .reference_heads
            .split(';')
            .map(|r| r.parse().unwrap())
            .collect();
        let w_refs = Tensor::cat(
            &refs
                .iter()
                .map(|&r| blocks[r].shallow_clone())
                .collect::<Vec<_>>(),
            1,
        );
        let predicted = weight_only_r2(&blocks[row.target_head], &w_refs);
        // n_fit = 30 000 rows, p ≤ 24: sampling error of a pooled R² here is ~0.01.
        let diff = (row.r2_pooled_heldout - predicted).abs();
        worst = worst.max(diff);
        assert!(diff < 0.02, "{row:?}: weight-only {predicted}");
    }
    assert!(
        sink.rows.iter().any(|r| r.r2_pooled_heldout > 0.4),
        "the shared subspaces must show"
    );
    eprintln!("worst |measured − weight-only| = {worst:.4}");
}

#[test]
fn align_runs_on_a_32b_shaped_gqa_init_and_compares_with_predictions() {
    let out = tempfile::tempdir().unwrap();
    // OLMo-2-32B's attention shape (hidden 5120, 40 query heads, 8 KV heads) at 4 layers instead of
    // 64, to keep the suite quick; the full model is in benches/README.md.
    let mut config = ckpt_scan::config::olmo2_preset("olmo2-32b").unwrap();
    config.num_hidden_layers = 4;
    let config_path = out.path().join("config.json");
    std::fs::write(&config_path, config.to_hf_json().to_string()).unwrap();
    let spec = format!("init:{}", config_path.display());
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "align",
        &spec,
        "--null-samples",
        "2",
        "--max-refs",
        "2",
        "--out",
        out.path().join("a").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // 8 KV heads → 28 pairs per layer.
    let pairs = csv::Reader::from_path(out.path().join("a/alignment_pairs.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(pairs, 4 * 28);
    assert!(stdout.contains("| K | 3 |"), "{stdout}");

    // With predict output on a tiny model: weight-only beside measured, with a Spearman ρ.
    let model = crate::common::tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let pred = out.path().join("pred");
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "4096",
        "--seq-len",
        "32",
        "--max-refs",
        "2",
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let al = out.path().join("al");
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "align",
        model.path().to_str().unwrap(),
        "--kinds",
        "k,v",
        "--max-refs",
        "2",
        "--predictions",
        pred.join("predictability.csv").to_str().unwrap(),
        "--out",
        al.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Spearman"), "{stdout}");
    let versus = csv::Reader::from_path(al.join("weight_vs_measured.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(versus, 2 * 2 * 4 * 2); // kinds × layers × heads × k
    let (ok, _, stderr) = cli(&[
        "align",
        model.path().to_str().unwrap(),
        "--predictions",
        "/nonexistent/predictability.csv",
    ]);
    assert!(
        !ok && stderr.contains("--predictions /nonexistent/predictability.csv"),
        "{stderr}"
    );
}

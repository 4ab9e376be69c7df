//! The compressed KV cache (only reference heads cached, targets rebuilt by linear maps) against
//! the plain cache: with no targets it is the plain cache bit for bit; with maps that rebuild a
//! head exactly (a head whose weights copy another's) it reproduces the baseline logits; fitted
//! maps on a real forward rebuild heads with the R² the planner reports.

use std::rc::Rc;

use crate::common::tiny_config;
use ckpt_scan::capture::HeadKind;
use ckpt_scan::config::Architecture;
use ckpt_scan::data::token_set::Split;
use ckpt_scan::infer::generate::{generate, GenerationOptions};
use ckpt_scan::infer::kv_calibration::{calibrate_on, plan, CalibrationRecord};
use ckpt_scan::infer::reference_heads::{CompressionOptions, CompressionPlan, KindPlan, KvMode};
use ckpt_scan::model::forward::HiddenBudget;
use ckpt_scan::model::head_map::{HeadMap, KeySpace};
use ckpt_scan::model::kv_cache::KvCache;
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::row_map::{read_all_heads, RowMap};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::WeightSource;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub(crate) const PROMPTS: [&[i64]; 2] = [&[5, 9, 13, 21, 40, 7, 7, 33, 3, 17], &[12, 3, 44]];

pub(crate) fn source(architecture: Architecture) -> InitSource {
    InitSource::new(tiny_config(architecture), 11, InitScheme::Hf, "init:tiny")
}

/// Every step's logits of a greedy 6-token generation from both prompts (one padded batch).
fn step_logits(model: &ResidentModel, mut cache: KvCache) -> (Vec<Tensor>, KvCache) {
    let options = GenerationOptions {
        record_logits: true,
        ..GenerationOptions::greedy(6)
    };
    let prompts: Vec<Vec<i64>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (outputs, _) =
        generate(model, &prompts, &options, &mut cache, &mut rng, None, None).unwrap();
    let logits = outputs.into_iter().flat_map(|o| o.step_logits).collect();
    (logits, cache)
}

fn options(fraction: f64, key_space: KeySpace) -> CompressionOptions {
    CompressionOptions {
        fraction,
        min_refs: 1,
        max_refs: 3,
        key_space,
    }
}

/// 12 random sequences of 24 tokens: 9 fit, 3 held out.
pub(crate) fn calibration_batches(vocab: i64) -> Vec<(Tensor, Split)> {
    tch::manual_seed(5);
    let tokens = Tensor::randint(vocab, [12, 24], (Kind::Int64, Device::Cpu));
    vec![
        (tokens.narrow(0, 0, 9), Split::Fit),
        (tokens.narrow(0, 9, 3), Split::Heldout),
    ]
}

pub(crate) fn record() -> CalibrationRecord {
    CalibrationRecord {
        text: "random".into(),
        tokens: 288,
        seq_len: 24,
        seed: 5,
        fit_sequences: 9,
        sequences: 12,
        token_set_sha256: String::new(),
    }
}

/// Maps fitted on the random calibration batches, planned for `mode` at `fraction`.
fn fitted_plan(
    source: &InitSource,
    mode: KvMode,
    fraction: f64,
    key_space: KeySpace,
) -> CompressionPlan {
    let calibration = calibrate_on(
        source,
        &calibration_batches(64),
        key_space,
        &LoadOptions::cpu_f32(),
        &HiddenBudget::default(),
        record(),
    )
    .unwrap();
    plan(
        &calibration,
        mode,
        source.config(),
        &options(fraction, key_space),
    )
    .unwrap()
}

#[test]
fn no_targets_is_the_plain_cache_bit_for_bit() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = source(architecture);
        let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        let compressed = fitted_plan(&source, KvMode::Kv, 0.0, KeySpace::PreRope);
        assert_eq!(compressed.dropped_fraction(), 0.0);
        let (plain, plain_cache) = step_logits(&model, KvCache::new(2));
        let (same, cache) = step_logits(&model, compressed.layout().cache());
        for (a, b) in plain.iter().zip(&same) {
            assert!(a.equal(b), "{architecture:?}: p = 0 must not change a bit");
        }
        assert_eq!(cache.bytes(), plain_cache.bytes());
        assert_eq!(cache.map_bytes(), 0);
    }
}

/// Makes KV head 1 of every layer a copy of head 0 (k_proj, v_proj and, for OLMo-2's full-width
/// QK-norm, the k_norm gains), so that "head 1 = head 0" is an exact linear map.
fn copy_head_zero_into_head_one(model: &mut ResidentModel) {
    let d = model.config.head_dim;
    let _no_grad = tch::no_grad_guard();
    for layer in &mut model.layers {
        let attention = &mut layer.self_attn;
        for weight in [&attention.k_proj, &attention.v_proj] {
            weight.narrow(0, d, d).copy_(&weight.narrow(0, 0, d));
        }
        if let Some(norm) = &attention.k_norm {
            norm.weight
                .narrow(0, d, d)
                .copy_(&norm.weight.narrow(0, 0, d));
        }
    }
}

/// Head 1 rebuilt as head 0 in every layer, for keys and values.
fn copy_plan(model: &ResidentModel, key_space: KeySpace) -> CompressionPlan {
    let (heads, d) = (
        model.config.num_key_value_heads as usize,
        model.config.head_dim,
    );
    let stored: Vec<usize> = (0..heads).filter(|&h| h != 1).collect();
    let kind_plan = |kind| {
        let maps = (0..model.config.num_hidden_layers)
            .map(|_| {
                let coefficients =
                    Tensor::zeros([stored.len() as i64 * d, d], (Kind::Float, Device::Cpu));
                coefficients
                    .narrow(0, 0, d)
                    .copy_(&Tensor::eye(d, (Kind::Float, Device::Cpu)));
                Some(Rc::new(HeadMap::new(
                    heads,
                    d as usize,
                    stored.clone(),
                    vec![1],
                    coefficients,
                    Tensor::zeros([d], (Kind::Float, Device::Cpu)),
                )))
            })
            .collect();
        KindPlan {
            kind,
            maps,
            rows: Vec::new(),
            heads_total: heads * model.config.num_hidden_layers as usize,
            targets_wanted: model.config.num_hidden_layers as usize,
        }
    };
    CompressionPlan {
        mode: KvMode::Kv,
        options: options(0.5, key_space),
        num_layers: model.config.num_hidden_layers,
        keys: Some(kind_plan(HeadKind::K)),
        values: Some(kind_plan(HeadKind::V)),
    }
}

#[test]
fn maps_that_copy_a_reference_exactly_reproduce_the_baseline_logits() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = source(architecture);
        let mut model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        copy_head_zero_into_head_one(&mut model);
        let (plain, plain_cache) = step_logits(&model, KvCache::new(2));
        for key_space in [KeySpace::PreRope, KeySpace::PostRope] {
            let compressed = copy_plan(&model, key_space);
            let (rebuilt, cache) = step_logits(&model, compressed.layout().cache());
            let worst = plain
                .iter()
                .zip(&rebuilt)
                .map(|(a, b)| f64::try_from((a - b).abs().max()).unwrap())
                .fold(0.0, f64::max);
            assert!(
                worst <= 1e-5,
                "{architecture:?} {key_space:?}: logits differ by {worst:e}"
            );
            // One head of every layer is not cached (positions add 8 bytes per row before RoPE).
            let heads = model.config.num_key_value_heads;
            let per_head = plain_cache.bytes() / heads;
            let positions = if key_space == KeySpace::PreRope {
                8 * cache.len() * PROMPTS.len() as i64 * 2
            } else {
                0
            };
            assert_eq!(cache.bytes(), per_head * (heads - 1) + positions);
            eprintln!("{architecture:?} {key_space:?}: max |Δ logit| {worst:e}");
        }
    }
}

/// On a real forward, a rebuilt head's error on the held-out calibration rows equals what the
/// planner reported: recomputed here from captured keys with `linalg_lstsq` on the fit rows.
#[test]
fn fitted_maps_score_as_an_independent_least_squares_fit() {
    use ckpt_scan::capture::recorder::Recorder;
    use ckpt_scan::capture::CapturePoint;
    use ckpt_scan::model::forward::{forward_streamed, OutputHead};
    let source = source(Architecture::Olmo2);
    let batches = calibration_batches(64);
    let compressed = fitted_plan(&source, KvMode::K, 0.5, KeySpace::PreRope);
    let keys = compressed.keys.as_ref().unwrap();
    assert_eq!(keys.targets(), 4, "half of 2 layers × 4 heads");
    assert!(compressed.values.is_none());
    let mut recorder = Recorder::new(&[CapturePoint::Normed], false);
    let tokens: Vec<Tensor> = batches.iter().map(|(t, _)| t.shallow_clone()).collect();
    forward_streamed(
        &source,
        &tokens,
        &mut recorder,
        &LoadOptions::cpu_f32(),
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )
    .unwrap();
    for row in &keys.rows {
        let (_, k, _) = recorder.get(row.layer, CapturePoint::Normed).unwrap();
        let k = k.to_kind(Kind::Double); // [12, heads, 24, 8]: sequences 0..9 fit, 9..12 held out
        let rows_of = |heads: &[i64], from: i64, count: i64| {
            let parts: Vec<Tensor> = heads
                .iter()
                .map(|&h| k.narrow(0, from, count).select(1, h).reshape([-1, 8]))
                .collect();
            Tensor::cat(&parts, 1)
        };
        let refs: Vec<i64> = row
            .references
            .split(' ')
            .map(|h| h.parse().unwrap())
            .collect();
        let with_ones = |x: Tensor| {
            let n = x.size()[0];
            Tensor::cat(&[x, Tensor::ones([n, 1], (Kind::Double, Device::Cpu))], 1)
        };
        let target = [row.target as i64];
        let (solution, _, _, _) = with_ones(rows_of(&refs, 0, 9)).linalg_lstsq(
            &rows_of(&target, 0, 9),
            None::<f64>,
            "gelsd",
        );
        let truth = rows_of(&target, 9, 3);
        let predicted = with_ones(rows_of(&refs, 9, 3)).matmul(&solution);
        let sse =
            (&truth - &predicted)
                .pow_tensor_scalar(2)
                .sum_dim_intlist(0, false, Kind::Double);
        let sst = (&truth - truth.mean_dim(0, true, Kind::Double))
            .pow_tensor_scalar(2)
            .sum_dim_intlist(0, false, Kind::Double);
        let r2 = f64::try_from((sse / sst).neg().mean(Kind::Double)).unwrap() + 1.0;
        assert!(
            (r2 - row.r2_heldout).abs() < 1e-6,
            "layer {} head {}: planner R² {} vs lstsq {r2}",
            row.layer,
            row.target,
            row.r2_heldout
        );
        // The assembled map rebuilds the same held-out vectors as the lstsq solution.
        let map = keys.maps[row.layer as usize].as_ref().unwrap();
        let rebuilt = read_all_heads(
            map.as_ref(),
            &map.encode(&k.narrow(0, 9, 3).to_kind(Kind::Float)),
        );
        let rebuilt_target = rebuilt
            .select(1, row.target as i64)
            .reshape([-1, 8])
            .to_kind(Kind::Double);
        let diff = f64::try_from((rebuilt_target - &predicted).abs().max()).unwrap();
        assert!(
            diff < 1e-4,
            "layer {} head {}: map vs lstsq {diff}",
            row.layer,
            row.target
        );
        assert!(!refs.contains(&(row.target as i64)) && (1..=3).contains(&refs.len()));
    }
}

#[test]
fn bad_compression_flags_give_one_line_errors() {
    for (flags, expected) in [
        (vec!["--kv-compress", "1.5"], "--kv-compress 1.5"),
        (
            vec!["--kv-compress", "0.5", "--kv-min-refs", "0"],
            "--kv-min-refs 0",
        ),
    ] {
        let mut args = vec!["validate", "init:olmo2-1b"];
        args.extend(flags);
        let (ok, _, stderr) = crate::common::cli(&args);
        assert!(!ok);
        assert!(stderr.contains(expected), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// Scoring with a compressed cache: packed rows with branch masks rebuild the same target heads
/// as separate sequences (positions of the stored keys follow each branch, not the packed column).
#[test]
fn shared_prefix_rows_score_as_separate_sequences_with_a_compressed_cache() {
    let source = source(Architecture::Olmo2);
    let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    for key_space in [KeySpace::PreRope, KeySpace::PostRope] {
        let compressed = fitted_plan(&source, KvMode::Kv, 0.5, key_space);
        let worst = crate::common::shared_vs_separate_logprobs(&model, Some(&compressed.layout()));
        eprintln!("{key_space:?}: shared prefix vs separate max |Δ logprob| {worst:e}");
        assert!(worst <= 1e-5, "{key_space:?}: {worst:e}");
    }
}

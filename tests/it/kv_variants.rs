//! The `--kv` cache variants (quantized, low-rank, evicting, reference heads and their
//! combinations) on a tiny model: each holds exactly the bytes its closed form says; codes of full
//! width and windows past the context reproduce the plain logits; int8 stays within a stated bound
//! of them, and lower widths drift further; eviction's decode (entries dropped) equals its prefill
//! (entries masked).

use crate::kv_compress::{calibration_batches, record, source, PROMPTS};
use ckpt_scan::config::Architecture;
use ckpt_scan::infer::generate::{generate, GenerationOptions};
use ckpt_scan::infer::kv_calibration::{calibrate_on, Calibration};
use ckpt_scan::infer::kv_spec::KvSpec;
use ckpt_scan::infer::kv_variant::{KvLayout, KvVariant};
use ckpt_scan::infer::reference_heads::CompressionOptions;
use ckpt_scan::model::forward::HiddenBudget;
use ckpt_scan::model::head_map::KeySpace;
use ckpt_scan::model::kv_cache::KvCache;
use ckpt_scan::model::resident::{ForwardState, ResidentModel};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::InitSource;
use ckpt_scan::source::WeightSource;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// int8 codes (groups of 4) move no logit by more than this fraction of the largest logit.
const INT8_RELATIVE_BOUND: f64 = 0.01;
/// Codes of full width (rank = all values) and windows past the context: rounding only.
const EXACT_CODE_TOLERANCE: f64 = 1e-4;

fn calibration(source: &InitSource) -> Calibration {
    calibrate_on(
        source,
        &calibration_batches(64),
        KeySpace::PreRope,
        &LoadOptions::cpu_f32(),
        &HiddenBudget::default(),
        record(),
    )
    .unwrap()
}

fn variant(spec: &str, source: &InitSource, calibration: &Calibration) -> KvVariant {
    let options = CompressionOptions {
        fraction: 0.0,
        min_refs: 1,
        max_refs: 3,
        key_space: KeySpace::PreRope,
    };
    KvVariant::build(
        &KvSpec::parse(spec).unwrap(),
        source.config(),
        Some(calibration),
        &options,
    )
    .unwrap()
}

/// Logits of each of `new_tokens` greedy steps from the first prompt alone, and the cache after.
fn decode(model: &ResidentModel, layout: &KvLayout, new_tokens: usize) -> (Vec<Tensor>, KvCache) {
    let mut cache = layout.cache();
    let options = GenerationOptions {
        record_logits: true,
        ..GenerationOptions::greedy(new_tokens)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (outputs, _) = generate(
        model,
        &[PROMPTS[0].to_vec()],
        &options,
        &mut cache,
        &mut rng,
        None,
        None,
    )
    .unwrap();
    let logits = outputs.into_iter().flat_map(|o| o.step_logits).collect();
    (logits, cache)
}

/// Largest |Δ| over the steps, and the largest |logit| of `plain`.
fn max_diff(plain: &[Tensor], other: &[Tensor]) -> (f64, f64) {
    assert_eq!(plain.len(), other.len());
    let mut worst: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for (a, b) in plain.iter().zip(other) {
        worst = worst.max(f64::try_from((a - b).abs().max()).unwrap());
        scale = scale.max(f64::try_from(a.abs().max()).unwrap());
    }
    (worst, scale)
}

#[test]
fn every_variant_holds_the_bytes_its_closed_form_says() {
    let source = source(Architecture::Olmo2);
    let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    let calibration = calibration(&source);
    // OLMo-2 tiny: 4 KV heads × 8 dims = 32 values per kind and layer.
    for spec in [
        "quant:int8:g4",
        "quant:int4:g8",
        "quant:int2:g8@k",
        "quant:int4:g16@v",
        "lowrank:12",
        "lowrank:8+int8:g8",
        "lowrank:8@v",
        "refs:0.25",
        "refs:0.5+int4:g8@k",
        "evict:2+5",
        "evict:0+3",
    ] {
        let variant = variant(spec, &source, &calibration);
        let plain_bytes = KvLayout::plain(2).bytes(1, source.config(), 4);
        for new_tokens in [1, 6, 23] {
            let (_, cache) = decode(&model, &variant.layout, new_tokens);
            let tokens = cache.len();
            let expected = variant.layout.bytes(tokens, source.config(), 4);
            assert_eq!(cache.bytes(), expected, "{spec} at {tokens} positions");
            assert_eq!(cache.map_bytes(), variant.layout.map_bytes(), "{spec}");
            // Nothing stores more than the plain cache, and every variant stores less
            // once its groups are complete (the residual of per-channel keys is plain).
            assert!(expected <= tokens * plain_bytes, "{spec}: {expected}");
            if tokens >= 16 {
                assert!(expected < tokens * plain_bytes, "{spec} saves nothing");
            }
        }
    }
}

#[test]
fn full_rank_and_a_window_past_the_context_reproduce_the_plain_logits() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = source(architecture);
        let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        let calibration = calibration(&source);
        let width = source.config().num_key_value_heads * source.config().head_dim;
        let (plain, _) = decode(&model, &KvLayout::plain(2), 12);
        for spec in [
            format!("lowrank:{width}"),
            "evict:0+64".into(),
            "evict:30+1".into(),
        ] {
            let (same, _) = decode(&model, &variant(&spec, &source, &calibration).layout, 12);
            let (diff, _) = max_diff(&plain, &same);
            assert!(
                diff < EXACT_CODE_TOLERANCE,
                "{architecture:?} {spec}: {diff:e}"
            );
        }
        // And the codes are really applied: half the rank or a short window change the logits.
        for spec in [format!("lowrank:{}", width / 2), "evict:1+3".into()] {
            let (other, _) = decode(&model, &variant(&spec, &source, &calibration).layout, 12);
            let (diff, _) = max_diff(&plain, &other);
            assert!(
                diff > 100.0 * EXACT_CODE_TOLERANCE,
                "{architecture:?} {spec}: {diff:e}"
            );
        }
    }
}

#[test]
fn int8_stays_within_its_bound_and_fewer_bits_drift_further() {
    for architecture in [Architecture::Olmo2, Architecture::Llama] {
        let source = source(architecture);
        let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
        let calibration = calibration(&source);
        let (plain, _) = decode(&model, &KvLayout::plain(2), 20);
        let drift = |spec: &str| {
            let (logits, _) = decode(&model, &variant(spec, &source, &calibration).layout, 20);
            max_diff(&plain, &logits)
        };
        let (int8, scale) = drift("quant:int8:g4");
        let (int4, _) = drift("quant:int4:g4");
        let (int2, _) = drift("quant:int2:g4");
        eprintln!("{architecture:?}: max |Δ logit| int8 {int8:e}, int4 {int4:e}, int2 {int2:e} (scale {scale:.3})");
        assert!(int8 > 0.0, "{architecture:?}: int8 changed nothing");
        assert!(
            int8 < INT8_RELATIVE_BOUND * scale,
            "{architecture:?}: int8 {int8:e}"
        );
        assert!(
            int8 < int4 && int4 < int2,
            "{architecture:?}: {int8:e} {int4:e} {int2:e}"
        );
    }
}

/// Decoding under eviction drops entries from the cache; one prefill of the same tokens keeps them
/// all and masks instead. Both must give every position the same logits.
#[test]
fn eviction_by_dropping_equals_eviction_by_masking() {
    let source = source(Architecture::Olmo2);
    let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    let calibration = calibration(&source);
    for spec in ["evict:2+4", "evict:0+1", "evict:3+7"] {
        let layout = variant(spec, &source, &calibration).layout;
        let (stepped, cache) = decode(&model, &layout, 15);
        // The first prompt and the 14 tokens fed back (the 15th is generated but never fed).
        let generated: Vec<i64> = stepped
            .iter()
            .take(14)
            .map(|l| l.argmax(-1, false).int64_value(&[]))
            .collect();
        let ids: Vec<i64> = PROMPTS[0].iter().copied().chain(generated).collect();
        assert_eq!(cache.len(), ids.len() as i64);
        let mut prefill = layout.cache();
        let logits = model
            .forward(
                &Tensor::from_slice(&ids).view([1, -1]),
                &mut ForwardState {
                    cache: Some(&mut prefill),
                    visibility: None,
                    edit: None,
                },
            )
            .unwrap();
        let first = PROMPTS[0].len() as i64 - 1;
        for (step, step_logits) in stepped.iter().enumerate() {
            let at = logits.get(0).get(first + step as i64).to_kind(Kind::Float);
            let diff = f64::try_from((step_logits.to_kind(Kind::Float) - at).abs().max()).unwrap();
            assert!(diff < EXACT_CODE_TOLERANCE, "{spec} step {step}: {diff:e}");
        }
    }
}

#[test]
fn specs_that_do_not_fit_the_model_name_the_flag() {
    let source = source(Architecture::Olmo2);
    let calibration = calibration(&source);
    let options = CompressionOptions {
        fraction: 0.0,
        min_refs: 1,
        max_refs: 3,
        key_space: KeySpace::PreRope,
    };
    for (spec, says) in [
        ("lowrank:33", "exceeds the 32 values"),
        ("quant:int4:g12", "group of 12 channels"),
        ("lowrank:6+int2", "do not pack 4 codes"),
    ] {
        let err = KvVariant::build(
            &KvSpec::parse(spec).unwrap(),
            source.config(),
            Some(&calibration),
            &options,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with(&format!("--kv {spec}: ")) && err.contains(says),
            "{err}"
        );
    }
    for (flags, says) in [
        (vec!["--kv", "quant:int3"], "--kv quant:int3: codes int3"),
        (vec!["--kv", "lowrank:0"], "--kv lowrank:0: the rank"),
        (
            vec!["--kv", "evict:"],
            "--kv evict:: expected evict:SINKS+WINDOW",
        ),
    ] {
        let mut args = vec!["validate", "init:olmo2-1b", "--tasks", "arc_easy"];
        args.extend(flags);
        let (ok, _, stderr) = crate::common::cli(&args);
        assert!(!ok);
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// `validate --kv` end to end on a few SmolLM2 items: every variant is a mode of its own, paired
/// against the baseline, and the Pareto files and section are written.
#[test]
fn validate_with_kv_variants_writes_the_pareto_table_and_figures() {
    let Some((ok, stdout, stderr, out)) =
        crate::common::validate_smollm2(&["--kv", "quant:int8@k,evict:4+16"])
    else {
        return;
    };
    let out_dir = out.path().join("v");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("## KV cache variants at equal items"),
        "{stdout}"
    );
    let mut modes = Vec::new();
    for row in csv::Reader::from_path(out_dir.join("pareto.csv"))
        .unwrap()
        .deserialize::<std::collections::HashMap<String, String>>()
    {
        let row = row.unwrap();
        let fraction: f64 = row["kv_fraction_of_plain"].parse().unwrap();
        match row["mode"].as_str() {
            "baseline" => assert_eq!(fraction, 1.0),
            // Keys only: at most half the cache saved, and something saved.
            "quant:int8@k" => assert!(fraction > 0.5 && fraction < 1.0, "{fraction}"),
            "evict:4+16" => assert!(fraction <= 1.0, "{fraction}"),
            other => panic!("unexpected mode {other}"),
        }
        modes.push(row["mode"].clone());
    }
    assert_eq!(modes.len(), 6, "3 modes × acc, acc_per_char: {modes:?}");
    assert!(out_dir.join("pareto-arc_easy.png").is_file());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["kv_variants"][0]["spec"], "quant:int8@k");
    assert_eq!(manifest["kv_variants"][1]["eviction"]["window"], 16);
}

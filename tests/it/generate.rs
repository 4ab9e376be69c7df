//! KV-cached generation against the model's own full recompute: every decode step's logits equal
//! the logits of the whole sequence run again without a cache, left padding changes nothing, and
//! greedy decoding equals `ResidentModel::greedy` (which recomputes the prefix each step). On tiny
//! random OLMo-2, Llama, Qwen2 and Qwen3, on the golden Qwen fixtures (perturbed biases and norm
//! gains), and on SmolLM2-135M-Instruct (GGUF).

use crate::common::{data_file, tiny_config};
use ckpt_scan::config::Architecture;
use ckpt_scan::data::paths::smollm2_gguf;
use ckpt_scan::data::tokenizer::encode;
use ckpt_scan::infer::generate::{generate, GenerationOptions, Sampling};
use ckpt_scan::model::kv_cache::KvCache;
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::open_source;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// Cached and recomputed logits differ only by f32 summation order (a decode step multiplies
/// `[1, hidden]` rows where the recompute multiplies `[seq, hidden]` blocks), so the bound is
/// relative to the logits' scale: SmolLM2's logits reach ~37, where one f32 ulp is 3.8e-6; its
/// measured worst step is 4.1e-5 absolute, 1.6e-6 relative. Prefill steps match bit for bit.
const CACHED_LOGIT_TOLERANCE: f64 = 1e-5;

fn tiny(architecture: Architecture) -> ResidentModel {
    // The windowed families get a 4-token window, shorter than every prompt + continuation below.
    let config = match architecture {
        Architecture::Mistral | Architecture::Olmo3 | Architecture::Gemma3 => {
            crate::common::tiny_windowed_config(architecture)
        }
        _ => tiny_config(architecture),
    };
    let source = InitSource::new(config, 11, InitScheme::Hf, "init:tiny");
    ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap()
}

/// Generates from `prompts` as one left-padded batch; checks every step's logits against a full
/// recompute of that prompt alone; returns the continuations and the worst |diff| relative to
/// max(1, max |logit|) of the step.
fn check_cached_against_recompute(
    model: &ResidentModel,
    prompts: &[Vec<i64>],
    new_tokens: usize,
    sampling: Sampling,
) -> (Vec<Vec<i64>>, f64) {
    check_cached_within(model, prompts, new_tokens, sampling, CACHED_LOGIT_TOLERANCE)
}

/// [`check_cached_against_recompute`] at a stated tolerance.
fn check_cached_within(
    model: &ResidentModel,
    prompts: &[Vec<i64>],
    new_tokens: usize,
    sampling: Sampling,
    tolerance: f64,
) -> (Vec<Vec<i64>>, f64) {
    let options = GenerationOptions {
        sampling,
        record_logits: true,
        ..GenerationOptions::greedy(new_tokens)
    };
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (outputs, stats) =
        generate(model, prompts, &options, &mut cache, &mut rng, None, None).unwrap();
    let width = prompts.iter().map(Vec::len).max().unwrap() as i64;
    assert_eq!(cache.len(), width + new_tokens as i64 - 1);
    assert!(stats.kv_bytes > 0);
    let mut worst: f64 = 0.0;
    for (prompt, output) in prompts.iter().zip(&outputs) {
        assert_eq!(output.tokens.len(), new_tokens);
        let mut all = prompt.clone();
        all.extend(&output.tokens);
        let full = model
            .logits(&Tensor::from_slice(&all).unsqueeze(0))
            .unwrap();
        for (i, step) in output.step_logits.iter().enumerate() {
            let expected = full.get(0).get((prompt.len() + i - 1) as i64);
            let scale = f64::try_from(expected.abs().max()).unwrap().max(1.0);
            let diff = f64::try_from((step - &expected).abs().max()).unwrap() / scale;
            worst = worst.max(diff);
        }
    }
    assert!(
        worst <= tolerance,
        "cached vs recomputed logits: max relative |diff| {worst:e} > {tolerance:e}"
    );
    (outputs.into_iter().map(|o| o.tokens).collect(), worst)
}

#[test]
fn tiny_models_cached_decode_equals_recompute_with_left_padding() {
    for architecture in Architecture::ALL {
        let model = tiny(architecture);
        let prompts = vec![
            vec![5, 9, 13, 21, 40, 7, 7, 33],
            vec![12, 3],
            vec![60, 61, 62, 63, 0],
        ];
        let (greedy, worst) =
            check_cached_against_recompute(&model, &prompts, 12, Sampling::Greedy);
        for (prompt, tokens) in prompts.iter().zip(&greedy) {
            assert_eq!(
                tokens,
                &model.greedy(prompt, 12, None).unwrap(),
                "{architecture:?}"
            );
        }
        let (sampled, _) =
            check_cached_against_recompute(&model, &prompts, 12, Sampling::Temperature(1.0));
        assert_ne!(
            sampled, greedy,
            "a temperature-1 draw over a near-uniform model"
        );
        eprintln!("{architecture:?}: cached vs recomputed max |diff| {worst:e}");
    }
}

#[test]
fn act_runs_in_prefill_and_decode_and_changes_the_logits() {
    use ckpt_scan::edit::act::{Act, SinkThreshold};
    let config = ckpt_scan::config::ModelConfig {
        num_hidden_layers: 6,
        ..tiny_config(Architecture::Llama)
    };
    let source = InitSource::new(config.clone(), 11, InitScheme::Hf, "init:tiny6");
    let model = ResidentModel::load(&source, &LoadOptions::cpu_f32()).unwrap();
    let heads = (2..=4).map(|layer| (layer, vec![0, 1, 2, 3])).collect();
    // τ below the uniform 1/N makes most keys candidates, so the edit is sure to act.
    let act = Act::new(heads, 0.4, SinkThreshold::Absolute(0.02), &config).unwrap();
    let prompts = vec![vec![5, 9, 13, 21, 40, 7, 7, 33], vec![12, 3, 4]];
    let run = |edit: Option<&dyn ckpt_scan::model::attention_edit::AttentionEdit>| {
        let options = GenerationOptions {
            record_logits: true,
            ..GenerationOptions::greedy(4)
        };
        let mut cache = KvCache::new(6);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        generate(&model, &prompts, &options, &mut cache, &mut rng, edit, None)
            .unwrap()
            .0
    };
    let (plain, edited) = (run(None), run(Some(&act)));
    for (a, b) in plain.iter().zip(&edited) {
        for (step, (x, y)) in a.step_logits.iter().zip(&b.step_logits).enumerate() {
            assert!(y.isfinite().all().int64_value(&[]) == 1);
            let diff = f64::try_from((x - y).abs().max()).unwrap();
            assert!(diff > 0.0, "step {step}: ACT changed nothing");
        }
    }
}

#[test]
fn stop_token_ends_one_sequence_and_not_the_others() {
    let model = tiny(Architecture::Llama);
    let prompts = vec![vec![5, 9, 13], vec![12, 3, 44, 45]];
    let free = model.greedy(&prompts[0], 6, None).unwrap();
    let options = GenerationOptions {
        stop_token_ids: vec![free[2]],
        ..GenerationOptions::greedy(6)
    };
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (outputs, _) =
        generate(&model, &prompts, &options, &mut cache, &mut rng, None, None).unwrap();
    let first_stop = free.iter().position(|&t| t == free[2]).unwrap();
    assert_eq!(outputs[0].tokens, free[..=first_stop]);
    let other = model.greedy(&prompts[1], 6, Some(free[2])).unwrap();
    assert_eq!(outputs[1].tokens, other);
}

/// At init the Qwen2 and GPT-NeoX biases are zero; the golden fixtures carry non-zero ones (and
/// Qwen3's per-head norm gains, GPT-NeoX's LayerNorm biases and partial rotary), so the decode
/// path is checked with all of them in play (and Gemma-3 with its perturbed sandwich norms).
#[test]
fn golden_biased_models_cached_decode_equals_recompute() {
    let Some(dir) = crate::common::golden_dir() else {
        return;
    };
    for folder in ["qwen2", "qwen3", "gpt-neox", "gemma3"] {
        let source = open_source(dir.join(folder).to_str().unwrap()).unwrap();
        let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
        let prompts = vec![vec![5, 9, 13, 21, 40, 7, 7, 33], vec![12, 3]];
        let (greedy, worst) =
            check_cached_against_recompute(&model, &prompts, 10, Sampling::Greedy);
        for (prompt, tokens) in prompts.iter().zip(&greedy) {
            assert_eq!(tokens, &model.greedy(prompt, 10, None).unwrap(), "{folder}");
        }
        eprintln!("{folder}: cached vs recomputed max relative |diff| {worst:e}");
    }
}

/// Cached against recomputed logits of the peaked fixtures (scores ×64): rounding differences
/// grow with the scores. Measured: llama-peaked, which has no window, 2.0e-4 relative; the
/// windowed ones 5.3e-6 to 1.9e-4. Ignoring the window in decode moves them by ~1.
const PEAKED_CACHED_TOLERANCE: f64 = 5e-4;

/// Sliding windows in the cached path: a left-padded batch whose prompts (20 and 5 tokens) and
/// continuations (24 tokens) run past the fixtures' 16-token window, so both the prefill and the
/// decode steps cut keys off; each step equals a full recompute, which the golden tests hold to
/// transformers. `llama-peaked` and `gpt-neox-peaked` (no window) are the controls for the
/// tolerance.
#[test]
fn windowed_models_cached_decode_equals_recompute() {
    let Some(dir) = crate::common::golden_dir() else {
        return;
    };
    for folder in [
        "mistral-window",
        "olmo3-window",
        "qwen2-window",
        "gemma3-window",
        "llama-peaked",
        "gpt-neox-peaked",
    ] {
        let source = open_source(dir.join(folder).to_str().unwrap()).unwrap();
        let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
        let window = model.config.sliding_window.as_ref().map_or(16, |w| w.size);
        let long: Vec<i64> = (0..20).map(|i| (i * 7 + 3) % 160).collect();
        assert!(long.len() as i64 > window);
        let prompts = vec![long, vec![12, 3, 44, 90, 1]];
        let (greedy, worst) = check_cached_within(
            &model,
            &prompts,
            24,
            Sampling::Greedy,
            PEAKED_CACHED_TOLERANCE,
        );
        for (prompt, tokens) in prompts.iter().zip(&greedy) {
            assert_eq!(tokens, &model.greedy(prompt, 24, None).unwrap(), "{folder}");
        }
        eprintln!("{folder}: cached vs recomputed max relative |diff| {worst:e}");
    }
}

#[test]
fn smollm2_cached_decode_equals_recompute_and_greedy() {
    let Some(path) = data_file(smollm2_gguf()) else {
        return;
    };
    let source = open_source(&format!("gguf:{}", path.display())).unwrap();
    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    let prompts: Vec<Vec<i64>> = [
        "The capital of France is",
        "Water boils at a temperature of",
    ]
    .iter()
    .map(|p| encode(&tokenizer, p).unwrap())
    .collect();
    let (greedy, worst) = check_cached_against_recompute(&model, &prompts, 8, Sampling::Greedy);
    eprintln!("SmolLM2: cached vs recomputed max relative |diff| {worst:e}");
    for (prompt, tokens) in prompts.iter().zip(&greedy) {
        assert_eq!(tokens, &model.greedy(prompt, 8, None).unwrap());
    }
}

//! Decode speed and KV memory, plain cache vs the compressed one (reference heads only):
//! `cargo bench --bench kv_decode -- SOURCE [--fraction P] [--mode k|v|kv] [--min-refs N]
//! [--prompt-tokens N] [--new-tokens N] [--batch N] [--repeats N] [--post-rope]`.
//!
//! The maps are calibrated once on 8192 tokens of `mix` text; then plain and compressed greedy
//! generations alternate `repeats` times from the same seeded-random prompts, so load drifts hit
//! both alike; medians and their ratio are printed with the cache bytes.

use std::time::Instant;

use ckpt_scan::data::corpora::TextSource;
use ckpt_scan::data::token_set::TokenSetOptions;
use ckpt_scan::data::tokenizer::tokenizer_for;
use ckpt_scan::infer::generate::{generate, GenerationOptions};
use ckpt_scan::infer::kv_calibration::{calibrate, plan};
use ckpt_scan::infer::reference_heads::{CompressionOptions, KvMode};
use ckpt_scan::model::forward::HiddenBudget;
use ckpt_scan::model::head_map::KeySpace;
use ckpt_scan::model::kv_cache::KvCache;
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::open_source;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: measure only when asked.
    if !std::env::args().any(|a| a == "--bench") {
        println!("kv_decode: skipped (run it with `cargo bench --bench kv_decode -- SOURCE`)");
        return Ok(());
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let spec = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: kv_decode SOURCE [flags]"))?;
    let fraction: f64 = flag(&args, "--fraction", 0.5);
    let mode = match flag(&args, "--mode", "kv".to_string()).as_str() {
        "k" => KvMode::K,
        "v" => KvMode::V,
        _ => KvMode::Kv,
    };
    let min_refs: usize = flag(&args, "--min-refs", 2);
    let prompt_tokens: usize = flag(&args, "--prompt-tokens", 256);
    let new_tokens: usize = flag(&args, "--new-tokens", 64);
    let batch: usize = flag(&args, "--batch", 1);
    let repeats: usize = flag(&args, "--repeats", 5);
    let threads: i32 = flag(&args, "--threads", 1);
    let key_space = if args.iter().any(|a| a == "--post-rope") {
        KeySpace::PostRope
    } else {
        KeySpace::PreRope
    };
    tch::set_num_threads(threads);
    let load = LoadOptions::cpu_f32();
    let source = open_source(spec)?;
    let (tokenizer, _) = tokenizer_for(source.as_ref(), None)?;
    let model = ResidentModel::load(source.as_ref(), &load)?;
    let options = CompressionOptions {
        fraction,
        min_refs,
        max_refs: 5,
        key_space,
    };
    let started = Instant::now();
    let calibration = calibrate(
        source.as_ref(),
        &tokenizer,
        &TextSource::Mix,
        &TokenSetOptions {
            tokens: 8192,
            seq_len: 256,
            fit_fraction: 0.75,
            seed: 0,
            separator: model.config.eos_token_id,
        },
        key_space,
        &load,
        &HiddenBudget::default(),
    )?;
    let compressed = plan(&calibration, mode, &model.config, &options)?;
    println!(
        "calibrated in {:.1} s; {} of K and V head slots dropped",
        started.elapsed().as_secs_f64(),
        compressed.dropped_fraction()
    );
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let prompts: Vec<Vec<i64>> = (0..batch)
        .map(|_| {
            (0..prompt_tokens)
                .map(|_| (rng.next_u64() % model.config.vocab_size as u64) as i64)
                .collect()
        })
        .collect();
    let generation = GenerationOptions {
        pad_token_id: model.config.pad_token_id.unwrap_or(0),
        ..GenerationOptions::greedy(new_tokens)
    };
    let decode = |cache: &mut KvCache| -> anyhow::Result<(f64, f64, i64, i64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (_, stats) = generate(&model, &prompts, &generation, cache, &mut rng, None, None)?;
        Ok((
            stats.decode_tokens as f64 / stats.decode_seconds,
            stats.prefill_tokens as f64 / stats.prefill_seconds,
            cache.bytes(),
            cache.map_bytes(),
        ))
    };
    let (mut plain_decode, mut plain_prefill, mut small_decode, mut small_prefill) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut plain_bytes, mut small_bytes, mut map_bytes) = (0, 0, 0);
    for _ in 0..repeats {
        let (d, p, bytes, _) = decode(&mut KvCache::new(model.config.num_hidden_layers))?;
        plain_decode.push(d);
        plain_prefill.push(p);
        plain_bytes = bytes;
        let (d, p, bytes, maps) = decode(&mut compressed.cache())?;
        small_decode.push(d);
        small_prefill.push(p);
        small_bytes = bytes;
        map_bytes = maps;
    }
    let (pd, sd) = (median(&mut plain_decode), median(&mut small_decode));
    let (pp, sp) = (median(&mut plain_prefill), median(&mut small_prefill));
    println!(
        "source {spec}; mode {}; p {fraction}; min refs {min_refs}; keys {key_space:?}; batch {batch} × {prompt_tokens} prompt + {new_tokens} new; {repeats} alternating repeats; {threads} thread(s)",
        mode.name()
    );
    println!("decode tokens/s median: plain {pd:.1}, compressed {sd:.1} (compressed takes {:.2}× the plain time per token)", pd / sd);
    println!("prefill tokens/s median: plain {pp:.0}, compressed {sp:.0}");
    println!(
        "KV bytes at the end: plain {plain_bytes}, compressed {small_bytes} + maps {map_bytes} = {:.3} of plain ({:.3} without maps)",
        (small_bytes + map_bytes) as f64 / plain_bytes as f64,
        small_bytes as f64 / plain_bytes as f64
    );
    Ok(())
}

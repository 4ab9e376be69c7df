//! Decode speed and KV memory, the plain cache against KV-cache variants (`validate --kv` specs):
//! `cargo bench --bench kv_decode -- SOURCE [--kv SPEC,SPEC…] [--min-refs N] [--prompt-tokens N]
//! [--new-tokens N] [--batch N] [--repeats N] [--threads N] [--post-rope]`.
//!
//! Fitted codes (reference heads, low rank) are calibrated once on 8192 tokens of `mix` text;
//! then every repeat runs the plain cache and each variant in turn, greedy from the same
//! seeded-random prompts, so load drifts hit all alike; medians, their ratios and the cache bytes
//! are printed.

use std::time::Instant;

use ckpt_scan::data::corpora::TextSource;
use ckpt_scan::data::token_set::TokenSetOptions;
use ckpt_scan::data::tokenizer::tokenizer_for;
use ckpt_scan::infer::generate::{generate, GenerationOptions};
use ckpt_scan::infer::kv_calibration::calibrate;
use ckpt_scan::infer::kv_spec::KvSpec;
use ckpt_scan::infer::kv_variant::{KvLayout, KvVariant};
use ckpt_scan::infer::reference_heads::CompressionOptions;
use ckpt_scan::model::forward::HiddenBudget;
use ckpt_scan::model::head_map::KeySpace;
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
    let specs: Vec<String> = flag(&args, "--kv", "refs:0.5".to_string())
        .split(',')
        .map(str::to_string)
        .collect();
    let specs = KvSpec::parse_list(&specs)?;
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
        fraction: 0.0,
        min_refs,
        max_refs: 5,
        key_space,
    };
    let started = Instant::now();
    let calibration = match specs.iter().any(KvSpec::needs_calibration) {
        true => Some(calibrate(
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
        )?),
        false => None,
    };
    let variants = specs
        .iter()
        .map(|spec| KvVariant::build(spec, &model.config, calibration.as_ref(), &options))
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("built in {:.1} s", started.elapsed().as_secs_f64());
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
    // (decode tokens/s, prefill tokens/s, cache bytes, map bytes) of one generation.
    let run = |layout: &KvLayout| -> anyhow::Result<(f64, f64, i64, i64)> {
        let mut cache = layout.cache();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (_, stats) = generate(
            &model,
            &prompts,
            &generation,
            &mut cache,
            &mut rng,
            None,
            None,
        )?;
        Ok((
            stats.decode_tokens as f64 / stats.decode_seconds,
            stats.prefill_tokens as f64 / stats.prefill_seconds,
            cache.bytes(),
            cache.map_bytes(),
        ))
    };
    let plain = KvLayout::plain(model.config.num_hidden_layers);
    let layouts: Vec<(&str, &KvLayout)> = std::iter::once(("plain", &plain))
        .chain(variants.iter().map(|v| (v.name(), &v.layout)))
        .collect();
    let mut decode = vec![Vec::new(); layouts.len()];
    let mut prefill = vec![Vec::new(); layouts.len()];
    let mut bytes = vec![(0, 0); layouts.len()];
    for _ in 0..repeats {
        for (i, (_, layout)) in layouts.iter().enumerate() {
            let (d, p, held, maps) = run(layout)?;
            decode[i].push(d);
            prefill[i].push(p);
            bytes[i] = (held, maps);
        }
    }
    println!(
        "source {spec}; min refs {min_refs}; keys {key_space:?}; batch {batch} × {prompt_tokens} prompt + {new_tokens} new; {repeats} rounds (plain, then each variant); {threads} thread(s)"
    );
    println!("| cache | decode tokens/s (median) | time per token ÷ plain | prefill tokens/s | KV bytes at the end | ÷ plain | maps |");
    println!("|---|---|---|---|---|---|---|");
    let plain_decode = median(&mut decode[0].clone());
    let plain_bytes = bytes[0].0 as f64;
    for (i, (name, _)) in layouts.iter().enumerate() {
        let d = median(&mut decode[i]);
        println!(
            "| {name} | {d:.1} | {:.2}× | {:.0} | {} | {:.3} | {} |",
            plain_decode / d,
            median(&mut prefill[i]),
            bytes[i].0,
            bytes[i].0 as f64 / plain_bytes,
            bytes[i].1
        );
    }
    Ok(())
}

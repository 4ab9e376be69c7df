//! A mode's speed and KV memory (speed.csv): scoring throughput over the tasks, then a short
//! KV-cached generation for prefill/decode speed and the cache's bytes against the baseline's.

use anyhow::Result;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::data::tasks::McItem;
use crate::data::tokenizer::encode_prompt;
use crate::infer::generate::{generate, GenerationOptions};
use crate::infer::mode::Mode;
use crate::model::kv_cache::KvCache;
use crate::model::resident::ResidentModel;

/// Prompts the decode-speed measurement generates from (the first items of the first task).
const DECODE_PROMPTS: usize = 4;

#[derive(Serialize)]
pub struct SpeedRow {
    pub mode: String,
    /// Scoring forwards (prefill only) over every task's requests.
    pub scoring_tokens: i64,
    pub scoring_tokens_per_second: f64,
    /// KV-cached generation from a few prompts: prefill then greedy decode.
    pub prefill_tokens: i64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens: i64,
    pub decode_tokens_per_second: f64,
    pub kv_bytes_per_token: f64,
    /// Map parameters held by a compressed cache (shared by all sequences).
    pub kv_map_bytes: i64,
    /// Cached positions (all sequences) of the decode run, where the bytes below were measured.
    pub kv_positions: i64,
    /// (cache + maps) ÷ the baseline cache at those positions.
    pub kv_bytes_vs_baseline: f64,
    /// 1 / (1 − dropped fraction of K and V heads): the paper's accounting, maps not counted.
    pub claimed_compression: f64,
    /// Baseline bytes ÷ (cache + maps) bytes at the measured positions.
    pub measured_compression: f64,
}

impl SpeedRow {
    /// The row before any decode run: scoring throughput only, cache figures not measured.
    pub fn scoring(mode: &Mode, scoring_tokens: i64, scoring_seconds: f64) -> Self {
        SpeedRow {
            mode: mode.name().into(),
            scoring_tokens,
            scoring_tokens_per_second: scoring_tokens as f64 / scoring_seconds.max(1e-9),
            prefill_tokens: 0,
            prefill_tokens_per_second: f64::NAN,
            decode_tokens: 0,
            decode_tokens_per_second: f64::NAN,
            kv_bytes_per_token: f64::NAN,
            kv_map_bytes: 0,
            kv_positions: 0,
            kv_bytes_vs_baseline: f64::NAN,
            claimed_compression: mode.kv.map_or(1.0, |l| l.claimed_compression),
            measured_compression: f64::NAN,
        }
    }

    /// Compares this row's cache with the baseline's (`None`: this is the baseline).
    pub fn compare_with(&mut self, baseline: Option<&SpeedRow>) {
        let baseline = baseline.map_or(self.kv_bytes_per_token, |b| b.kv_bytes_per_token);
        let held = self.kv_bytes_per_token * self.kv_positions as f64 + self.kv_map_bytes as f64;
        let plain = baseline * self.kv_positions as f64;
        self.kv_bytes_vs_baseline = held / plain;
        self.measured_compression = plain / held;
    }
}

/// The gold-choice prompts of the first items, which every mode's decode run generates from.
pub fn decode_prompts(tokenizer: &Tokenizer, items: &[McItem]) -> Result<Vec<Vec<i64>>> {
    items
        .iter()
        .take(DECODE_PROMPTS)
        .map(|item| encode_prompt(tokenizer, &item.choices[item.gold].context))
        .collect()
}

/// Greedy KV-cached generation of `decode_tokens` from `prompts`, for decode speed and KV size.
pub fn measure_decode(
    model: &ResidentModel,
    prompts: &[Vec<i64>],
    decode_tokens: usize,
    seed: u64,
    mode: &Mode,
    speed: &mut SpeedRow,
) -> Result<()> {
    if prompts.is_empty() {
        return Ok(());
    }
    let mut cache = match mode.kv {
        Some(layout) => layout.cache(),
        None => KvCache::new(model.config.num_hidden_layers),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let options = GenerationOptions {
        pad_token_id: model.config.pad_token_id.unwrap_or(0),
        ..GenerationOptions::greedy(decode_tokens)
    };
    let (_, stats) = generate(
        model, prompts, &options, &mut cache, &mut rng, mode.edit, None,
    )?;
    speed.prefill_tokens = stats.prefill_tokens;
    speed.prefill_tokens_per_second = stats.prefill_tokens as f64 / stats.prefill_seconds.max(1e-9);
    speed.decode_tokens = stats.decode_tokens;
    speed.decode_tokens_per_second = stats.decode_tokens as f64 / stats.decode_seconds.max(1e-9);
    speed.kv_bytes_per_token = stats.kv_bytes as f64 / stats.kv_positions.max(1) as f64;
    speed.kv_positions = stats.kv_positions;
    speed.kv_map_bytes = cache.map_bytes();
    Ok(())
}

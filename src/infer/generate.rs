//! Text generation with a KV cache: one prefill of the left-padded prompts, then one decode step
//! per new token for the whole batch. Greedy or seeded sampling; stop tokens and stop texts.

use std::time::Instant;

use anyhow::{bail, Result};
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::model::attention_edit::AttentionEdit;
use crate::model::kv_cache::KvCache;
use crate::model::mask::Visibility;
use crate::model::resident::{ForwardState, ResidentModel};

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties: the lowest id, as `argmax`).
    Greedy,
    /// A draw from `softmax(logits / temperature)` with the caller's seeded RNG.
    Temperature(f64),
}

#[derive(Clone, Debug)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// A sequence ends after producing one of these (it is kept in the output).
    pub stop_token_ids: Vec<i64>,
    /// A sequence ends once its decoded text contains one of these (the text is cut before it).
    pub stop_texts: Vec<String>,
    /// Fills the left padding of shorter prompts (never attended to).
    pub pad_token_id: i64,
    /// Keep every step's logits (for tests against a full recompute).
    pub record_logits: bool,
}

impl GenerationOptions {
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationOptions {
            max_new_tokens,
            sampling: Sampling::Greedy,
            stop_token_ids: Vec::new(),
            stop_texts: Vec::new(),
            pad_token_id: 0,
            record_logits: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    StopText,
    Length,
}

/// One prompt's continuation.
pub struct Generation {
    pub tokens: Vec<i64>,
    /// The decoded continuation, cut before a stop text (only when a decoder was given).
    pub text: Option<String>,
    pub stop_reason: StopReason,
    /// f32 `[vocab]` logits that chose each token (when `record_logits`).
    pub step_logits: Vec<Tensor>,
}

/// Timings and sizes of one `generate` call.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerationStats {
    pub prefill_tokens: i64,
    pub prefill_seconds: f64,
    pub decode_tokens: i64,
    pub decode_seconds: f64,
    /// Cache bytes at the end, over all sequences and positions (padding included).
    pub kv_bytes: i64,
    pub kv_positions: i64,
}

/// Turns token ids into text, for stop texts.
pub type Decoder<'a> = &'a dyn Fn(&[i64]) -> Result<String>;

/// Generates a continuation of each prompt. `cache` must be empty; it holds the batch afterwards.
pub fn generate(
    model: &ResidentModel,
    prompts: &[Vec<i64>],
    options: &GenerationOptions,
    cache: &mut KvCache,
    rng: &mut ChaCha8Rng,
    edit: Option<&dyn AttentionEdit>,
    decoder: Option<Decoder>,
) -> Result<(Vec<Generation>, GenerationStats)> {
    if !cache.is_empty() {
        bail!("generate needs an empty KV cache");
    }
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        bail!("generate needs at least one prompt and no empty prompt");
    }
    if !options.stop_texts.is_empty() && decoder.is_none() {
        bail!("stop texts need a decoder");
    }
    let device = model.options().device;
    let batch = prompts.len() as i64;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut valid = Vec::with_capacity(prompts.len() * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(options.pad_token_id, pad).chain(prompt.iter().copied()));
        valid
            .extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, prompt.len())));
    }
    let mut key_valid = Tensor::from_slice(&valid)
        .view([batch, width as i64])
        .to_device(device);
    let mut input = Tensor::from_slice(&ids).view([batch, width as i64]);

    let mut outputs: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: Vec::new(),
            text: None,
            stop_reason: StopReason::Length,
            step_logits: Vec::new(),
        })
        .collect();
    let mut done = vec![false; prompts.len()];
    let mut stats = GenerationStats {
        prefill_tokens: prompts.iter().map(|p| p.len() as i64).sum(),
        ..GenerationStats::default()
    };
    for step in 0..options.max_new_tokens {
        let started = Instant::now();
        let queries = input.size()[1];
        let visibility = Visibility::causal(&key_valid, queries);
        let hidden = model.hidden_states(
            &input,
            &mut ForwardState {
                cache: Some(cache),
                visibility: Some(&visibility),
                edit,
            },
        )?;
        // The head on the last position only: a prefill's full `[batch, prompt, vocab]` logits
        // would be gigabytes for few-shot prompts.
        let last = model
            .head(&hidden.select(1, queries - 1))
            .to_device(tch::Device::Cpu);
        let mut next = Vec::with_capacity(prompts.len());
        for (row, output) in outputs.iter_mut().enumerate() {
            if done[row] {
                next.push(options.pad_token_id);
                continue;
            }
            let row_logits = last.get(row as i64);
            let token = choose(&row_logits, options.sampling, rng)?;
            if options.record_logits {
                output.step_logits.push(row_logits);
            }
            output.tokens.push(token);
            next.push(token);
            if options.stop_token_ids.contains(&token) {
                output.stop_reason = StopReason::StopToken;
                done[row] = true;
            } else if let Some(decoder) = decoder.filter(|_| !options.stop_texts.is_empty()) {
                let text = decoder(&output.tokens)?;
                if let Some(at) = options
                    .stop_texts
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    output.text = Some(text[..at].to_string());
                    output.stop_reason = StopReason::StopText;
                    done[row] = true;
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if step == 0 {
            stats.prefill_seconds = seconds;
        } else {
            stats.decode_seconds += seconds;
            stats.decode_tokens += batch;
        }
        if done.iter().all(|&d| d) || step + 1 == options.max_new_tokens {
            break;
        }
        input = Tensor::from_slice(&next).view([batch, 1]);
        key_valid = Tensor::cat(
            &[
                key_valid,
                Tensor::ones([batch, 1], (tch::Kind::Bool, device)),
            ],
            1,
        );
    }
    if let Some(decoder) = decoder {
        for output in outputs.iter_mut().filter(|o| o.text.is_none()) {
            output.text = Some(decoder(&output.tokens)?);
        }
    }
    stats.kv_bytes = cache.bytes();
    stats.kv_positions = cache.len() * batch;
    Ok((outputs, stats))
}

/// The next token from one row of f32 logits `[vocab]` (on the CPU).
pub fn choose(logits: &Tensor, sampling: Sampling, rng: &mut ChaCha8Rng) -> Result<i64> {
    match sampling {
        Sampling::Greedy => Ok(i64::try_from(logits.argmax(-1, false))?),
        Sampling::Temperature(temperature) => {
            if temperature.is_nan() || temperature <= 0.0 {
                bail!("sampling temperature must be positive, got {temperature}");
            }
            // Softmax and the inverse CDF in f64, so a seed gives the same draw on any device.
            let probabilities = Vec::<f64>::try_from(
                (logits.to_kind(Kind::Double) / temperature).softmax(-1, Kind::Double),
            )?;
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            Ok(inverse_cdf(&probabilities, u) as i64)
        }
    }
}

/// The first index whose cumulative probability exceeds `u` (the last index if rounding leaves
/// the total below `u`).
fn inverse_cdf(probabilities: &[f64], u: f64) -> usize {
    let mut total = 0.0;
    for (i, p) in probabilities.iter().enumerate() {
        total += p;
        if u < total {
            return i;
        }
    }
    probabilities.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn inverse_cdf_picks_the_interval_holding_u() {
        let p = [0.1, 0.0, 0.6, 0.3];
        assert_eq!(inverse_cdf(&p, 0.0), 0);
        assert_eq!(inverse_cdf(&p, 0.09), 0);
        assert_eq!(inverse_cdf(&p, 0.1), 2);
        assert_eq!(inverse_cdf(&p, 0.69), 2);
        assert_eq!(inverse_cdf(&p, 0.71), 3);
        assert_eq!(inverse_cdf(&p, 1.0), 3);
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax_and_repeat_with_the_seed() {
        let logits = Tensor::from_slice(&[0.0f32, (3.0f32).ln(), f32::NEG_INFINITY]);
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..4000)
                .map(|_| choose(&logits, Sampling::Temperature(1.0), &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        let first = draw(7);
        assert_eq!(first, draw(7));
        let ones = first.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        // P(token 1) = 0.75; 4000 draws have standard error 0.007.
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        assert!(!first.contains(&2));
    }
}

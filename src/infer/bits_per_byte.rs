//! Bits per byte of held-out text: the negative log-likelihood of a text's tokens in bits, divided
//! by the text's UTF-8 bytes — a measure of prediction that does not depend on the tokenizer.
//!
//! Each document is tokenised on its own and preceded by a separator token (`<|endoftext|>` where
//! the tokenizer has one), and the documents are joined into one stream, so every text token has
//! something to be predicted from. The stream is read in windows of `window` tokens starting every
//! `stride` tokens (`1 ≤ stride < window`): window k covers positions `[k·stride, k·stride + window)`
//! and scores only the positions after the previous window's end. So every position but the first
//! is scored exactly once, and once past the first window with at least `window − stride` tokens
//! of context; a window's first `window − stride` tokens are context only (the first token of a
//! window never needs a prediction there — the previous window scored it). Separators are context
//! only: their predictions are not counted and they have no bytes.

use std::f64::consts::LN_2;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::data::token_set::seeded_shuffle;
use crate::data::tokenizer::encode;
use crate::infer::harness::{target_logprobs, ScoringRequest};
use crate::infer::kv_variant::KvLayout;
use crate::model::attention_edit::AttentionEdit;
use crate::model::resident::ResidentModel;

/// The separator the documents are joined with, when the tokenizer has it.
pub const DOCUMENT_SEPARATOR: &str = "<|endoftext|>";

#[derive(Clone, Copy, Debug)]
pub struct BpbOptions {
    pub window: usize,
    pub stride: usize,
    /// Padded tokens per forward batch.
    pub batch_tokens: usize,
}

/// One document's tokens (without separator) and the UTF-8 bytes of its text.
#[derive(Clone, Debug, PartialEq)]
pub struct TextDocument {
    pub ids: Vec<i64>,
    pub bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BitsPerByte {
    pub documents: usize,
    pub bytes: u64,
    /// Text tokens scored (every token of every document).
    pub scored_tokens: u64,
    pub windows: usize,
    /// Σ −log₂ p(token | context) over the scored tokens.
    pub bits: f64,
    pub bits_per_byte: f64,
    /// Tokens run through the model (windows overlap, so more than the stream).
    pub forward_tokens: i64,
    pub seconds: f64,
    /// Bits of each document's scored tokens, in document order (for paired intervals).
    #[serde(skip)]
    pub document_bits: Vec<f64>,
    /// Tokens of every scored window, as a KV cache holds them.
    #[serde(skip)]
    pub window_lengths: Vec<i64>,
}

/// A window of the stream: positions `[start, end)`, of which `[first_target, end)` are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub first_target: usize,
}

/// The windows over a stream of `len` tokens (see the module note); none when `len < 2`.
pub fn windows(len: usize, window: usize, stride: usize) -> Result<Vec<Window>> {
    if stride == 0 || stride >= window {
        bail!("bits per byte needs 1 ≤ stride < window, got stride {stride} and window {window}");
    }
    let mut out = Vec::new();
    // Position 0 has nothing before it.
    let mut scored_to = 1;
    let mut start = 0;
    while scored_to < len {
        let end = (start + window).min(len);
        out.push(Window {
            start,
            end,
            first_target: scored_to,
        });
        scored_to = end;
        start += stride;
    }
    Ok(out)
}

/// The separator token: [`DOCUMENT_SEPARATOR`] if the tokenizer has it, else the model's BOS,
/// else its EOS.
pub fn separator_token(tokenizer: &Tokenizer, config: &ModelConfig) -> Result<i64> {
    tokenizer
        .token_to_id(DOCUMENT_SEPARATOR)
        .map(i64::from)
        .or(config.bos_token_id)
        .or(config.eos_token_id)
        .ok_or_else(|| {
            anyhow!("bits per byte: the tokenizer has no {DOCUMENT_SEPARATOR} and the model config names no BOS or EOS token to separate documents")
        })
}

/// A seed-stable selection of `texts`: shuffled by `seed`, then tokenised in that order until
/// `max_tokens` text tokens are reached (whole documents; the last may overshoot). Empty
/// documents are skipped.
pub fn select_documents(
    texts: Vec<String>,
    tokenizer: &Tokenizer,
    max_tokens: usize,
    seed: u64,
) -> Result<Vec<TextDocument>> {
    let mut texts = texts;
    seeded_shuffle(&mut texts, seed, b"bits-per-byte");
    let mut documents = Vec::new();
    let mut tokens = 0;
    for text in texts {
        if tokens >= max_tokens {
            break;
        }
        let ids = encode(tokenizer, &text)?;
        if ids.is_empty() {
            continue;
        }
        tokens += ids.len();
        documents.push(TextDocument {
            ids,
            bytes: text.len(),
        });
    }
    Ok(documents)
}

/// Bits per byte of `documents` joined by `separator` (see the module note).
pub fn bits_per_byte(
    model: &ResidentModel,
    documents: &[TextDocument],
    separator: i64,
    options: &BpbOptions,
    edit: Option<&dyn AttentionEdit>,
    kv: Option<&KvLayout>,
) -> Result<BitsPerByte> {
    let started = Instant::now();
    let max_positions = model.config.max_position_embeddings.max(1) as usize;
    if options.window > max_positions {
        bail!(
            "--bpb-window {} exceeds the model's {max_positions} positions",
            options.window
        );
    }
    let vocab = model.config.vocab_size;
    if let Some(&id) = documents
        .iter()
        .flat_map(|d| &d.ids)
        .chain(std::iter::once(&separator))
        .find(|&&id| id < 0 || id >= vocab)
    {
        bail!("bits per byte: token id {id} is outside the model's vocabulary of {vocab}\nhint: pass the checkpoint's own tokenizer with --tokenizer");
    }
    let mut stream = Vec::new();
    // The document of each text position (`None`: a separator).
    let mut document_of = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        stream.push(separator);
        document_of.push(None);
        stream.extend(&document.ids);
        document_of.extend(std::iter::repeat_n(Some(index), document.ids.len()));
    }
    let windows = windows(stream.len(), options.window, options.stride)?;
    let requests: Vec<ScoringRequest> = windows
        .iter()
        .map(|w| ScoringRequest {
            ids: stream[w.start..w.end].to_vec(),
            first_target: w.first_target - w.start,
        })
        .collect();
    let (logprobs, stats) = target_logprobs(model, &requests, options.batch_tokens, edit, kv)?;
    let mut document_nats = vec![0.0; documents.len()];
    let mut scored_tokens = 0;
    for (window, values) in windows.iter().zip(&logprobs) {
        for (position, logprob) in (window.first_target..window.end).zip(values) {
            if let Some(document) = document_of[position] {
                document_nats[document] -= logprob;
                scored_tokens += 1;
            }
        }
    }
    let bytes: u64 = documents.iter().map(|d| d.bytes as u64).sum();
    let bits = document_nats.iter().sum::<f64>() / LN_2;
    Ok(BitsPerByte {
        documents: documents.len(),
        bytes,
        scored_tokens,
        windows: windows.len(),
        bits,
        bits_per_byte: if bytes == 0 {
            f64::NAN
        } else {
            bits / bytes as f64
        },
        forward_tokens: stats.tokens,
        seconds: started.elapsed().as_secs_f64(),
        document_bits: document_nats.iter().map(|n| n / LN_2).collect(),
        window_lengths: stats.sequence_lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_position_after_the_first_is_scored_once_with_enough_context() {
        for (len, window, stride) in [
            (1, 4, 2),
            (2, 4, 2),
            (4, 4, 2),
            (10, 4, 2),
            (11, 4, 3),
            (9, 8, 1),
            (100, 16, 15),
        ] {
            let windows = windows(len, window, stride).unwrap();
            let mut scored = vec![0; len];
            for w in &windows {
                assert!(
                    w.end - w.start <= window
                        && w.start < w.first_target
                        && w.first_target <= w.end
                );
                for (position, count) in scored
                    .iter_mut()
                    .enumerate()
                    .take(w.end)
                    .skip(w.first_target)
                {
                    *count += 1;
                    // Context: the tokens before `position` inside the window.
                    assert!(
                        position - w.start >= (window - stride).min(position),
                        "{len} {window} {stride}: {w:?}"
                    );
                }
            }
            let expected: Vec<usize> = (0..len).map(|p| usize::from(p > 0)).collect();
            assert_eq!(
                scored, expected,
                "len {len}, window {window}, stride {stride}"
            );
        }
        assert_eq!(
            windows(10, 4, 2).unwrap()[..2],
            [
                Window {
                    start: 0,
                    end: 4,
                    first_target: 1
                },
                Window {
                    start: 2,
                    end: 6,
                    first_target: 4
                }
            ]
        );
    }

    #[test]
    fn a_stride_not_below_the_window_is_refused() {
        assert!(windows(10, 4, 4).is_err());
        assert!(windows(10, 4, 0).is_err());
    }
}

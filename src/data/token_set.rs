//! The token set an analysis runs on: documents shuffled by seed, tokenized, packed into
//! equal-length sequences, and split by sequence into fit and held-out parts.

use std::path::Path;

use crate::data::corpora::{load_documents, TextSource};
use crate::data::tokenizer::tokenizer_for;
use crate::source::WeightSource;
use anyhow::{bail, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tch::Tensor;
use tokenizers::Tokenizer;

use crate::data::tokenizer::encode;

/// Which part of the token set a sequence belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Fit,
    Heldout,
}

/// Packed sequences and their split. The first `fit_sequences` sequences are the fit split, the
/// rest held out: contiguous, so only one document can straddle the boundary.
#[derive(Clone, Debug, Serialize)]
pub struct TokenSet {
    #[serde(skip)]
    pub sequences: Vec<Vec<i64>>,
    pub seq_len: usize,
    pub fit_sequences: usize,
    pub documents_used: usize,
    /// sha256 of the sequence length and every token id: equal hashes, equal inputs.
    pub hash: String,
}

/// The file name of a saved token set in an output folder.
pub const TOKEN_SET_FILE: &str = "tokens.safetensors";

impl TokenSet {
    /// The token ids as a safetensors file: `input_ids` `[sequences, seq_len]` i64, with
    /// `fit_sequences` and `hash` in the metadata, so another tool can run on exactly these
    /// tokens (benches/peer) and a reader can check them against the manifest's hash.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<u8> = self
            .sequences
            .iter()
            .flatten()
            .flat_map(|id| id.to_le_bytes())
            .collect();
        let shape = vec![self.sequences.len(), self.seq_len];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape, &bytes)?;
        let metadata = std::collections::HashMap::from([
            ("fit_sequences".to_string(), self.fit_sequences.to_string()),
            ("hash".to_string(), self.hash.clone()),
        ]);
        Ok(safetensors::serialize(
            [("input_ids", view)],
            Some(metadata),
        )?)
    }
}

/// Options for building a token set.
#[derive(Clone, Debug, Serialize)]
pub struct TokenSetOptions {
    pub tokens: usize,
    pub seq_len: usize,
    /// Fraction of sequences in the fit split.
    pub fit_fraction: f64,
    pub seed: u64,
    /// Token placed between documents (the model's EOS), if any.
    pub separator: Option<i64>,
}

impl TokenSet {
    /// The `--split` fraction must leave both parts non-empty in principle.
    fn check_fit_fraction(options: &TokenSetOptions) -> Result<()> {
        if !(options.fit_fraction > 0.0 && options.fit_fraction < 1.0) {
            bail!(
                "--split {} must lie strictly between 0 and 1",
                options.fit_fraction
            );
        }
        Ok(())
    }

    pub fn build(
        documents: &[String],
        tokenizer: &Tokenizer,
        options: &TokenSetOptions,
    ) -> Result<Self> {
        Self::check_fit_fraction(options)?;
        let n_sequences = options.tokens / options.seq_len.max(1);
        if options.seq_len == 0 || n_sequences == 0 {
            bail!(
                "--tokens {} is less than one sequence of --seq-len {}",
                options.tokens,
                options.seq_len
            );
        }
        let needed = n_sequences * options.seq_len;
        let mut order: Vec<usize> = (0..documents.len()).collect();
        shuffle(&mut order, options.seed);
        let mut stream: Vec<i64> = Vec::with_capacity(needed + options.seq_len);
        let mut documents_used = 0;
        for &i in &order {
            if stream.len() >= needed {
                break;
            }
            if let (Some(sep), false) = (options.separator, stream.is_empty()) {
                stream.push(sep);
            }
            stream.extend(encode(tokenizer, &documents[i])?);
            documents_used += 1;
        }
        if stream.len() < needed {
            bail!(
                "the text holds {} tokens, fewer than --tokens {} ({} sequences of {}); lower --tokens or use more text",
                stream.len(),
                needed,
                n_sequences,
                options.seq_len
            );
        }
        Self::from_stream(&stream, n_sequences, documents_used, options)
    }

    /// Token ids drawn uniformly from `0..vocab_size`, seeded: the input with no structure at all,
    /// under which a random-init model's layer-0 activations are as isotropic as its weights allow.
    pub fn uniform_random(vocab_size: i64, options: &TokenSetOptions) -> Result<Self> {
        Self::check_fit_fraction(options)?;
        let n_sequences = options.tokens / options.seq_len.max(1);
        if options.seq_len == 0 || n_sequences < 2 {
            bail!(
                "--tokens {} gives fewer than two sequences of --seq-len {}",
                options.tokens,
                options.seq_len
            );
        }
        let mut rng = keyed_rng(options.seed, b"randomids");
        let stream: Vec<i64> = (0..n_sequences * options.seq_len)
            .map(|_| (rng.next_u64() % vocab_size as u64) as i64)
            .collect();
        Self::from_stream(&stream, n_sequences, 0, options)
    }

    fn from_stream(
        stream: &[i64],
        n_sequences: usize,
        documents_used: usize,
        options: &TokenSetOptions,
    ) -> Result<Self> {
        let needed = n_sequences * options.seq_len;
        let sequences: Vec<Vec<i64>> = stream[..needed]
            .chunks(options.seq_len)
            .map(<[i64]>::to_vec)
            .collect();
        let fit_sequences = ((n_sequences as f64 * options.fit_fraction).round() as usize)
            .clamp(1, n_sequences.saturating_sub(1).max(1));
        if fit_sequences == n_sequences {
            bail!("{n_sequences} sequence(s) cannot be split into fit and held-out parts; raise --tokens or lower --seq-len");
        }
        let mut hasher = Sha256::new();
        hasher.update((options.seq_len as u64).to_le_bytes());
        for id in &stream[..needed] {
            hasher.update(id.to_le_bytes());
        }
        let hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(TokenSet {
            sequences,
            seq_len: options.seq_len,
            fit_sequences,
            documents_used,
            hash,
        })
    }

    pub fn split_of(&self, sequence: usize) -> Split {
        if sequence < self.fit_sequences {
            Split::Fit
        } else {
            Split::Heldout
        }
    }

    /// Split-pure batches of at most `tokens_per_batch` tokens: `([batch, seq_len] int64, split)`.
    pub fn batches(&self, tokens_per_batch: usize) -> Vec<(Tensor, Split)> {
        let per_batch = (tokens_per_batch / self.seq_len).max(1);
        let mut out = Vec::new();
        for (range, split) in [
            (0..self.fit_sequences, Split::Fit),
            (self.fit_sequences..self.sequences.len(), Split::Heldout),
        ] {
            let seqs = &self.sequences[range];
            for chunk in seqs.chunks(per_batch) {
                let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
                out.push((
                    Tensor::from_slice(&flat).view([chunk.len() as i64, self.seq_len as i64]),
                    split,
                ));
            }
        }
        out
    }
}

fn shuffle(items: &mut [usize], seed: u64) {
    seeded_shuffle(items, seed, b"tokenset");
}

/// Fisher–Yates with a ChaCha8 stream keyed by (seed, purpose label): the same seed gives the
/// same order on every machine.
pub fn seeded_shuffle<T>(items: &mut [T], seed: u64, label: &[u8]) {
    let mut rng = keyed_rng(seed, label);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// A ChaCha8 stream for one purpose (`label`) derived from the master seed.
fn keyed_rng(seed: u64, label: &[u8]) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let n = label.len().min(24);
    key[8..8 + n].copy_from_slice(&label[..n]);
    ChaCha8Rng::from_seed(key)
}
/// The token set `text` gives for `source` (uniform ids for `random`, else its tokenizer or
/// `tokenizer`), and the tokenizer's name for the manifest.
pub fn token_set_for(
    source: &dyn WeightSource,
    text: &TextSource,
    options: &TokenSetOptions,
    tokenizer: Option<&Path>,
) -> Result<(TokenSet, String)> {
    if *text == TextSource::Random {
        return Ok((
            TokenSet::uniform_random(source.config().vocab_size, options)?,
            "none (random ids)".to_string(),
        ));
    }
    let (tokenizer, tokenizer_name) = tokenizer_for(source, tokenizer)?;
    let documents = load_documents(text)?;
    Ok((
        TokenSet::build(&documents, &tokenizer, options)?,
        tokenizer_name,
    ))
}

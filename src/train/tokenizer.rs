//! The series' tokenizer: a byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer with its regex,
//! no prefix space, ByteLevel decoder) trained with the `tokenizers` crate on the training split of
//! the corpus, saved as a tokenizer.json that both `data::tokenizer` and HF transformers load.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Document separator, as OLMo's `<|endoftext|>` (the trainer gives specials the first ids).
pub const EOS_TOKEN: &str = "<|endoftext|>";
pub const PAD_TOKEN: &str = "<|pad|>";
pub const EOS_ID: i64 = 0;
pub const PAD_ID: i64 = 1;

/// Trains a BPE of at most `vocab_size` tokens on `documents`; merges need a pair seen twice.
pub fn train_bpe(documents: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(EOS_TOKEN, true),
            AddedToken::from(PAD_TOKEN, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)));
    tokenizer
        .train(&mut trainer, documents.iter())
        .map_err(|e| anyhow!("training the BPE tokenizer: {e}"))?;
    for (token, id) in [(EOS_TOKEN, EOS_ID), (PAD_TOKEN, PAD_ID)] {
        if tokenizer.token_to_id(token).map(i64::from) != Some(id) {
            bail!(
                "the trained tokenizer put {token} at {:?}, expected {id}",
                tokenizer.token_to_id(token)
            );
        }
    }
    Ok(tokenizer)
}

pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    let json = tokenizer
        .to_string(true)
        .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    crate::output::atomic::write_atomic(path, json.as_bytes())
}

/// `documents` as one token stream, each followed by `<|endoftext|>`.
pub fn encode_stream(tokenizer: &Tokenizer, documents: &[String]) -> Result<Vec<u32>> {
    let encodings = tokenizer
        .encode_batch(
            documents.iter().map(String::as_str).collect::<Vec<_>>(),
            false,
        )
        .map_err(|e| anyhow!("tokenizing the corpus: {e}"))?;
    let mut stream = Vec::new();
    for encoding in encodings {
        stream.extend_from_slice(encoding.get_ids());
        stream.push(EOS_ID as u32);
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_is_deterministic() {
        let docs: Vec<String> = (0..50)
            .map(|i| {
                format!(
                    "The whale number {i} swam past the ship, and the ship swam past the whale."
                )
            })
            .collect();
        let a = train_bpe(&docs, 400).unwrap();
        let b = train_bpe(&docs, 400).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        let text = "the whale swam, Ünïcode too";
        let ids = a.encode(text, false).unwrap();
        assert_eq!(a.decode(ids.get_ids(), false).unwrap(), text);
        assert!(a.get_vocab_size(true) <= 400);
        let stream = encode_stream(&a, &docs[..2]).unwrap();
        assert_eq!(stream.iter().filter(|&&t| t == EOS_ID as u32).count(), 2);
    }
}

//! Tokenizers from tokenizer.json (the `tokenizers` crate, offline) or embedded in a source.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

use crate::config::Architecture;
use crate::data::paths::{dolma2_tokenizer, fetch_hint, gpt_neox_tokenizer};
use crate::source::WeightSource;

/// Loads a packaged or source-provided tokenizer file; a missing one points at the data fetch.
pub fn load_tokenizer_file(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(anyhow!(
            "{}: not found\n{}",
            path.display(),
            fetch_hint(path)
        ));
    }
    read_tokenizer(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The largest tokenizer.json read (large vocabularies are ~20 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// A regular file parsed as tokenizer.json (a FIFO would block the tokenizers crate's read).
fn read_tokenizer(path: &Path) -> std::result::Result<Tokenizer, String> {
    let text = crate::input_file::read_text_capped(path, MAX_TOKENIZER_BYTES)
        .map_err(|e| e.to_string())?;
    // Malformed JSON is reported here rather than handed to the tokenizers crate, whose
    // deserialisers panic on some broken inputs (found by tests/fuzz_parsers.rs); a panic on
    // well-formed but odd JSON is caught below for the same reason.
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("cannot load tokenizer: invalid JSON: {e}"))?;
    std::panic::catch_unwind(|| text.parse::<Tokenizer>())
        .map_err(|_| {
            "cannot load tokenizer: the tokenizers crate panicked on this file".to_string()
        })?
        .map_err(|e| format!("cannot load tokenizer: {e}"))
}

/// The tokenizer for a source: an explicit file, else the source's own, else the family's
/// packaged one for random inits (dolma2 for OLMo-2/3, GPT-NeoX-20B's for Pythia).
pub fn tokenizer_for(
    source: &dyn WeightSource,
    explicit: Option<&Path>,
) -> Result<(Tokenizer, String)> {
    if let Some(path) = explicit {
        // The user's own file: the data fetch would not create it, so no fetch hint.
        let tokenizer = read_tokenizer(path).map_err(|e| {
            let e = if path.exists() { e } else { "not found".into() };
            anyhow!("--tokenizer {}: {e}", path.display())
        })?;
        return Ok((tokenizer, path.display().to_string()));
    }
    if let Some(path) = source.tokenizer_path() {
        return Ok((load_tokenizer_file(&path)?, path.display().to_string()));
    }
    if let Some(embedded) = source.embedded_tokenizer() {
        return Ok((
            embedded.context("tokenizer embedded in the source")?,
            "embedded".into(),
        ));
    }
    // Sources without a tokenizer (random init) of a family whose tokenizer is packaged.
    let packaged: Option<PathBuf> = match source.config().architecture {
        Architecture::Olmo2 | Architecture::Olmo3 => Some(dolma2_tokenizer()),
        Architecture::GptNeox => Some(gpt_neox_tokenizer()),
        _ => None,
    };
    if let Some(path) = packaged {
        return Ok((load_tokenizer_file(&path)?, path.display().to_string()));
    }
    Err(anyhow!(
        "the source has no tokenizer; pass --tokenizer PATH/tokenizer.json"
    ))
}

/// Token ids of a prompt as the model's own tokenizer call gives them: with the special tokens
/// its post-processor adds (Gemma's `<bos>`; none for the byte-level BPE tokenizers).
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    encode_ids(tokenizer, text, true)
}

/// Token ids of `text`, without special tokens added.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    encode_ids(tokenizer, text, false)
}

fn encode_ids(tokenizer: &Tokenizer, text: &str, special_tokens: bool) -> Result<Vec<i64>> {
    let encoding = tokenizer
        .encode(text, special_tokens)
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
}

pub fn decode(tokenizer: &Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    tokenizer
        .decode(&ids, false)
        .map_err(|e| anyhow!("tokenizer: {e}"))
}

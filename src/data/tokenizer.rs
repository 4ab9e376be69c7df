//! Tokenizers from tokenizer.json (the `tokenizers` crate, offline) or embedded in a source.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

use crate::data::paths::{dolma2_tokenizer, fetch_hint};
use crate::model::config::Architecture;
use crate::source::WeightSource;

pub fn load_tokenizer_file(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(anyhow!(
            "{}: not found\n{}",
            path.display(),
            fetch_hint(path)
        ));
    }
    Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}

/// The tokenizer for a source: an explicit file, else the source's own, else OLMo-2's dolma2 for
/// OLMo-2-shaped sources (random init carries none).
pub fn tokenizer_for(
    source: &dyn WeightSource,
    explicit: Option<&Path>,
) -> Result<(Tokenizer, String)> {
    if let Some(path) = explicit {
        return Ok((load_tokenizer_file(path)?, path.display().to_string()));
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
    if source.config().architecture == Architecture::Olmo2 {
        let path: PathBuf = dolma2_tokenizer();
        return Ok((load_tokenizer_file(&path)?, path.display().to_string()));
    }
    Err(anyhow!(
        "the source has no tokenizer; pass --tokenizer PATH/tokenizer.json"
    ))
}

/// Token ids of `text`, without special tokens added.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    Ok(encoding.get_ids().iter().map(|&i| i as i64).collect())
}

pub fn decode(tokenizer: &Tokenizer, ids: &[i64]) -> Result<String> {
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    tokenizer
        .decode(&ids, false)
        .map_err(|e| anyhow!("tokenizer: {e}"))
}

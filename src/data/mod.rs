//! Text and tokens: tokenizers, packaged data locations, corpora.

pub mod paths;
pub mod tokenizer;

//! Text and tokens: tokenizers, packaged data locations, corpora.

pub mod calibration;
pub mod corpora;
pub mod gsm8k;
pub mod paths;
pub mod tasks;
pub mod token_set;
pub mod tokenizer;

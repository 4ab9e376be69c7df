//! The analysis settings of one scan, after manifest defaults and command-line overrides: what
//! every checkpoint of the series is measured with.

use serde::Serialize;

use crate::analysis::alignment::AlignmentOptions;
use crate::analysis::predictability::PredictabilityOptions;
use crate::config::ModelConfig;
use crate::data::token_set::TokenSetOptions;
use crate::defaults::DEFAULT_FIT_FRACTION;

/// The analysis settings of one scan, after manifest defaults and command-line overrides.
#[derive(Clone, Debug, Serialize)]
pub struct ScanOptions {
    pub text: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub sink_sequences: usize,
    pub predictability: PredictabilityOptions,
    pub alignment: AlignmentOptions,
    pub max_refs: usize,
}

impl ScanOptions {
    /// The share of the token set's sequences that fit the maps (the rest are held out).
    pub fn fit_fraction(&self) -> f64 {
        DEFAULT_FIT_FRACTION
    }

    /// The token set every checkpoint of the series reads.
    pub fn token_set_options(&self, config: &ModelConfig) -> TokenSetOptions {
        TokenSetOptions {
            tokens: self.tokens,
            seq_len: self.seq_len,
            fit_fraction: self.fit_fraction(),
            seed: self.seed,
            separator: config.eos_token_id,
        }
    }
}

//! Resolving `predict`: flags and the model's config into the analysis options and token set it
//! runs with, with the flag-naming errors for values that cannot work.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::analysis::predictability::PredictabilityOptions;
use crate::cli::PredictArgs;
use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::token_set::TokenSetOptions;
use crate::defaults::{seq_len_within, PREDICT_SEQ_LEN_CAP};
use crate::output::default_out_dir;
use crate::settings::check_seq_len;

/// What one `predict` run measures, resolved.
pub struct PredictSettings {
    pub out_dir: PathBuf,
    pub options: PredictabilityOptions,
    pub text: TextSource,
    pub token_set: TokenSetOptions,
    /// The master seed (document order of the token set).
    pub seed: u64,
}

/// Checks what needs no model: the output folder and the store budget.
pub fn out_dir(args: &PredictArgs) -> Result<PathBuf> {
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir("predict", &args.source));
    // Written only after the computation: a file or read-only folder in the way is found now.
    crate::output::atomic::check_output_dir(&out_dir, "--out")?;
    if args.store_budget_gb.is_nan() || args.store_budget_gb < 0.0 {
        bail!(
            "--store-budget-gb must be a non-negative number, got {}",
            args.store_budget_gb
        );
    }
    Ok(out_dir)
}

impl PredictSettings {
    /// `out_dir` from [`out_dir`]; `config` is the opened source's.
    pub fn resolve(
        args: &PredictArgs,
        seed: u64,
        out_dir: PathBuf,
        config: &ModelConfig,
    ) -> Result<Self> {
        let options = PredictabilityOptions {
            kinds: args.kinds.clone(),
            max_refs: args.max_refs,
            selection: args.select,
            candidates: args.candidates,
            capture_point: args.capture,
            layers: args.layers.as_ref().map(|l| l.0.clone()),
            store_budget_bytes: (args.store_budget_gb * (1u64 << 30) as f64) as u64,
        };
        options.check(config)?;
        let seq_len = args
            .seq_len
            .unwrap_or_else(|| seq_len_within(config.max_position_embeddings, PREDICT_SEQ_LEN_CAP));
        check_seq_len(seq_len, config, "")?;
        Ok(PredictSettings {
            out_dir,
            options,
            text: TextSource::parse(&args.text),
            token_set: TokenSetOptions {
                tokens: args.tokens,
                seq_len,
                fit_fraction: args.split,
                seed,
                separator: config.eos_token_id,
            },
            seed,
        })
    }
}

//! `theory`'s settings: its flags checked, before any model is opened, and turned into the plain
//! values the checks run with.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::analysis::init_check::SourceRole;
use crate::analysis::layer_check::FAMILY_ALPHA;
use crate::analysis::model_check::{
    ModelCheckSettings, HELDOUT_RESAMPLES, MIN_PREDICTION_REPLICATIONS,
};
use crate::cli::TheoryArgs;
use crate::data::corpora::TextSource;
use crate::data::paths::smollm2_gguf;
use crate::defaults::DEFAULT_INIT_SOURCES;

/// What `theory` runs: the sources in order, the model checks and the model-free checks.
#[derive(Clone, Debug)]
pub struct TheorySettings {
    /// Init defaults, extra init, trained default, extra trained.
    pub sources: Vec<(SourceRole, String)>,
    /// The per-layer checks of every source; its seed also seeds the model-free checks.
    pub check: ModelCheckSettings,
    pub tokenizer: Option<PathBuf>,
    /// Monte Carlo draws per grid cell at d = 64.
    pub grid_draws: usize,
    pub grid_dims: Vec<usize>,
    /// Simulated data sets per finite-sample case.
    pub finite_sample_replications: usize,
    /// Whether the power check (mutations that must fail) runs.
    pub mutations: bool,
    pub out: PathBuf,
}

impl TheorySettings {
    /// Refuses flag values that cannot work, naming the flag, then resolves the rest.
    pub fn resolve(args: &TheoryArgs, seed: u64) -> Result<Self> {
        check_args(args)?;
        let text = TextSource::parse(&args.text);
        Ok(TheorySettings {
            sources: sources(args),
            check: ModelCheckSettings {
                text: text.name(),
                tokens: args.tokens,
                covariance_tokens: args.covariance_tokens,
                seq_len: args.seq_len,
                split: args.split,
                kinds: args.kinds.clone(),
                max_refs: args.max_refs,
                layers: args.layers.as_ref().map(|l| l.0.clone()),
                capture: "proj",
                selection: "topn",
                layer_draws: args.layer_draws,
                prediction_replications: args.prediction_replications,
                iid_layer0: text == TextSource::Random,
                family_alpha: FAMILY_ALPHA,
                heldout_resamples: HELDOUT_RESAMPLES,
                seed,
            },
            tokenizer: args.tokenizer.clone(),
            grid_draws: args.draws,
            grid_dims: args.grid_dims.clone(),
            finite_sample_replications: args.replications,
            mutations: !args.no_mutations,
            out: args.out.clone(),
        })
    }
}

fn check_args(args: &TheoryArgs) -> Result<()> {
    if args.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if args.seq_len < 2 {
        bail!("--seq-len must be at least 2, got {}", args.seq_len);
    }
    if !(args.split > 0.0 && args.split < 1.0) {
        bail!(
            "--split must lie strictly between 0 and 1, got {}",
            args.split
        );
    }
    if args.max_refs == 0 {
        bail!("--max-refs must be at least 1");
    }
    if args.kinds.is_empty() {
        bail!("--kinds: choose at least one of q, k, v");
    }
    if args.draws < 2 {
        bail!(
            "--draws must be at least 2 (a standard error needs two draws), got {}",
            args.draws
        );
    }
    if args.replications < 2 {
        bail!(
            "--replications must be at least 2 (a standard error needs two), got {}",
            args.replications
        );
    }
    if args.prediction_replications < MIN_PREDICTION_REPLICATIONS {
        bail!(
            "--prediction-replications must be at least {MIN_PREDICTION_REPLICATIONS}, got {}",
            args.prediction_replications
        );
    }
    if args.layer_draws == 1 {
        bail!("--layer-draws must be 0 (no Monte Carlo per layer) or at least 2, got 1");
    }
    if let Some(bad) = args
        .grid_dims
        .iter()
        .find(|d| ![64, 256, 2048].contains(*d))
    {
        bail!("--grid-dims: {bad} is not one of 64, 256, 2048");
    }
    if args.layers.as_ref().is_some_and(|l| l.0.is_empty()) {
        bail!("--layers: name at least one layer");
    }
    Ok(())
}

/// The sources to measure, in order: init defaults, extra init, trained default, extra trained.
fn sources(args: &TheoryArgs) -> Vec<(SourceRole, String)> {
    let mut list = Vec::new();
    if !args.no_default_sources {
        list.extend(
            DEFAULT_INIT_SOURCES
                .iter()
                .map(|s| (SourceRole::Init, s.to_string())),
        );
    }
    list.extend(args.init.iter().map(|s| (SourceRole::Init, s.clone())));
    if !args.no_default_sources {
        list.push((
            SourceRole::Trained,
            format!("gguf:{}", smollm2_gguf().display()),
        ));
    }
    list.extend(
        args.trained
            .iter()
            .map(|s| (SourceRole::Trained, s.clone())),
    );
    list
}

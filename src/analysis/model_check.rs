//! One model source against the init-time bound: its tokens through a [`BoundSink`], then its
//! layers compared with the bound of their measured input spectrum (§7 checks 3–4).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::analysis::init_check::{
    layer_rows, BatchRole, BoundSink, LayerCheckOptions, LayerRow, LayerSpectrum,
    ReplicationSettings, SourceRole,
};
use crate::analysis::layer_check::add_bootstrap;
use crate::analysis::predictability_pass::TOKENS_PER_BATCH;
use crate::analysis::torch_threads::single_threaded;
use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::paths::data_root;
use crate::data::token_set::{token_set_for, TokenSet, TokenSetOptions};
use crate::model::forward::{forward_streamed, ForwardSettings, OutputHead};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::source::hub::HubSettings;
use crate::source::{open_source_with, Provenance};
use crate::stats::init_bound::WeightLaw;

/// What was measured for one model source.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub role: SourceRole,
    /// The spec with the data folder written as `$CKPT_SCAN_DATA`.
    pub label: String,
    pub provenance: Provenance,
    pub config: ModelConfig,
    pub tokenizer: String,
    pub token_set_hash: String,
    pub sequences: usize,
    pub fit_sequences: usize,
    /// Sequences after the fit and held-out ones whose rows only estimate Σ̂.
    pub covariance_sequences: usize,
    pub seq_len: usize,
    pub seconds: f64,
    #[serde(skip)]
    pub spectra: Vec<LayerSpectrum>,
    #[serde(skip)]
    pub rows: Vec<LayerRow>,
}

/// Settings of the model checks, recorded in the manifest.
#[derive(Clone, Debug, Serialize)]
pub struct ModelCheckSettings {
    pub text: String,
    pub tokens: usize,
    /// Extra tokens, after the fit and held-out ones, whose rows only estimate Σ̂.
    pub covariance_tokens: usize,
    pub seq_len: usize,
    pub split: f64,
    pub kinds: Vec<crate::capture::HeadKind>,
    pub max_refs: usize,
    pub layers: Option<Vec<i64>>,
    pub capture: &'static str,
    pub selection: &'static str,
    pub layer_draws: usize,
    /// Conditional (and, in the clean case, population) replications of every layer.
    pub prediction_replications: usize,
    /// Layer-0 rows are iid by construction (`--text random`): the clean population case.
    pub iid_layer0: bool,
    pub family_alpha: f64,
    /// Redraws of the held-out sequences behind each trained row's bootstrap.
    pub heldout_resamples: usize,
    pub seed: u64,
}

/// Redraws of the held-out sequences for a trained row's bootstrap: enough for a 5 % quantile
/// (10 redraws below it) and a 95 % interval of the layer mean.
pub const HELDOUT_RESAMPLES: usize = 200;

/// Fewest replications a prediction may rest on: the Student-t quantiles of the family's
/// critical value are checked for ν ≥ 15 (stats/multiplicity.rs).
pub const MIN_PREDICTION_REPLICATIONS: usize = 16;

/// Split-pure batches of at most `tokens_per_batch` tokens, with their role: the first
/// `fit` sequences fit, the next `heldout` are held out, the rest estimate Σ̂ only.
pub fn role_batches(
    token_set: &TokenSet,
    fit: usize,
    heldout: usize,
    tokens_per_batch: usize,
) -> Vec<(tch::Tensor, BatchRole)> {
    let per_batch = (tokens_per_batch / token_set.seq_len).max(1);
    let total = token_set.sequences.len();
    let mut out = Vec::new();
    for (range, role) in [
        (0..fit.min(total), BatchRole::Fit),
        (
            fit.min(total)..(fit + heldout).min(total),
            BatchRole::Heldout,
        ),
        ((fit + heldout).min(total)..total, BatchRole::Covariance),
    ] {
        for chunk in token_set.sequences[range].chunks(per_batch) {
            let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
            out.push((
                tch::Tensor::from_slice(&flat).view([chunk.len() as i64, token_set.seq_len as i64]),
                role,
            ));
        }
    }
    out
}

/// The law a source's replications draw: its own init law (truncated normal for `scheme=olmo`),
/// Gaussian for HF's scheme and for trained sources (the null of random projections).
pub fn replication_law(role: SourceRole, provenance: &Provenance) -> WeightLaw {
    let olmo = provenance
        .init
        .as_deref()
        .is_some_and(|i| i.contains("scheme=olmo"));
    match (role, olmo) {
        (SourceRole::Init, true) => WeightLaw::TruncatedNormal,
        _ => WeightLaw::Gaussian,
    }
}

/// The key of a source's Monte Carlo streams. Its label, unless the label names a local path
/// outside the data folder (a temp folder, a home folder): then what the source *is* (kind,
/// config, init seed and scheme, Hub revision), so the same model draws the same replications
/// wherever it lies. Two local checkpoints of one config share their streams, i.e. their nulls
/// use common random numbers; their input moments, and so the nulls, still differ.
pub fn stream_key(label: &str, config: &ModelConfig, provenance: &Provenance) -> String {
    let names_local_path = label.starts_with('/') || label.contains(":/");
    if !names_local_path {
        return label.to_string();
    }
    let identity = format!(
        "{}\n{}\n{}\n{}",
        provenance.kind,
        serde_json::to_string(config).unwrap_or_default(),
        provenance.init.as_deref().unwrap_or(""),
        provenance.revision_sha.as_deref().unwrap_or(""),
    );
    let digest = Sha256::digest(identity.as_bytes());
    format!("{}:{}", provenance.kind, &format!("{digest:x}")[..16])
}

/// `spec` with the data folder written as `$CKPT_SCAN_DATA`, so reports do not name a home folder.
pub fn source_label(spec: &str) -> String {
    let root = data_root().display().to_string();
    if root.is_empty() {
        return spec.to_string();
    }
    spec.replace(&root, "$CKPT_SCAN_DATA")
}

/// Opens `spec`, runs its tokens through it with a [`BoundSink`], and compares per layer.
pub fn measure_source(
    role: SourceRole,
    spec: &str,
    check: &ModelCheckSettings,
    tokenizer: Option<&Path>,
    forward: &ForwardSettings,
    hub: &HubSettings,
    printer: Printer,
) -> Result<SourceReport> {
    let start = Instant::now();
    let source = open_source_with(spec, hub)?;
    let config = source.config().clone();
    let seq_len = check
        .seq_len
        .min(config.max_position_embeddings.max(2) as usize);
    let token_options = TokenSetOptions {
        tokens: check.tokens + check.covariance_tokens,
        seq_len,
        fit_fraction: check.split,
        seed: check.seed,
        separator: config.eos_token_id,
    };
    let text = TextSource::parse(&check.text);
    let (token_set, tokenizer_name) =
        token_set_for(source.as_ref(), &text, &token_options, tokenizer)?;
    let label = source_label(spec);
    let stream = stream_key(&label, &config, source.provenance());
    // The fit and held-out sequences come first (as for predict), the covariance ones after.
    let main_sequences = (check.tokens / seq_len).min(token_set.sequences.len());
    let fit_sequences = ((main_sequences as f64 * check.split).round() as usize)
        .clamp(1, main_sequences.saturating_sub(1).max(1));
    let heldout_sequences = main_sequences - fit_sequences;
    if heldout_sequences == 0 {
        bail!("{label}: {main_sequences} sequence(s) cannot be split into fit and held-out parts; raise --tokens or lower --seq-len");
    }
    printer.note(format!(
        "theory: {} ({}): {} sequences × {seq_len} tokens ({fit_sequences} fit, {heldout_sequences} held out, {} for the covariance), capture proj, {}",
        label,
        role.name(),
        token_set.sequences.len(),
        token_set.sequences.len() - main_sequences,
        forward.load.describe()
    ));
    let batches = role_batches(
        &token_set,
        fit_sequences,
        heldout_sequences,
        TOKENS_PER_BATCH,
    );
    let roles: Vec<BatchRole> = batches.iter().map(|(_, r)| *r).collect();
    let tokens: Vec<_> = batches.into_iter().map(|(t, _)| t).collect();
    let mut sink = BoundSink::new(
        &check.kinds,
        check.max_refs,
        check.layers.clone(),
        &label,
        &config,
        roles,
        ReplicationSettings {
            law: replication_law(role, source.provenance()),
            replications: check.prediction_replications,
            seed: check.seed,
            stream: stream.clone(),
            heldout_resamples: match role {
                SourceRole::Init => 0,
                SourceRole::Trained => check.heldout_resamples,
            },
        },
    )?;
    let mut progress = Progress::new(&printer, "theory", "layer", config.num_hidden_layers as u64);
    progress.set_message(label.clone());
    progress.set_position(0.0);
    forward_streamed(
        source.as_ref(),
        &tokens,
        &mut sink,
        &forward.load,
        OutputHead::None,
        &forward.hidden_budget,
        Some(&mut |done, _| progress.set_position(done as f64)),
    )?;
    progress.finish();
    let options = LayerCheckOptions {
        role,
        monte_carlo_draws: check.layer_draws,
        seed: check.seed,
        iid_layer0: check.iid_layer0,
        population_replications: check.prediction_replications,
        stream,
    };
    let mut rows = single_threaded(|| {
        layer_rows(
            &label,
            &config,
            &sink.spectra,
            &sink.prediction_rows(),
            &sink.replicates,
            &options,
        )
    });
    add_bootstrap(&mut rows, &sink.resampled);
    Ok(SourceReport {
        role,
        label,
        provenance: source.provenance().clone(),
        config,
        tokenizer: tokenizer_name,
        token_set_hash: token_set.hash.clone(),
        sequences: main_sequences,
        fit_sequences,
        covariance_sequences: token_set.sequences.len() - main_sequences,
        seq_len,
        seconds: start.elapsed().as_secs_f64(),
        spectra: sink.spectra,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::olmo2_preset;

    fn provenance(kind: &str, init: Option<&str>) -> Provenance {
        Provenance {
            spec: String::new(),
            kind: kind.to_string(),
            files: Vec::new(),
            revision_sha: None,
            init: init.map(str::to_string),
        }
    }

    /// CI once failed a tiny-model theory test that passed here: the streams were keyed by a temp
    /// folder's name, so every run drew other replications. Keys now follow the model, not its path.
    #[test]
    fn stream_keys_follow_the_model_not_its_folder() {
        let config = olmo2_preset("olmo2-1b").unwrap();
        let init = provenance("init", Some("seed=5 scheme=olmo"));
        let a = stream_key("init:/tmp/.tmpA/config.json", &config, &init);
        let b = stream_key("init:/tmp/.tmpB/config.json", &config, &init);
        assert_eq!(a, b);
        assert!(a.starts_with("init:") && !a.contains("tmp"), "{a}");
        // Another seed, another config or another kind is another stream.
        let reseeded = provenance("init", Some("seed=6 scheme=olmo"));
        assert_ne!(
            a,
            stream_key("init:/tmp/.tmpA/config.json", &config, &reseeded)
        );
        let mut wider = config.clone();
        wider.hidden_size *= 2;
        assert_ne!(a, stream_key("init:/tmp/.tmpA/config.json", &wider, &init));
        let local = provenance("safetensors", None);
        assert_ne!(a, stream_key("/tmp/.tmpA", &config, &local));
        // Labels without a local path keep their streams (and the committed verification's figures).
        for label in [
            "init:olmo2-1b?seed=0&scheme=olmo",
            "hf:allenai/OLMo-2-0425-1B@main",
            "gguf:$CKPT_SCAN_DATA/smollm2/model.gguf",
        ] {
            assert_eq!(stream_key(label, &config, &init), label);
        }
    }
}

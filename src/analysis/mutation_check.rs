//! The power of the per-layer verification: deliberate mistakes it must report as FAIL, run on a
//! tiny OLMo-2 model built in code (CPU, seconds). Each [`Mutation`] changes one thing between
//! the model and the verdict — the measurement, the weights' provenance, the split, the
//! reference dimension or the covariance estimate — and [`run_case`] reports how many init rows
//! fail. The honest cases must fail none; every mutation must fail at least one
//! (tests/it/theory.rs asserts both; `ckpt-scan theory` writes the table).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::analysis::bound_sink::{BatchRole, BoundSink, ReplicationSettings};
use crate::analysis::layer_check::Verdict;
use crate::analysis::layer_check::{
    judge, layer_rows_with, reference_dims, LayerCheckOptions, LayerRow, ReferenceDims, SourceRole,
};
use crate::capture::HeadKind;
use crate::config::{Architecture, ModelConfig};
use crate::data::token_set::{TokenSet, TokenSetOptions};
use crate::error::SourceResult;
use crate::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use crate::model::weights::LoadOptions;
use crate::source::init::{InitScheme, InitSource};
use crate::source::{Provenance, TensorInfo, WeightSource};
use crate::stats::init_bound::WeightLaw;
use crate::stats::random::sample_normal;

/// The case's model: OLMo-2 layout, d = 128, 16 heads of d_h = 8 (m/d = k/16 as OLMo-2-1B), two
/// layers, 1024 tokens (so layer-0 inputs are draws from 1024 embedding rows).
pub fn mutation_model_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Olmo2,
        vocab_size: 1024,
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 16,
        num_key_value_heads: 16,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        sliding_window: None,
        rotary_dim: None,
        parallel_residual: false,
        query_pre_attn_scalar: None,
        rope_scaling: Default::default(),
        tie_word_embeddings: false,
        pad_token_id: Some(1),
        bos_token_id: None,
        eos_token_id: Some(2),
    }
}

/// Sequence counts and sizes of a case.
pub const SEQ_LEN: usize = 32;
pub const FIT_SEQUENCES: usize = 48;
pub const HELDOUT_SEQUENCES: usize = 16;
/// 128 × 32 = 4096 covariance rows: n/d = 32.
pub const COVARIANCE_SEQUENCES: usize = 128;
pub const MAX_REFS: usize = 3;
pub const REPLICATIONS: usize = 16;
pub const LAYER_DRAWS: usize = 16;
/// Distinct tokens per sequence in the topic-structured text (strong per-sequence structure):
/// the fit split holds at most 2 × 48 = 96 distinct tokens, a few times the features p = 8..24,
/// so fit and held-out rows sharing sequences inflate held-out R² by about (1 − ρ²)·p/96.
pub const TOPIC_TOKENS: usize = 2;
/// Covariance sequences of the topic cases: each carries only TOPIC_TOKENS distinct tokens, so
/// 4 × 128 of them (≈ all 1024 token ids) estimate the population Σ as well as 128 uniform ones.
pub const TOPIC_COVARIANCE_SEQUENCES: usize = 4 * COVARIANCE_SEQUENCES;

/// One honest run or one deliberate mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// Uniform random tokens, sequence split: nothing wrong (the clean case).
    HonestRandom,
    /// Topic-structured sequences, sequence split: nothing wrong (strong sequence structure).
    HonestTopics,
    /// Every measured R² multiplied by 1.5.
    ScaledR2,
    /// Weights with learned-like alignment (each head a linear map of head 0 plus noise), labelled init.
    AlignedWeightsAsInit,
    /// Topic-structured sequences, fit and held-out rows taken from the same sequences
    /// (even positions fit, odd held out).
    RowSplit,
    /// m = d_h for every k (the bound and the Monte Carlo at one head's width).
    HeadDimAsReferenceDims,
    /// Σ̂ from 10× fewer covariance rows (n/d = 3.2 instead of 32).
    FewerCovarianceRows,
}

impl Mutation {
    pub const ALL: [Mutation; 7] = [
        Mutation::HonestRandom,
        Mutation::HonestTopics,
        Mutation::ScaledR2,
        Mutation::AlignedWeightsAsInit,
        Mutation::RowSplit,
        Mutation::HeadDimAsReferenceDims,
        Mutation::FewerCovarianceRows,
    ];

    pub fn is_honest(self) -> bool {
        matches!(self, Mutation::HonestRandom | Mutation::HonestTopics)
    }

    pub fn description(self) -> &'static str {
        match self {
            Mutation::HonestRandom => "honest: random tokens, split by sequence",
            Mutation::HonestTopics => "honest: topic sequences, split by sequence",
            Mutation::ScaledR2 => "measured R² scaled 1.5×",
            Mutation::AlignedWeightsAsInit => "aligned (trained-like) weights labelled init",
            Mutation::RowSplit => "row-level split (fit and held-out rows share sequences)",
            Mutation::HeadDimAsReferenceDims => "m = d_h used for k > 1",
            Mutation::FewerCovarianceRows => "Σ̂ from 10× fewer rows",
        }
    }

    fn topics(self) -> bool {
        matches!(self, Mutation::HonestTopics | Mutation::RowSplit)
    }
}

/// What one case gave.
#[derive(Clone, Debug, Serialize)]
pub struct MutationRow {
    pub mutation: Mutation,
    pub description: String,
    pub rows: usize,
    pub failed: usize,
    /// How many rows failed each check (`bound`, `prediction pooled`, …), `;`-separated.
    pub failed_by_check: String,
    /// Expected: honest cases pass (0 failed), mutations fail (≥ 1).
    pub as_expected: bool,
    #[serde(skip)]
    pub layer_rows: Vec<LayerRow>,
}

/// An init source whose Q, K and V heads are aligned: head h's projection rows are a random
/// d_h×d_h mix of head 0's plus 0.3× its own init rows, as training would leave shared
/// subspaces. Everything else is the init source's.
pub struct AlignedSource {
    inner: InitSource,
}

impl AlignedSource {
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        AlignedSource {
            inner: InitSource::new(config, seed, InitScheme::Olmo, "init:mutation-aligned"),
        }
    }
}

impl WeightSource for AlignedSource {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn provenance(&self) -> &Provenance {
        self.inner.provenance()
    }
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.inner.tensor_infos()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn read(&self, name: &str) -> SourceResult<Tensor> {
        let weight = self.inner.read(name)?;
        let projection = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .any(|p| name.ends_with(&format!("self_attn.{p}.weight")));
        if !projection {
            return Ok(weight);
        }
        let head_dim = self.config().head_dim;
        let heads = weight.size()[0] / head_dim;
        let first = weight.narrow(0, 0, head_dim);
        let mixed: Vec<Tensor> = (0..heads)
            .map(|h| {
                let own = weight.narrow(0, h * head_dim, head_dim);
                if h == 0 {
                    return own;
                }
                let mix = sample_normal(
                    &[head_dim, head_dim],
                    7,
                    &format!("{name}/mix/{h}"),
                    1.0 / (head_dim as f64).sqrt(),
                    f64::INFINITY,
                );
                mix.matmul(&first) + own * 0.3
            })
            .collect();
        Ok(Tensor::cat(&mixed, 0))
    }
}

/// `sequences` topic sequences of `length` tokens: each draws uniformly from its own
/// `TOPIC_TOKENS` token ids (themselves uniform over the vocabulary).
fn topic_sequences(vocab: i64, sequences: usize, length: usize, seed: u64) -> Vec<Vec<i64>> {
    let topics = uniform_sequences(vocab, sequences, TOPIC_TOKENS, seed);
    let picks = uniform_sequences(TOPIC_TOKENS as i64, sequences, length, seed ^ 0x70c1c);
    topics
        .iter()
        .zip(&picks)
        .map(|(topic, pick)| pick.iter().map(|&i| topic[i as usize]).collect())
        .collect()
}

fn uniform_sequences(vocab: i64, sequences: usize, length: usize, seed: u64) -> Vec<Vec<i64>> {
    TokenSet::uniform_random(
        vocab,
        &TokenSetOptions {
            tokens: sequences * length,
            seq_len: length,
            fit_fraction: 0.5,
            seed,
            separator: None,
        },
    )
    .expect("enough sequences")
    .sequences
}

/// The fit, held-out and covariance sequences of a case.
fn case_sequences(mutation: Mutation, vocab: i64, seed: u64) -> [Vec<Vec<i64>>; 3] {
    let covariance = if mutation == Mutation::FewerCovarianceRows {
        COVARIANCE_SEQUENCES / 10
    } else {
        COVARIANCE_SEQUENCES
    };
    let main = FIT_SEQUENCES + HELDOUT_SEQUENCES;
    if !mutation.topics() {
        let all = uniform_sequences(vocab, main + COVARIANCE_SEQUENCES, SEQ_LEN, seed);
        return [
            all[..FIT_SEQUENCES].to_vec(),
            all[FIT_SEQUENCES..main].to_vec(),
            all[main..main + covariance].to_vec(),
        ];
    }
    let covariance_rows = topic_sequences(vocab, TOPIC_COVARIANCE_SEQUENCES, SEQ_LEN, seed + 1);
    if mutation == Mutation::RowSplit {
        // Each sequence of twice the length: even positions fit, odd positions held out. Both
        // splits see every topic; the held-out rows are no longer new sequences.
        let long = topic_sequences(vocab, FIT_SEQUENCES, 2 * SEQ_LEN, seed);
        let pick = |parity: usize| -> Vec<Vec<i64>> {
            long.iter()
                .map(|s| s.iter().skip(parity).step_by(2).copied().collect())
                .collect()
        };
        let heldout: Vec<Vec<i64>> = pick(1).into_iter().take(HELDOUT_SEQUENCES).collect();
        return [pick(0), heldout, covariance_rows];
    }
    let all = topic_sequences(vocab, main, SEQ_LEN, seed);
    [
        all[..FIT_SEQUENCES].to_vec(),
        all[FIT_SEQUENCES..].to_vec(),
        covariance_rows,
    ]
}

/// Runs one case end to end: forward, replications, rows, verdicts (one family per case).
/// libtorch runs single-threaded meanwhile: the case is thousands of tiny solves, which OpenMP's
/// spinning slows down severalfold on a loaded machine (the theory command measured 10–50×).
pub fn run_case(mutation: Mutation, seed: u64) -> Result<MutationRow> {
    let previous = tch::get_num_threads();
    tch::set_num_threads(1);
    let result = run_case_here(mutation, seed);
    tch::set_num_threads(previous);
    result
}

fn run_case_here(mutation: Mutation, seed: u64) -> Result<MutationRow> {
    let config = mutation_model_config();
    let source: Box<dyn WeightSource> = if mutation == Mutation::AlignedWeightsAsInit {
        Box::new(AlignedSource::new(config.clone(), seed))
    } else {
        Box::new(InitSource::new(
            config.clone(),
            seed,
            InitScheme::Olmo,
            "init:mutation",
        ))
    };
    let sequences = case_sequences(mutation, config.vocab_size, seed);
    let mut batches = Vec::new();
    let mut roles = Vec::new();
    for (part, role) in
        sequences
            .iter()
            .zip([BatchRole::Fit, BatchRole::Heldout, BatchRole::Covariance])
    {
        for chunk in part.chunks(32) {
            let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
            batches.push(Tensor::from_slice(&flat).view([chunk.len() as i64, SEQ_LEN as i64]));
            roles.push(role);
        }
    }
    let kinds = [HeadKind::Q, HeadKind::K, HeadKind::V];
    let mut sink = BoundSink::new(
        &kinds,
        MAX_REFS,
        None,
        "init:mutation",
        &config,
        roles,
        ReplicationSettings {
            law: WeightLaw::TruncatedNormal,
            replications: REPLICATIONS,
            seed,
            stream: format!("mutation/{mutation:?}"),
            heldout_resamples: 0,
        },
    )?;
    let load = LoadOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        allow_nan: false,
    };
    forward_streamed(
        source.as_ref(),
        &batches,
        &mut sink,
        &load,
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )?;
    if mutation == Mutation::ScaledR2 {
        for row in sink.prediction_rows_mut() {
            row.r2_pooled_heldout *= 1.5;
            row.r2_heldout *= 1.5;
        }
    }
    let dims: ReferenceDims = if mutation == Mutation::HeadDimAsReferenceDims {
        |_, head_dim| head_dim
    } else {
        reference_dims
    };
    let options = LayerCheckOptions {
        role: SourceRole::Init,
        monte_carlo_draws: LAYER_DRAWS,
        seed,
        iid_layer0: !mutation.topics(),
        population_replications: REPLICATIONS,
        stream: "init:mutation".to_string(),
    };
    let mut rows = layer_rows_with(
        "init:mutation",
        &config,
        &sink.spectra,
        &sink.prediction_rows(),
        &sink.replicates,
        &options,
        dims,
    );
    judge(&mut rows, crate::analysis::layer_check::FAMILY_ALPHA);
    let failed = rows.iter().filter(|r| r.verdict != Verdict::Pass).count();
    let mut by_check: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        for check in row.failed_checks.split(';').filter(|c| !c.is_empty()) {
            *by_check.entry(check.to_string()).or_default() += 1;
        }
    }
    Ok(MutationRow {
        mutation,
        description: mutation.description().to_string(),
        rows: rows.len(),
        failed,
        failed_by_check: by_check
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join("; "),
        as_expected: if mutation.is_honest() {
            failed == 0
        } else {
            failed > 0
        },
        layer_rows: rows,
    })
}

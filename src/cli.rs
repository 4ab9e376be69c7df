//! Command-line syntax (clap types live here only; `settings` resolves them).

use std::path::PathBuf;

use crate::defaults::{
    DEFAULT_FIT_FRACTION, DEFAULT_MAX_REFS, DEFAULT_PREDICT_TOKENS, DEFAULT_TEXT,
};
use crate::infer::reference_heads::KvMode;
use crate::model::head_map::KeySpace;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ckpt-scan",
    version,
    about = "How attention heads form during LLM training"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto, global = true)]
    pub device: DeviceArg,
    /// Compute dtype; `auto` is f32 on CPU and bf16 on CUDA.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto, global = true)]
    pub dtype: DtypeArg,
    /// Run even when weights hold NaN/Inf.
    #[arg(long, global = true)]
    pub allow_nan: bool,
    /// Memory (GiB) the residual stream of all token batches may take before it spills to a
    /// memory-mapped scratch file.
    #[arg(long, default_value_t = 4.0, global = true)]
    pub hidden_budget_gb: f64,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<i32>,
    /// Print only errors and results.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// The master seed (default 0; for `scan`, the manifest's `analysis.seed` when not given).
    /// Every random choice derives from it: token-set document order, item and calibration
    /// subsets, the alignment null, the theory's Monte Carlo streams (keyed by seed and stream).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Read `hf:` sources only from this Hugging Face cache folder, offline (as
    /// HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1); e.g. the series `ckpt-scan train` writes.
    #[arg(long, global = true)]
    pub hub_cache: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeArg {
    Auto,
    F32,
    Bf16,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Config summary, tensor table with fingerprints, and integrity problems of a checkpoint.
    Inspect(InspectArgs),
    /// Run text through a checkpoint: next-token predictions and a greedy continuation.
    Forward(ForwardArgs),
    /// Linear predictability of every head's Q/K/V from k other heads (same layer, or also earlier layers).
    Predict(PredictArgs),
    /// Principal angles between heads' projection subspaces and weight-only R² (weights only).
    Align(AlignArgs),
    /// List a Hub repo's checkpoint branches (stage, step, tokens), sorted by step.
    Refs(RefsArgs),
    /// Walk a checkpoint series (checkpoints/*.toml): predictability, alignment and sink statistics
    /// per checkpoint, cached per unit, and a report in reports/<series>/.
    Scan(ScanArgs),
    /// Train a tiny OLMo-2 from scratch and save its checkpoints as a local Hub-style series.
    Train(TrainArgs),
    /// Verify the init-time bound (theory/init_bound.md §7): Monte Carlo of the theorems, models at
    /// init per layer, and where trained checkpoints exceed it; writes verification.md, CSV, plots.
    Theory(TheoryArgs),
    /// Inference validation: multiple-choice accuracy (± 95% interval), speed and KV memory.
    Validate(ValidateArgs),
    /// ACT head search: each query head calibrated alone on train-split items, kept when accuracy
    /// beats the baseline; writes the head list `validate --act` reads.
    ActSearch(ActSearchArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// hf:ORG/NAME@REV, a model folder, a .safetensors or .gguf file, or init:MODEL?seed=N.
    pub source: String,
    /// Only list tensors from headers: no fingerprints, no NaN scan.
    #[arg(long)]
    pub headers_only: bool,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    pub source: String,
    /// Prompt text.
    #[arg(long, default_value = "The capital of France is")]
    pub text: String,
    /// Greedy tokens to generate after the prompt.
    #[arg(long, default_value_t = 8)]
    pub generate: usize,
    /// tokenizer.json to use when the source has none (default: OLMo-2's dolma2 for init sources).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RefsArgs {
    /// hf:ORG/NAME
    pub repo: String,
    /// Write the listing as JSON to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `tiny` (the default series), `test` (seconds, for the test suite), or a TOML file whose
    /// fields override tiny's.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    /// Series folder (a Hugging Face cache layout; default ~/.cache/ckpt-scan/series).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// hf:ORG/NAME@REV, a model folder, a .safetensors or .gguf file, or init:MODEL?seed=N.
    pub source: String,
    /// Text: `mix` (web-like passages disjoint from the built-in training text), `gsm8k`, `random`
    /// (uniform token ids), or a file (documents separated by blank lines).
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// Tokens to analyse (whole sequences of --seq-len).
    #[arg(long, default_value_t = DEFAULT_PREDICT_TOKENS)]
    pub tokens: usize,
    /// Tokens per sequence (default: min(2048, the model's maximum); `defaults::PREDICT_SEQ_LEN_CAP`).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Which vectors to predict.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![crate::capture::HeadKind::Q, crate::capture::HeadKind::K, crate::capture::HeadKind::V])]
    pub kinds: Vec<crate::capture::HeadKind>,
    /// Largest number of reference heads k (results for every k = 1..max).
    #[arg(long, value_parser = at_least_one, default_value_t = DEFAULT_MAX_REFS)]
    pub max_refs: usize,
    /// How reference heads are chosen on the fit split.
    #[arg(long, value_enum, default_value_t = crate::stats::selection::Selection::Topn)]
    pub select: crate::stats::selection::Selection,
    /// Which heads may be references: the target's layer, or it and every earlier layer (the
    /// paper's thought graph; spills all captured layers to a scratch store on disk).
    #[arg(long, value_enum, default_value_t = crate::analysis::predictability::Candidates::SameLayer)]
    pub candidates: crate::analysis::predictability::Candidates,
    /// Most disk (GiB) the earlier-layers activation store may take (layers × kinds × tokens ×
    /// heads·head_dim × 4 bytes); it must also fit the free space of the temp folder.
    #[arg(long, default_value_t = 64.0)]
    pub store_budget_gb: f64,
    /// Where Q and K are captured (V is always the raw projection).
    #[arg(long, value_enum, default_value_t = crate::capture::CapturePoint::Rope)]
    pub capture: crate::capture::CapturePoint,
    /// Fraction of sequences in the fit split (the rest are held out).
    #[arg(long, default_value_t = DEFAULT_FIT_FRACTION)]
    pub split: f64,
    /// Layers to analyse: single layers and inclusive ranges, `0,5,11`, `2..28`, `2..4,9`
    /// (default: all).
    #[arg(long, value_parser = parse_layer_list)]
    pub layers: Option<LayerList>,
    /// Output folder (default reports/predict-<source>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// tokenizer.json to use when the source has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AlignArgs {
    /// hf:ORG/NAME@REV, a model folder, a .safetensors or .gguf file, or init:MODEL?seed=N.
    pub source: String,
    /// Which projections (K is the paper's; Q and V on request).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![crate::capture::HeadKind::K])]
    pub kinds: Vec<crate::capture::HeadKind>,
    /// Multiply projection rows by their QK-norm gains (OLMo-2).
    #[arg(long)]
    pub fold_norm: bool,
    /// Largest reference-set size for weight-only R².
    #[arg(long, value_parser = at_least_one, default_value_t = DEFAULT_MAX_REFS)]
    pub max_refs: usize,
    /// Partners per anchor in the anchor-vs-span variant (the paper code uses 5).
    #[arg(long, value_parser = at_least_one, default_value_t = 5)]
    pub partners: usize,
    /// Random subspace pairs for the null baseline's spread.
    #[arg(long, value_parser = at_least_one, default_value_t = 32)]
    pub null_samples: usize,
    /// predictability.csv from `ckpt-scan predict` on the same checkpoint: compare weight-only with
    /// measured R² on the same reference sets.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Output folder (default reports/align-<source>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// A series manifest: a path, or a name in checkpoints/ (e.g. `tiny`).
    pub series: String,
    /// Report folder (default reports/<series name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Finished work units are kept here and reused (default ~/.cache/ckpt-scan/units).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Continue a scan that was interrupted (finished units are reused either way).
    #[arg(long)]
    pub resume: bool,
    /// Recompute every unit, ignoring the cache.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (checkpoints, bytes, cached units, estimated time) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep Hub downloads in the cache after each checkpoint (default: evict them).
    #[arg(long)]
    pub keep_downloads: bool,
    /// Text for the token set (overrides the manifest): mix, gsm8k, random or a file.
    #[arg(long)]
    pub text: Option<String>,
    /// Tokens in the token set (overrides the manifest; default 16384).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Tokens per sequence (overrides the manifest; default min(256, the model's maximum)).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Which vectors to predict (overrides the manifest; default q,k,v).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kinds: Option<Vec<crate::capture::HeadKind>>,
    /// Largest reference-set size (overrides the manifest; default 5).
    #[arg(long, value_parser = at_least_one)]
    pub max_refs: Option<usize>,
    /// Where Q and K are captured for predictability.
    #[arg(long, value_enum, default_value_t = crate::capture::CapturePoint::Rope)]
    pub capture: crate::capture::CapturePoint,
    /// Sequences whose attention maps give the sink statistics (overrides the manifest; default 32).
    #[arg(long)]
    pub sink_sequences: Option<usize>,
    /// Run only shard I of N (`I/N`, or `auto/N` with I from SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX): its checkpoints' units go into the unit cache, no report is written.
    #[arg(long, value_name = "I/N", conflicts_with_all = ["report", "status", "slurm"])]
    pub shard: Option<String>,
    /// Assemble the report from the unit cache only (after shards ran); lists what is missing or failed.
    #[arg(long, conflicts_with_all = ["status", "slurm"])]
    pub report: bool,
    /// Print each unit's state (done, running, failed, pending) and stop.
    #[arg(long, conflicts_with = "slurm")]
    pub status: bool,
    /// Seconds after which a unit claim whose heartbeat stopped is taken over by another worker.
    #[arg(long, default_value_t = 600)]
    pub claim_timeout: u64,
    /// Write a Slurm job array (one task per shard) plus a report job that runs after it, and
    /// submit both with sbatch (with --dry-run: print the scripts instead).
    #[arg(long)]
    pub slurm: bool,
    /// Shards of the Slurm array (default: one per checkpoint).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    #[command(flatten)]
    pub slurm_options: SlurmArgs,
}

/// sbatch options for `scan --slurm` (each overrides the manifest's `[slurm]` table).
#[derive(Args, Debug, Clone, Default)]
pub struct SlurmArgs {
    /// Array tasks running at once (the `%K` of `--array`).
    #[arg(long = "slurm-concurrency", value_name = "K")]
    pub concurrency: Option<usize>,
    #[arg(long = "slurm-partition")]
    pub partition: Option<String>,
    /// Time limit per task (sbatch --time, e.g. 04:00:00).
    #[arg(long = "slurm-time")]
    pub time: Option<String>,
    /// Memory per task (sbatch --mem, e.g. 64G).
    #[arg(long = "slurm-mem")]
    pub mem: Option<String>,
    /// Generic resources per task (sbatch --gres, e.g. gpu:1).
    #[arg(long = "slurm-gres")]
    pub gres: Option<String>,
    #[arg(long = "slurm-account")]
    pub account: Option<String>,
}

impl SlurmArgs {
    pub fn settings(&self) -> crate::series::manifest::SlurmSettings {
        crate::series::manifest::SlurmSettings {
            concurrency: self.concurrency,
            partition: self.partition.clone(),
            time: self.time.clone(),
            mem: self.mem.clone(),
            gres: self.gres.clone(),
            account: self.account.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct TheoryArgs {
    /// A model at init to check per layer (repeatable), besides both schemes of init:olmo2-1b.
    #[arg(long = "init", value_name = "SOURCE")]
    pub init: Vec<String>,
    /// A trained checkpoint to compare with its init bound (repeatable), besides SmolLM2-135M-Instruct (GGUF).
    #[arg(long = "trained", value_name = "SOURCE")]
    pub trained: Vec<String>,
    /// Measure only the sources given with --init and --trained, not the defaults.
    #[arg(long)]
    pub no_default_sources: bool,
    /// Text for the model checks: `mix`, `gsm8k`, `random` or a file (as for predict).
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// Tokens per model (whole sequences of --seq-len) for the fits and held-out scores.
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Further tokens per model whose rows only estimate the input covariance Σ̂ (its own split,
    /// after the held-out sequences); 0 estimates Σ̂ on the fit split as before.
    #[arg(long, default_value_t = 16384)]
    pub covariance_tokens: usize,
    /// Tokens per sequence (capped at each model's maximum).
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Fraction of sequences in the fit split (the input spectrum and the fits); the rest are held out.
    #[arg(long, default_value_t = DEFAULT_FIT_FRACTION)]
    pub split: f64,
    /// Which vectors to predict in the model checks.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![crate::capture::HeadKind::Q, crate::capture::HeadKind::K, crate::capture::HeadKind::V])]
    pub kinds: Vec<crate::capture::HeadKind>,
    /// Largest number of reference heads k (capped per kind at its heads − 1).
    #[arg(long, value_parser = at_least_one, default_value_t = 5)]
    pub max_refs: usize,
    /// Layers to check: single layers and inclusive ranges, `0,5,11`, `2..28` (default: all).
    #[arg(long, value_parser = parse_layer_list)]
    pub layers: Option<LayerList>,
    /// Monte Carlo weight draws per grid cell at d = 64 (fewer at larger d, at least 16).
    #[arg(long, default_value_t = 2000)]
    pub draws: usize,
    /// Input dimensions of the model-free Monte Carlo grid (any of 64, 256, 2048).
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 256, 2048])]
    pub grid_dims: Vec<usize>,
    /// Monte Carlo weight draws per measured layer spectrum.
    #[arg(long, default_value_t = 8)]
    pub layer_draws: usize,
    /// Output folder.
    #[arg(long, default_value = "theory")]
    pub out: PathBuf,
    /// tokenizer.json to use when a source has none (default: OLMo-2's dolma2 for init sources).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Simulated data sets per case of the finite-sample check (§7 check 2).
    #[arg(long, default_value_t = 2000)]
    pub replications: usize,
    /// Replications of every measured layer with fresh random weights (the prediction its
    /// held-out R² is compared with, two-sided; at least 16).
    #[arg(long, default_value_t = 16)]
    pub prediction_replications: usize,
    /// Skip the power check (deliberate mistakes on a tiny model that must fail).
    #[arg(long)]
    pub no_mutations: bool,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// hf:ORG/NAME@REV, a model folder, a .safetensors or .gguf file, or init:MODEL?seed=N.
    pub source: String,
    /// Multiple-choice tasks (OLMo request files under oe_eval_tasks/), `gsm8k` (8-shot chain of
    /// thought, generated) and `bpb` (bits per byte of --bpb-text).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["arc_easy".to_string(), "hellaswag".to_string(), "piqa".to_string()])]
    pub tasks: Vec<String>,
    /// Request-file variant: `rc_0shot` (zero-shot ranked classification), `rc_5shot`, …
    #[arg(long, default_value = "rc_0shot")]
    pub variant: String,
    /// Items per task: a seed-stable subset (default: all).
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Padded tokens per scoring batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// Greedy tokens generated (KV-cached) from a few task prompts to measure decode speed; 0 skips.
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// ACT head list (JSON: `{"heads": {"LAYER": [HEAD, …]}, …}`): run ACT beside the baseline.
    #[arg(long)]
    pub act: Option<PathBuf>,
    /// tokenizer.json to use when the source has none (default: OLMo-2's dolma2 for init sources).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output folder (default reports/validate-<source>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compressed KV cache: the fraction of KV heads (per kind) that are not cached but rebuilt
    /// from same-layer reference heads by linear maps fitted on calibration text.
    #[arg(long)]
    pub kv_compress: Option<f64>,
    /// KV-cache variants, each run as its own mode on the same items, paired against the baseline
    /// (comma-separated): quant:int8|int4|int2[:gG] (KIVI layout), lowrank:R[+intB] (PCA of each
    /// layer's K/V on the calibration text), refs:P[+intB] (reference heads), evict:S+W (first S
    /// and last W positions); append @k or @v to compress only keys or values.
    #[arg(long = "kv", value_delimiter = ',')]
    pub kv: Vec<String>,
    /// Which kinds the compressed cache rebuilds; each listed mode runs as its own mode.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["kv"])]
    pub kv_mode: Vec<KvMode>,
    /// Rebuild keys before RoPE (RoPE applied after the rebuild) or after it (the paper's code).
    #[arg(long, value_enum, default_value_t = KeySpace::PreRope)]
    pub kv_keys: KeySpace,
    /// Fewest reference heads per rebuilt head (a layer keeps at least this many heads cached).
    #[arg(long, default_value_t = 2)]
    pub kv_min_refs: usize,
    /// Most reference heads per rebuilt head.
    #[arg(long, default_value_t = 5)]
    pub kv_max_refs: usize,
    /// Calibration text for the maps (never evaluation items): mix, or a text file.
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub kv_calibration_text: String,
    /// Calibration tokens (3/4 fit the maps, 1/4 held out to score them).
    #[arg(long, default_value_t = 16384)]
    pub kv_calibration_tokens: usize,
    /// Calibration sequence length.
    #[arg(long, default_value_t = 256)]
    pub kv_calibration_seq_len: usize,
    /// Held-out text for the `bpb` task (bits per byte): `mix` (passages disjoint from the
    /// built-in training text), `gsm8k`, or a file (documents separated by blank lines).
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub bpb_text: String,
    /// Text tokens the `bpb` task reads (whole documents, a seed-stable selection).
    #[arg(long, default_value_t = 16384)]
    pub bpb_tokens: usize,
    /// Tokens per `bpb` window (default: min(1024, the model's maximum)).
    #[arg(long)]
    pub bpb_window: Option<usize>,
    /// Tokens between `bpb` window starts (default: half the window); every token is scored once,
    /// with at least window − stride tokens of context.
    #[arg(long)]
    pub bpb_stride: Option<usize>,
    /// New tokens per `gsm8k` question (default: the request file's 512).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
}

/// `ckpt-scan act-search`: which query heads ACT should calibrate (research/act.md §3.2).
#[derive(Args, Debug)]
pub struct ActSearchArgs {
    /// hf:ORG/NAME@REV, a model folder, a .safetensors or .gguf file, or init:MODEL?seed=N.
    pub source: String,
    /// Task family whose train splits make the calibration set.
    #[arg(long, value_enum, default_value_t = crate::data::calibration::TaskFamily::Mc)]
    pub family: crate::data::calibration::TaskFamily,
    /// Calibration items in all, spread evenly over the family's tasks (a seed-stable subset). The
    /// default keeps SmolLM2-135M's full search near 20 min on 2 cores (benches/README.md); on so
    /// few items one item moves accuracy by 3 points, so see also the JSON's mean gold log-probability.
    #[arg(long, default_value_t = 30)]
    pub calibration_items: usize,
    /// ACT's β: sink columns are scaled by it.
    #[arg(long, default_value_t = 0.4)]
    pub beta: f64,
    /// ACT's τ: a key is a sink candidate when its mean attention over the queries that see it exceeds it.
    #[arg(long, default_value_t = 0.1)]
    pub tau: f64,
    /// Layers to search: single layers and inclusive ranges, `3,5,7`, `2..28`, `2..4,9`
    /// (default 2..L−2, the layers ACT may calibrate).
    #[arg(long, value_parser = parse_layer_list)]
    pub layers: Option<LayerList>,
    /// Padded tokens per scoring batch.
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,
    /// tokenizer.json to use when the source has none (default: OLMo-2's dolma2 for init sources).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output head list (default reports/act-<source>/<family>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A count flag that has no meaning at zero (`--limit 0` would score no items and report NaN).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A `--layers` value: single layers and inclusive ranges, `0,5,11`, `2..28` (or `2..=28`),
/// `2..4,9`; sorted, without repeats. One syntax for every command that takes layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerList(pub Vec<i64>);

pub fn parse_layer_list(text: &str) -> Result<LayerList, String> {
    let number = |s: &str| -> Result<i64, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a layer number"))
    };
    let mut layers = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once("..") {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last.trim_start_matches('='))?);
                if first > last {
                    return Err(format!("range {part} is empty"));
                }
                layers.extend(first..=last);
            }
            None => layers.push(number(part)?),
        }
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(LayerList(layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_take_ranges_and_single_layers() {
        let parse = |t: &str| parse_layer_list(t).map(|l| l.0);
        assert_eq!(parse("2..4,9").unwrap(), [2, 3, 4, 9]);
        assert_eq!(parse("0,5,11").unwrap(), [0, 5, 11]);
        assert_eq!(parse("2..=3").unwrap(), [2, 3]);
        assert_eq!(parse("5, 3,3").unwrap(), [3, 5]);
        assert!(parse("4..2").is_err());
        assert!(parse("x").is_err());
        assert_eq!(parse("").unwrap(), Vec::<i64>::new());
    }
}

//! Command-line syntax (clap types live here only; `settings` resolves them).

use std::path::PathBuf;

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
    /// List a Hub repo's checkpoint branches (stage, step, tokens), sorted by step.
    Refs(RefsArgs),
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

//! Forward efficiency: the matmul FLOP/s a forward achieves, divided by libtorch's own large-matmul
//! FLOP/s measured in the same process. `cargo bench --bench forward_efficiency -- SOURCE
//! [--tokens N] [--seq-len S] [--repeats R] [--streamed]`.
//!
//! FLOPs counted: every matmul the layers run — Q/K/V/O projections, the MLP's two or three
//! matrices, and causal attention's QKᵀ and PV over the visible keys only (query i sees i + 1) —
//! at 2 FLOPs per multiply-add. Embedding lookup, norms, RoPE, softmax and the LM head are not
//! counted (`predict` runs no head). The peak is a 4096³ f32 matmul, median of the repeats.
//! Token ids are seeded-random, in the batches `predict` forms (8192 tokens each).
//!
//! Default: the model is loaded whole first and only the forwards are timed (compute efficiency).
//! `--streamed` times the layer-streamed forward `predict` runs, weight reading or generation
//! included, once.

use std::time::Instant;

use ckpt_scan::analysis::predictability_pass::TOKENS_PER_BATCH;
use ckpt_scan::capture::NoCapture;
use ckpt_scan::config::{MlpKind, ModelConfig};
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::resident::{ForwardState, ResidentModel};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::open_source;
use tch::{Device, Kind, Tensor};

#[path = "support/mod.rs"]
mod support;
use support::{flag, median};

/// Matmul FLOPs of the decoder layers over `sequences` causal sequences of `seq_len` tokens.
fn layer_flops(config: &ModelConfig, sequences: i64, seq_len: i64) -> f64 {
    let (d, dh) = (config.hidden_size as f64, config.head_dim as f64);
    let (nq, nkv) = (
        config.num_attention_heads as f64,
        config.num_key_value_heads as f64,
    );
    let mlp_matrices = match config.architecture.mlp_kind() {
        MlpKind::Gelu => 2.0,
        MlpKind::SwiGlu | MlpKind::GeGlu => 3.0,
    };
    let per_token = 2.0 * d * dh * (2.0 * nq + 2.0 * nkv)
        + 2.0 * mlp_matrices * d * config.intermediate_size as f64;
    let tokens = (sequences * seq_len) as f64;
    // Σ_i (i + 1) visible keys per sequence, QKᵀ and PV each 2·dh FLOPs per query head and key.
    let visible_pairs = sequences as f64 * (seq_len * (seq_len + 1) / 2) as f64;
    let attention = 2.0 * 2.0 * dh * nq * visible_pairs;
    config.num_hidden_layers as f64 * (per_token * tokens + attention)
}

/// libtorch's f32 matmul FLOP/s on a 4096³ product, median of `repeats` after one warm-up.
fn matmul_peak(repeats: usize) -> f64 {
    let n = 4096;
    let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let times = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            let _ = a.matmul(&b);
            start.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (n as f64).powi(3) / median(times)
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: measure only when asked.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "forward_efficiency: skipped (run it with `cargo bench --bench forward_efficiency`)"
        );
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let spec = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--") && a.parse::<i64>().is_err())
        .map_or("init:olmo2-1b", |s| s.as_str())
        .to_string();
    let tokens: i64 = flag(&args, "--tokens", 4096);
    let seq_len: i64 = flag(&args, "--seq-len", 256);
    let repeats: usize = flag(&args, "--repeats", 3);
    let source = open_source(&spec)?;
    let config = source.config().clone();
    tch::manual_seed(0);
    let sequences = tokens / seq_len;
    let ids = Tensor::randint(
        config.vocab_size,
        [sequences, seq_len],
        (Kind::Int64, Device::Cpu),
    );
    // The batches `predict` forms: split-pure runs of TOKENS_PER_BATCH tokens.
    let per_batch = (TOKENS_PER_BATCH as i64 / seq_len).max(1);
    let batches: Vec<Tensor> = (0..sequences)
        .step_by(per_batch as usize)
        .map(|first| ids.narrow(0, first, per_batch.min(sequences - first)))
        .collect();
    let flops = layer_flops(&config, sequences, seq_len);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let peak = matmul_peak(repeats);
    let options = LoadOptions::cpu_f32();
    let (label, seconds) = if args.iter().any(|a| a == "--streamed") {
        let start = Instant::now();
        forward_streamed(
            source.as_ref(),
            &batches,
            &mut NoCapture,
            &options,
            OutputHead::None,
            &HiddenBudget::default(),
            None,
        )?;
        (
            "streamed (weights read or generated inside)",
            start.elapsed().as_secs_f64(),
        )
    } else {
        let model = ResidentModel::load(source.as_ref(), &options)?;
        let forward = || -> anyhow::Result<f64> {
            let start = Instant::now();
            for batch in &batches {
                let _ = model.hidden_states(batch, &mut ForwardState::default())?;
            }
            Ok(start.elapsed().as_secs_f64())
        };
        forward()?;
        let times = (0..repeats)
            .map(|_| forward())
            .collect::<anyhow::Result<_>>()?;
        ("resident (median of repeats)", median(times))
    };
    let achieved = flops / seconds;
    println!(
        "forward_efficiency source={spec} tokens={tokens} seq_len={seq_len} threads={} load_before={}\n  \
         layer matmul FLOPs {:.3e}; forward {label}: {seconds:.3} s = {:.1} GFLOP/s\n  \
         libtorch 4096³ f32 matmul: {:.1} GFLOP/s\n  efficiency {:.1}%; load after {}",
        tch::get_num_threads(),
        load.trim(),
        flops,
        achieved / 1e9,
        peak / 1e9,
        100.0 * achieved / peak,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    Ok(())
}

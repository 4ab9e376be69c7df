//! Peak memory and wall time of one layer-streamed forward: `cargo bench --bench forward_memory --
//! SOURCE [TOKENS] [SEQ_LEN]`. Token ids are seeded-random (memory does not depend on them).
//! With `--export DIR` it first writes SOURCE to DIR as sharded safetensors (5 GB shards) and then
//! measures the forward from DIR, the path real checkpoints take. With `--resident` it loads the
//! whole model first (timed apart) and times only the forward passes after one warm-up: the
//! throughput figure, free of weight reading or generation.

use std::time::Instant;

use ckpt_scan::capture::NoCapture;
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::export::export_safetensors;
use ckpt_scan::source::open_source;
use tch::{Kind, Tensor};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: measure only when asked.
    if !std::env::args().any(|a| a == "--bench") {
        println!("forward_memory: skipped (run it with `cargo bench --bench forward_memory`)");
        return Ok(());
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let export = args
        .iter()
        .position(|a| a == "--export")
        .map(|i| args[i + 1].clone());
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--export"))
        .map(|(_, a)| a)
        .collect();
    let spec = positional.first().map_or("init:olmo2-7b", |s| s.as_str());
    let tokens: i64 = positional.get(1).map_or(Ok(2048), |s| s.parse())?;
    let seq_len: i64 = positional
        .get(2)
        .map_or(Ok(tokens.min(2048)), |s| s.parse())?;
    let mut source = open_source(spec)?;
    if let Some(dir) = &export {
        let start = Instant::now();
        export_safetensors(source.as_ref(), std::path::Path::new(dir), 5_000_000_000)?;
        println!(
            "exported {spec} to {dir} in {:.1} s (peak RSS so far {:.0} MB)",
            start.elapsed().as_secs_f64(),
            peak_rss_mb()
        );
        source = open_source(dir)?;
    }
    let vocab = source.config().vocab_size;
    tch::manual_seed(0);
    let batches: Vec<Tensor> = (0..tokens / seq_len)
        .map(|_| Tensor::randint(vocab, [1, seq_len], (Kind::Int64, tch::Device::Cpu)))
        .collect();
    // CKPT_SCAN_BENCH_DEVICE=cuda runs on the GPU in bf16 (scripts/gpu-check.sh).
    let options = match std::env::var("CKPT_SCAN_BENCH_DEVICE").as_deref() {
        Ok("cuda") => LoadOptions {
            device: tch::Device::Cuda(0),
            kind: Kind::BFloat16,
            allow_nan: false,
        },
        _ => LoadOptions::cpu_f32(),
    };
    if args.iter().any(|a| a == "--resident") {
        let start = Instant::now();
        let model = ResidentModel::load(source.as_ref(), &options)?;
        let load_s = start.elapsed().as_secs_f64();
        let sync = || {
            if let tch::Device::Cuda(i) = options.device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        let _ = model.logits(&batches[0])?;
        sync();
        let start = Instant::now();
        for batch in &batches {
            let _ = model.logits(batch)?;
        }
        sync();
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "forward_resident device={:?} kind={:?} source={spec} tokens={tokens} seq_len={seq_len} load_s={load_s:.1} forward_s={seconds:.3} tokens_per_s={:.0}",
            options.device,
            options.kind,
            tokens as f64 / seconds
        );
        return Ok(());
    }
    let before = peak_rss_mb();
    let start = Instant::now();
    let logits = forward_streamed(
        source.as_ref(),
        &batches,
        &mut NoCapture,
        &options,
        OutputHead::LastLogits,
        &HiddenBudget::default(),
        None,
    )?;
    if let tch::Device::Cuda(i) = options.device {
        tch::Cuda::synchronize(i as i64);
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "forward_memory device={:?} source={} tokens={} seq_len={} threads={} wall_s={:.1} tokens_per_s={:.1} peak_rss_mb={:.0} (before forward {:.0}) logits_finite={}",
        options.device,
        if export.is_some() { "sharded-safetensors" } else { spec },
        tokens,
        seq_len,
        tch::get_num_threads(),
        seconds,
        tokens as f64 / seconds,
        peak_rss_mb(),
        before,
        logits.iter().all(|l| l.isfinite().all().int64_value(&[]) == 1)
    );
    Ok(())
}

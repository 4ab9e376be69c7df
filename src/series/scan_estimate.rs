//! What a scan will cost before it runs: per-checkpoint estimates that balance shards (and the
//! checkpoints of one shard), and the `--dry-run` table (weights to read, compute at a nominal
//! rate).

use anyhow::Result;

use crate::config::ModelConfig;
use crate::series::checkpoint_open::open_planned;
use crate::series::plan::{Plan, PlannedCheckpoint};
use crate::series::scan_options::ScanOptions;
use crate::series::shard::{partition, Shard};
use crate::series::unit_cache::UnitCache;

/// Nominal CPU throughput behind `--dry-run`'s time estimate (f32 matmuls on 2 cores).
const ESTIMATE_FLOPS_PER_SECOND: f64 = 5e10;

/// Nominal download rate behind the shard balance (only the ratio to compute matters).
const ESTIMATE_BYTES_PER_SECOND: f64 = 1e8;

/// Estimated seconds per planned checkpoint, for balancing shards: two forwards at 2 FLOPs per
/// parameter and token, plus reading the weights (f32) for all but random inits.
pub fn checkpoint_costs(plan: &Plan, options: &ScanOptions, config: &ModelConfig) -> Vec<f64> {
    let parameters = (config.num_hidden_layers
        * (4 * config.hidden_size * config.hidden_size
            + 3 * config.hidden_size * config.intermediate_size)) as f64;
    let tokens = (options.tokens + options.sink_sequences * options.seq_len) as f64;
    let compute = 2.0 * parameters * tokens / ESTIMATE_FLOPS_PER_SECOND;
    let download = 4.0 * parameters / ESTIMATE_BYTES_PER_SECOND;
    plan.checkpoints
        .iter()
        .map(|c| {
            if c.is_init() {
                compute
            } else {
                compute + download
            }
        })
        .collect()
}

/// `--dry-run`'s table: each checkpoint's weights to read, then the totals and a compute estimate.
pub fn dry_run(
    plan: &Plan,
    options: &ScanOptions,
    config: &ModelConfig,
    cache: &UnitCache,
) -> Result<String> {
    let mut total_bytes = 0u64;
    let mut lines = vec![format!(
        "{:<40} {:>8} {:>12}  source",
        "checkpoint", "step", "weights MB"
    )];
    for planned in &plan.checkpoints {
        let opened = open_planned(planned, plan, Some(config))?;
        let source = opened.source();
        let bytes: u64 = if planned.is_init() {
            0
        } else {
            source.tensor_infos().iter().map(|t| t.bytes).sum()
        };
        total_bytes += bytes;
        lines.push(format!(
            "{:<40} {:>8} {:>12.1}  {}",
            planned.label,
            planned.step.map_or("-".into(), |s| s.to_string()),
            bytes as f64 / 1e6,
            source.provenance().spec
        ));
    }
    // Two forwards (predict over all tokens, sinks over a subset) at 2 FLOPs per parameter and token.
    let parameters = (config.num_hidden_layers
        * (4 * config.hidden_size * config.hidden_size
            + 3 * config.hidden_size * config.intermediate_size)) as f64;
    let tokens = (options.tokens + options.sink_sequences * options.seq_len) as f64;
    let seconds =
        plan.checkpoints.len() as f64 * 2.0 * parameters * tokens / ESTIMATE_FLOPS_PER_SECOND;
    lines.push(format!(
        "{} checkpoints; {:.1} MB of weights to read (Hub files already cached are not fetched again); unit cache {}",
        plan.checkpoints.len(),
        total_bytes as f64 / 1e6,
        cache.dir().display()
    ));
    lines.push(format!(
        "estimated compute ≈ {:.0} s at a nominal {:.0} GFLOP/s (forwards only; downloads extra)",
        seconds,
        ESTIMATE_FLOPS_PER_SECOND / 1e9
    ));
    Ok(lines.join("\n"))
}

/// The checkpoints one run scans: all of them, or shard `index` of `count` balanced by cost.
pub fn checkpoints_of<'a>(
    plan: &'a Plan,
    options: &ScanOptions,
    config: &ModelConfig,
    shard: Option<Shard>,
) -> Vec<&'a PlannedCheckpoint> {
    match shard {
        Some(shard) => {
            let costs = checkpoint_costs(plan, options, config);
            partition(&costs, shard.count)[shard.index]
                .iter()
                .map(|&i| &plan.checkpoints[i])
                .collect()
        }
        None => plan.checkpoints.iter().collect(),
    }
}

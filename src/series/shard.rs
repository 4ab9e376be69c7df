//! Sharding a scan over several workers (a Slurm job array, a Kubernetes Indexed Job, a loop over
//! GPUs): which checkpoints shard `I` of `N` runs. Engine-neutral and deterministic, so every worker
//! computes the same partition from the same plan; checkpoints stay whole, so one download serves all
//! of a checkpoint's analyses; shards are balanced by the plan's cost estimate.

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Array-index variables an engine sets for `--shard auto/N`, in the order they are tried.
pub const INDEX_VARIABLES: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// Shard `index` of `count` (0-based index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `I/N` or `auto/N` (`I` from the first of [`INDEX_VARIABLES`] that is set).
    pub fn parse(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let (index, count) = text
            .split_once('/')
            .with_context(|| format!("--shard {text:?}: expected I/N or auto/N (e.g. 0/4)"))?;
        let count: usize = count
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--shard {text:?}: N must be a positive integer"))?;
        let index: usize = if index == "auto" {
            let (name, value) = INDEX_VARIABLES
                .iter()
                .find_map(|name| var(name).map(|v| (*name, v)))
                .with_context(|| {
                    format!(
                        "--shard {text:?}: auto needs one of {} set",
                        INDEX_VARIABLES.join(", ")
                    )
                })?;
            value
                .trim()
                .parse()
                .with_context(|| format!("--shard {text:?}: {name}={value:?} is not an index"))?
        } else {
            index
                .parse()
                .with_context(|| format!("--shard {text:?}: I must be an integer or auto"))?
        };
        if index >= count {
            bail!("--shard {text:?}: index {index} is not below the shard count {count}");
        }
        Ok(Shard { index, count })
    }
}

/// Splits items with estimated `costs` into `count` shards: longest-processing-time first (the
/// costliest unassigned item goes to the least loaded shard; ties to the lower index), then each
/// shard's items in their original order. Deterministic in `costs` alone.
pub fn partition(costs: &[f64], count: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    // Stable sort: equal costs keep plan order, so the result does not depend on the sort.
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]));
    let mut loads = vec![0.0f64; count];
    let mut shards = vec![Vec::new(); count];
    for item in order {
        let lightest = (0..count)
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
            .expect("count > 0");
        loads[lightest] += costs[item];
        shards[lightest].push(item);
    }
    for shard in &mut shards {
        shard.sort_unstable();
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_explicit_and_engine_indices() {
        assert_eq!(
            Shard::parse("2/4", &no_vars).unwrap(),
            Shard { index: 2, count: 4 }
        );
        let slurm = |name: &str| (name == "SLURM_ARRAY_TASK_ID").then(|| "3".to_string());
        assert_eq!(Shard::parse("auto/4", &slurm).unwrap().index, 3);
        let k8s = |name: &str| (name == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
        assert_eq!(Shard::parse("auto/2", &k8s).unwrap().index, 1);
        for (text, needle) in [
            ("4/4", "not below"),
            ("1/0", "positive"),
            ("x/4", "integer or auto"),
            ("3", "I/N"),
            ("auto/4", "SLURM_ARRAY_TASK_ID"),
        ] {
            let err = format!("{:#}", Shard::parse(text, &no_vars).unwrap_err());
            assert!(
                err.contains(needle) && err.contains("--shard"),
                "{text}: {err}"
            );
        }
    }

    /// A Pythia-style plan: 154 branches (step0 … step143000, downloads) plus 4 random inits
    /// (compute only), split 4, 7 and 16 ways.
    #[test]
    fn pythia_plan_partition_is_exact_deterministic_and_balanced() {
        let mut costs = vec![100.0 + 40.0; 154];
        costs.extend([100.0; 4]);
        for count in [4, 7, 16] {
            let shards = partition(&costs, count);
            assert_eq!(shards, partition(&costs, count), "deterministic");
            let mut seen: Vec<usize> = shards.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..costs.len()).collect::<Vec<_>>(),
                "every item exactly once"
            );
            let loads: Vec<f64> = shards
                .iter()
                .map(|s| s.iter().map(|&i| costs[i]).sum())
                .collect();
            let mean = costs.iter().sum::<f64>() / count as f64;
            let max = loads.iter().cloned().fold(0.0, f64::max);
            assert!(
                max <= 1.2 * mean,
                "{count} shards: max {max} vs mean {mean}"
            );
        }
    }

    #[test]
    fn uneven_costs_go_to_the_least_loaded_shard() {
        // LPT by hand: 7 → s0, 5 → s1, 4 → s1 (5 < 7), 3 → s0 (7 < 9), 1 → s1 (9 < 10).
        let shards = partition(&[3.0, 7.0, 1.0, 5.0, 4.0], 2);
        assert_eq!(shards, vec![vec![0, 1], vec![2, 3, 4]]);
    }
}

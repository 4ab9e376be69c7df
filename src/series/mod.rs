//! Checkpoint series: manifests, branch sampling, and the resolved plan a scan walks.

pub mod manifest;
pub mod plan;
pub mod sampling;
pub mod shard;
pub mod slurm;
pub mod units;

//! Checkpoint series: manifests, branch sampling, and the resolved plan a scan walks.

pub mod claim;
pub mod manifest;
pub mod plan;
pub mod sampling;
pub mod shard;
pub mod slurm;
pub mod unit_cache;
pub mod units;

//! Checkpoint series and the scan that walks them: manifests, branch sampling, the resolved plan,
//! per-checkpoint units through a shared cache, shards and Slurm.

pub mod checkpoint_open;
pub mod checkpoint_scan;
pub mod claim;
pub mod manifest;
pub mod plan;
pub mod sampling;
pub mod scan_estimate;
pub mod scan_options;
pub mod scan_progress;
pub mod scan_tables;
pub mod shard;
pub mod slurm;
pub mod slurm_submission;
pub mod unit_cache;
pub mod units;

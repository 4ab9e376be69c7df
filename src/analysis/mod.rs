//! Analyses: compose `stats` over captures and weights.

pub mod alignment;
pub mod alignment_pass;
pub mod bound_sink;
pub mod cross_layer;
pub mod finite_sample_check;
pub mod heldout_bootstrap;
pub mod init_check;
pub mod init_grid;
pub mod init_prediction;
pub mod inspection;
pub mod layer_check;
pub mod model_check;
pub mod mutation_check;
pub mod predictability;
pub mod predictability_pass;
pub mod sinks;
pub mod torch_threads;

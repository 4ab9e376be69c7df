//! Analyses: compose `stats` over captures and weights.

pub mod alignment;
pub mod bound_sink;
pub mod cross_layer;
pub mod finite_sample_check;
pub mod heldout_bootstrap;
pub mod init_check;
pub mod init_prediction;
pub mod layer_check;
pub mod mutation_check;
pub mod predictability;
pub mod sinks;

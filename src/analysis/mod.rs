//! Analyses: compose `stats` over captures and weights.

pub mod cross_layer;
pub mod predictability;

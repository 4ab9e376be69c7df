//! Analyses: compose `stats` over captures and weights.

pub mod alignment;
pub mod predictability;

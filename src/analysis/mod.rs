//! Analyses: compose `stats` over captures and weights.

pub mod predictability;

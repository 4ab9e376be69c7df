//! Inference on a resident model: KV-cached generation and the evaluation harness.

pub mod act_search;
pub mod generate;
pub mod harness;

//! Inference on a resident model: KV-cached generation and the evaluation harness.

pub mod generate;
pub mod harness;
pub mod kv_calibration;
pub mod reference_heads;

//! Inference on a resident model: KV-cached generation and the evaluation harness.

pub mod act_head_list;
pub mod act_search;
pub mod bits_per_byte;
pub mod generate;
pub mod gsm8k;
pub mod harness;
pub mod kv_calibration;
pub mod reference_heads;

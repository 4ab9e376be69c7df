//! Inference on a resident model: KV-cached generation, the evaluation harness, and the tasks and
//! modes `validate` runs.

pub mod accuracy_row;
pub mod act_head_list;
pub mod act_search;
pub mod bits_per_byte;
pub mod bpb_task;
pub mod compressed_kv;
pub mod eval_task;
pub mod generate;
pub mod gsm8k;
pub mod gsm8k_task;
pub mod harness;
pub mod kv_calibration;
pub mod kv_pareto;
pub mod kv_spec;
pub mod kv_variant;
pub mod mode;
pub mod mode_speed;
pub mod multiple_choice_task;
pub mod reference_heads;

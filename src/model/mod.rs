//! The transformer: config, building blocks, and the layer-streamed forward pass.

pub mod attention;
pub mod attention_window;
pub mod config;
pub mod forward;
pub mod gpt_neox_config;
pub mod head_map;
pub mod hidden_store;
pub mod kv_cache;
pub mod layer;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod presets;
pub mod resident;
pub mod rope;
pub mod rope_scaling;
pub mod weights;

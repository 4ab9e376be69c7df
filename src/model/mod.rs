//! The transformer: config, building blocks, and the layer-streamed forward pass.

pub mod attention;
pub mod attention_edit;
pub mod forward;
pub mod head_map;
pub mod hidden_store;
pub mod kv_cache;
pub mod kv_quant;
pub mod layer;
pub mod low_rank;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod resident;
pub mod rope;
pub mod row_map;
pub mod weights;

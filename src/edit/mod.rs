//! Attention edits that change what a model computes: ACT calibration of attention sinks. Each
//! implements `model::attention_edit::AttentionEdit`. (Reference-head reconstruction is not an edit:
//! it is a KV cache, in `infer::reference_heads`.)

pub mod act;

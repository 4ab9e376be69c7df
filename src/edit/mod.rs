//! Attention edits: changes to a model's attention applied at one seam inside `Attention::forward`
//! (ACT calibration of attention sinks; reference-head reconstruction of the KV cache).

pub mod act;

use tch::Tensor;

use crate::model::mask::Visibility;

/// An edit of attention probabilities, applied after the softmax and before the product with V.
pub trait AttentionEdit {
    /// Whether this layer's probabilities are edited (the forward then computes them eagerly).
    fn edits_layer(&self, layer: i64) -> bool;
    /// `probabilities`: `[batch, num_attention_heads, queries, keys]` (rows sum to 1 over the keys
    /// each query sees, as `visibility` says) → the edited probabilities, same shape and kind.
    fn edit_probabilities(
        &self,
        layer: i64,
        probabilities: &Tensor,
        visibility: &Visibility,
    ) -> Tensor;
}

//! The attention-edit seam: a change to attention probabilities that `Attention::forward` applies at
//! one point, after the softmax and before the product with V (ACT implements it, in `edit::act`).

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

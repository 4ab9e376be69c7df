//! Which keys each query may see when sequences are padded or a KV cache holds earlier positions.
//!
//! Sequences are left-padded to one length, so a sequence's real tokens end at the same column in
//! every row and decoding appends one column for all. Positions count real tokens only, as
//! transformers does (`position_ids = cumsum(attention_mask) − 1`), so padding does not shift RoPE.

use tch::{Device, Kind, Tensor};

/// Visibility of keys from the queries of one forward call on top of a (possibly empty) cache.
pub struct Visibility {
    /// Bool `[batch, 1, queries, keys]`: query `i` may attend to key `j`.
    pub visible: Tensor,
    /// Bool `[batch, queries]`: the query is a real token (padding rows take no part in statistics).
    pub query_valid: Tensor,
    /// Int64 `[batch, queries]`: the RoPE position of each query (real tokens before it).
    pub positions: Tensor,
    /// Int64 `[batch, keys]`: the RoPE position of each key, for sliding windows.
    pub key_positions: Tensor,
}

impl Visibility {
    /// `key_valid`: bool `[batch, keys]` over every position the cache will hold after this call
    /// (earlier ones and the new ones); the new queries are its last `queries` columns.
    ///
    /// A padding query sees only itself, so no softmax row is empty (an empty row is NaN).
    pub fn causal(key_valid: &Tensor, queries: i64) -> Self {
        let (batch, keys) = (key_valid.size()[0], key_valid.size()[1]);
        let device = key_valid.device();
        let past = keys - queries;
        let query_at = Tensor::arange_start(past, keys, (Kind::Int64, device)).view([queries, 1]);
        let key_at = Tensor::arange(keys, (Kind::Int64, device)).view([1, keys]);
        let causal = key_at.le_tensor(&query_at);
        let query_valid = key_valid.narrow(1, past, queries);
        let visible = causal
            .view([1, 1, queries, keys])
            .logical_and(&key_valid.view([batch, 1, 1, keys]))
            .logical_and(&query_valid.view([batch, 1, queries, 1]));
        let padding_self = key_at
            .eq_tensor(&query_at)
            .view([1, 1, queries, keys])
            .logical_and(&query_valid.logical_not().view([batch, 1, queries, 1]));
        let key_positions =
            (key_valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
        Visibility {
            visible: visible.logical_or(&padding_self),
            query_valid,
            positions: key_positions.narrow(1, past, queries),
            key_positions,
        }
    }

    /// Packed rows of a shared prefix followed by branches, in one call without a cache.
    /// `segments`: int64 `[batch, width]`, 0 for the prefix, `s ≥ 1` for the s-th branch, −1 for
    /// padding; `positions`: int64 `[batch, width]` RoPE positions. A query sees the prefix and
    /// its own branch up to itself, never another branch, so each branch attends exactly as it
    /// would as a sequence of its own; padding queries see only themselves.
    pub fn branched(segments: &Tensor, positions: &Tensor) -> Self {
        let (batch, width) = (segments.size()[0], segments.size()[1]);
        let device = segments.device();
        let column = Tensor::arange(width, (Kind::Int64, device));
        let causal = column
            .view([1, width])
            .le_tensor(&column.view([width, 1]))
            .view([1, 1, width, width]);
        let key_valid = segments.ge(0);
        let same_branch = segments
            .view([batch, 1, width, 1])
            .eq_tensor(&segments.view([batch, 1, 1, width]));
        let key_in_prefix = segments.eq(0).view([batch, 1, 1, width]);
        let visible = causal
            .logical_and(&key_valid.view([batch, 1, 1, width]))
            .logical_and(&key_valid.view([batch, 1, width, 1]))
            .logical_and(&same_branch.logical_or(&key_in_prefix));
        let padding_self = Tensor::eye(width, (Kind::Bool, device))
            .view([1, 1, width, width])
            .logical_and(&key_valid.logical_not().view([batch, 1, width, 1]));
        Visibility {
            visible: visible.logical_or(&padding_self),
            query_valid: key_valid,
            positions: positions.shallow_clone(),
            key_positions: positions.shallow_clone(),
        }
    }

    /// No padding: `batch` sequences of `keys` real tokens, the last `queries` of them new.
    pub fn unpadded(batch: i64, keys: i64, queries: i64, device: Device) -> Self {
        Self::causal(&Tensor::ones([batch, keys], (Kind::Bool, device)), queries)
    }

    /// The rows `index` (int64 `[n]`) of every tensor.
    pub fn rows(&self, index: &Tensor) -> Self {
        Visibility {
            visible: self.visible.index_select(0, index),
            query_valid: self.query_valid.index_select(0, index),
            positions: self.positions.index_select(0, index),
            key_positions: self.key_positions.index_select(0, index),
        }
    }

    /// `visible` restricted to keys fewer than `window` positions behind their query: transformers'
    /// sliding window (`key index > query index − window`). Counted in positions, which equal
    /// indices for the real tokens of a padded or cached row, so that packed branches keep the
    /// shared prefix they would see as sequences of their own. A query always sees itself.
    pub fn within_window(&self, window: i64) -> Tensor {
        let (batch, queries) = (self.positions.size()[0], self.positions.size()[1]);
        let keys = self.key_positions.size()[1];
        // `key > query − window`, compared by broadcasting: no int64 [queries, keys] difference
        // (128 MB per layer at 4096 tokens) is built.
        let oldest = (&self.positions - window).view([batch, 1, queries, 1]);
        let in_window = self
            .key_positions
            .view([batch, 1, 1, keys])
            .gt_tensor(&oldest);
        self.visible.logical_and(&in_window)
    }

    /// The visibility as an additive f32 mask: 0 where visible, −∞ elsewhere.
    pub fn additive(&self) -> Tensor {
        Tensor::zeros(self.visible.size(), (Kind::Float, self.visible.device()))
            .masked_fill(&self.visible.logical_not(), f64::NEG_INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let t = t.to_kind(Kind::Int64);
        (0..t.size()[0])
            .map(|i| Vec::<i64>::try_from(t.get(i)).unwrap())
            .collect()
    }

    /// transformers' window of 2 (`key index > query index − 2`) on a left-padded row and on a
    /// cached call, and on packed branches, where the window counts positions, not columns.
    #[test]
    fn a_window_keeps_the_last_keys_by_position() {
        let key_valid = Tensor::from_slice(&[0i64, 1, 1, 1, 1])
            .view([1, 5])
            .to_kind(Kind::Bool);
        let v = Visibility::causal(&key_valid, 5);
        assert_eq!(
            rows(&v.within_window(2).get(0).get(0)),
            [
                [1, 0, 0, 0, 0],
                [0, 1, 0, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 0, 1, 1, 0],
                [0, 0, 0, 1, 1]
            ]
        );
        // Two new queries on three cached keys.
        let cached = Visibility::unpadded(1, 5, 2, Device::Cpu);
        assert_eq!(
            rows(&cached.within_window(2).get(0).get(0)),
            [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
        );
        // Prefix of 2 (positions 0, 1), then branches at positions 2, 3 and 2: the second branch's
        // first token is 3 columns but 1 position after the prefix's last.
        let segments = Tensor::from_slice(&[0i64, 0, 1, 1, 2]).view([1, 5]);
        let positions = Tensor::from_slice(&[0i64, 1, 2, 3, 2]).view([1, 5]);
        let b = Visibility::branched(&segments, &positions);
        assert_eq!(
            rows(&b.within_window(2).get(0).get(0)),
            [
                [1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [0, 1, 1, 0, 0],
                [0, 0, 1, 1, 0],
                [0, 1, 0, 0, 1]
            ]
        );
    }

    #[test]
    fn left_padding_hides_pad_keys_and_counts_positions_from_the_first_real_token() {
        // Row 0: two pads then three tokens; row 1: five tokens.
        let key_valid = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1])
            .view([2, 5])
            .to_kind(Kind::Bool);
        let v = Visibility::causal(&key_valid, 5);
        assert_eq!(rows(&v.positions), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]);
        let row0 = v.visible.get(0).get(0);
        // Pad queries see themselves only; real queries see real keys up to themselves.
        assert_eq!(
            rows(&row0),
            [
                [1, 0, 0, 0, 0],
                [0, 1, 0, 0, 0],
                [0, 0, 1, 0, 0],
                [0, 0, 1, 1, 0],
                [0, 0, 1, 1, 1]
            ]
        );
        assert_eq!(rows(&v.query_valid), [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]);
    }

    #[test]
    fn branches_see_the_prefix_and_themselves_only() {
        // Prefix of two, branch 1 of two, branch 2 of one, one pad.
        let segments = Tensor::from_slice(&[0i64, 0, 1, 1, 2, -1]).view([1, 6]);
        let positions = Tensor::from_slice(&[0i64, 1, 2, 3, 2, 0]).view([1, 6]);
        let v = Visibility::branched(&segments, &positions);
        assert_eq!(
            rows(&v.visible.view([6, 6])),
            [
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 0, 0, 1, 0],
                [0, 0, 0, 0, 0, 1]
            ]
        );
        assert_eq!(rows(&v.query_valid), [[1, 1, 1, 1, 1, 0]]);
    }

    #[test]
    fn one_branch_is_the_right_padded_causal_mask() {
        let segments = Tensor::from_slice(&[0i64, 0, 1, 1, -1, -1, 0, 1, 1, 1, 1, 1]).view([2, 6]);
        let key_valid = segments.ge(0);
        let positions = (key_valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let branched = Visibility::branched(&segments, &positions);
        let causal = Visibility::causal(&key_valid, 6);
        assert!(branched.visible.equal(&causal.visible));
        assert!(branched.query_valid.equal(&causal.query_valid));
        assert!(branched.positions.equal(&causal.positions));
    }

    #[test]
    fn decode_step_sees_every_real_key() {
        let key_valid = Tensor::from_slice(&[0i64, 1, 1, 1])
            .view([1, 4])
            .to_kind(Kind::Bool);
        let v = Visibility::causal(&key_valid, 1);
        assert_eq!(rows(&v.visible.view([1, 4])), [[0, 1, 1, 1]]);
        assert_eq!(rows(&v.positions), [[2]]);
    }
}

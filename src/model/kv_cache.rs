//! The KV cache: per layer, the keys and values of every position seen so far. The generation loop
//! owns it and passes it `&mut` into each forward step.
//!
//! A plain layer stores every KV head (keys after QK-norm and RoPE). A compressed layer stores only
//! its reference heads (token-major) and attention reads the others through a [`HeadMap`]; with
//! pre-RoPE key maps it stores keys before RoPE plus each entry's position, and rebuilds and rotates
//! all keys at each read.

use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::model::head_map::{HeadMap, KeySpace};
use crate::model::rope::Rope;

/// A `[batch, heads, capacity, head_dim]` (or `[batch, capacity]`) buffer growing along the
/// position dimension; capacity doubles when full, so a decode step copies one position instead
/// of the whole history.
#[derive(Default)]
struct GrowingBuffer {
    data: Option<Tensor>,
    /// The position dimension (set by the first append).
    dim: usize,
}

impl GrowingBuffer {
    /// Writes `new` (positions along `dim`) after the first `len` positions; returns all `len + new`.
    fn append(&mut self, new: &Tensor, len: i64, dim: i64) -> Tensor {
        self.dim = dim as usize;
        let added = new.size()[dim as usize];
        let needed = len + added;
        let capacity = self.data.as_ref().map_or(0, |t| t.size()[dim as usize]);
        if needed > capacity {
            let mut size = new.size();
            size[dim as usize] = needed.max(2 * capacity).max(16);
            let buffer = Tensor::zeros(size, (new.kind(), new.device()));
            if let Some(old) = &self.data {
                buffer.narrow(dim, 0, len).copy_(&old.narrow(dim, 0, len));
            }
            self.data = Some(buffer);
        }
        let data = self.data.as_ref().expect("grown above");
        data.narrow(dim, len, added).copy_(new);
        data.narrow(dim, 0, needed)
    }

    /// Bytes of the first `len` positions.
    fn bytes(&self, len: i64) -> i64 {
        let dim = self.dim;
        self.data.as_ref().map_or(0, |t| {
            let size = t.size();
            let others: i64 = size
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != dim)
                .map(|(_, &n)| n)
                .product();
            others * len * element_bytes(t.kind())
        })
    }
}

/// What one attention call adds to a layer's cache: `[batch, kv_heads, new, head_dim]` tensors.
pub struct NewEntries<'a> {
    /// Keys after QK-norm, before RoPE.
    pub keys_unrotated: &'a Tensor,
    /// Keys after RoPE: what attention scores use.
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    /// Int64 `[batch, new]` RoPE positions of the new entries.
    pub positions: &'a Tensor,
}

/// What attention reads from a layer's cache for one kind (keys or values).
pub enum CachedHeads {
    /// Every KV head, `[batch, kv_heads, len, head_dim]`.
    Whole(Tensor),
    /// Only the stored heads, as rows `[batch, 1, len, stored·head_dim]`; attention reads each head
    /// through the map ([`HeadMap::read_maps`]) without building the targets.
    Stored { rows: Tensor, map: Rc<HeadMap> },
}

impl CachedHeads {
    /// Every head, `[batch, kv_heads, len, head_dim]` (stored rows read through the map).
    pub fn all_heads(&self) -> Tensor {
        match self {
            CachedHeads::Whole(t) => t.shallow_clone(),
            CachedHeads::Stored { rows, map } => {
                let (read, intercept) = map.read_maps(rows.device(), rows.kind());
                let heads = read.size()[0];
                rows.matmul(&read.unsqueeze(0)) + intercept.view([1, heads, 1, -1])
            }
        }
    }

    /// Appends the stored heads of `new` `[batch, heads, seq, head_dim]` to a token-major buffer
    /// `[batch, capacity, stored, head_dim]` and returns all `len + seq` rows.
    fn stored(buffer: &mut GrowingBuffer, map: &Rc<HeadMap>, new: &Tensor, len: i64) -> Self {
        let all = buffer.append(&map.stored_token_major(new), len, 1);
        let (b, n) = (all.size()[0], all.size()[1]);
        CachedHeads::Stored {
            // Stored and head_dim are the innermost dims of the buffer, so this is a view.
            rows: all.reshape([b, 1, n, -1]),
            map: Rc::clone(map),
        }
    }
}

/// One layer's cache. The first `len` positions of each buffer are filled.
#[derive(Default)]
pub struct LayerCache {
    keys: GrowingBuffer,
    values: GrowingBuffer,
    /// `[batch, capacity]` positions, kept only when keys are stored before RoPE.
    positions: GrowingBuffer,
    len: i64,
    key_map: Option<Rc<HeadMap>>,
    value_map: Option<Rc<HeadMap>>,
    key_space: Option<KeySpace>,
}

impl LayerCache {
    /// A layer that stores only the maps' stored heads (`None`: that kind is stored whole).
    pub fn compressed(
        key_map: Option<Rc<HeadMap>>,
        value_map: Option<Rc<HeadMap>>,
        key_space: KeySpace,
    ) -> Self {
        LayerCache {
            key_space: key_map.as_ref().map(|_| key_space),
            key_map,
            value_map,
            ..LayerCache::default()
        }
    }

    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the new entries and returns what attention reads for keys (after RoPE) and values.
    ///
    /// Keys mapped before RoPE are rebuilt here (RoPE must follow the map, so the map cannot be
    /// folded into the queries); keys mapped after RoPE and mapped values come back as the stored
    /// rows, which attention reads through the map without building the targets.
    pub fn append(&mut self, new: &NewEntries, rope: &Rope) -> (CachedHeads, CachedHeads) {
        let len = self.len;
        let keys = match (&self.key_map, self.key_space) {
            (Some(map), Some(KeySpace::PreRope)) => {
                let stored = self
                    .keys
                    .append(&map.stored_part(new.keys_unrotated), len, 2);
                let positions = self.positions.append(new.positions, len, 1);
                CachedHeads::Whole(rope.apply_at(&map.rebuild(&stored), &positions))
            }
            (Some(map), _) => CachedHeads::stored(&mut self.keys, map, new.keys, len),
            (None, _) => CachedHeads::Whole(self.keys.append(new.keys, len, 2)),
        };
        let values = match &self.value_map {
            Some(map) => CachedHeads::stored(&mut self.values, map, new.values, len),
            None => CachedHeads::Whole(self.values.append(new.values, len, 2)),
        };
        self.len += new.keys.size()[2];
        (keys, values)
    }

    /// Bytes of the filled positions (stored keys, values and positions).
    pub fn bytes(&self) -> i64 {
        self.keys.bytes(self.len) + self.values.bytes(self.len) + self.positions.bytes(self.len)
    }

    /// Bytes of this layer's map parameters (shared by every sequence and position).
    pub fn map_bytes(&self) -> i64 {
        [&self.key_map, &self.value_map]
            .iter()
            .filter_map(|m| m.as_ref().map(|m| m.bytes()))
            .sum()
    }
}

/// The whole model's cache: one [`LayerCache`] per decoder layer.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: i64) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
        }
    }

    /// Positions held (the same in every layer once a step has finished).
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by all layers' filled positions.
    pub fn bytes(&self) -> i64 {
        self.layers.iter().map(LayerCache::bytes).sum()
    }

    /// Bytes of the reconstruction maps (zero for a plain cache).
    pub fn map_bytes(&self) -> i64 {
        self.layers.iter().map(LayerCache::map_bytes).sum()
    }
}

pub fn element_bytes(kind: Kind) -> i64 {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rope_scaling::RopeScaling;
    use tch::Device;

    /// Appends `keys`/`values` `[2, 3, 40, 4]` in uneven steps; checks every read against `expect`.
    fn append_in_steps(
        cache: &mut LayerCache,
        keys: &Tensor,
        values: &Tensor,
        rope: &Rope,
        mut check: impl FnMut(i64, &Tensor, &Tensor),
    ) {
        let mut at = 0;
        for step in [10, 1, 1, 7, 21] {
            let positions = Tensor::arange_start(at, at + step, (Kind::Int64, Device::Cpu))
                .unsqueeze(0)
                .repeat([2, 1]);
            let unrotated = keys.narrow(2, at, step);
            let (k, v) = cache.append(
                &NewEntries {
                    keys_unrotated: &unrotated,
                    keys: &rope.apply_at(&unrotated, &positions),
                    values: &values.narrow(2, at, step),
                    positions: &positions,
                },
                rope,
            );
            at += step;
            check(at, &k.all_heads(), &v.all_heads());
        }
    }

    #[test]
    fn appended_positions_read_back_in_order_across_growth() {
        let mut cache = LayerCache::default();
        let opts = (Kind::Float, Device::Cpu);
        let rope = Rope::new(4, 10_000.0, &RopeScaling::Default, 64, Device::Cpu);
        let all_k = Tensor::randn([2, 3, 40, 4], opts);
        let all_v = Tensor::randn([2, 3, 40, 4], opts);
        let rotated = rope.apply(&all_k, 0);
        append_in_steps(&mut cache, &all_k, &all_v, &rope, |at, k, v| {
            assert!(k.equal(&rotated.narrow(2, 0, at)));
            assert!(v.equal(&all_v.narrow(2, 0, at)));
        });
        assert_eq!(cache.len(), 40);
        assert_eq!(cache.bytes(), 2 * (2 * 3 * 40 * 4 * 4));
        assert_eq!(cache.map_bytes(), 0);
    }

    /// Head 1 equals head 0 in keys and values; a map that rebuilds head 1 as a copy of head 0
    /// reads back exactly the plain cache's tensors while storing two heads of three.
    #[test]
    fn a_compressed_layer_with_copy_maps_reads_back_the_plain_tensors() {
        let opts = (Kind::Float, Device::Cpu);
        let rope = Rope::new(4, 10_000.0, &RopeScaling::Default, 64, Device::Cpu);
        let with_copy = |t: Tensor| {
            let h0 = t.narrow(1, 0, 1);
            Tensor::cat(&[&h0, &h0, &t.narrow(1, 2, 1)], 1)
        };
        let all_k = with_copy(Tensor::randn([2, 3, 40, 4], opts));
        let all_v = with_copy(Tensor::randn([2, 3, 40, 4], opts));
        let rotated = rope.apply(&all_k, 0);
        let copy_map = || {
            let coefficients = Tensor::cat(&[Tensor::eye(4, opts), Tensor::zeros([4, 4], opts)], 0);
            Rc::new(HeadMap::new(
                3,
                4,
                vec![0, 2],
                vec![1],
                coefficients,
                Tensor::zeros([4], opts),
            ))
        };
        for space in [KeySpace::PreRope, KeySpace::PostRope] {
            let mut cache = LayerCache::compressed(Some(copy_map()), Some(copy_map()), space);
            append_in_steps(&mut cache, &all_k, &all_v, &rope, |at, k, v| {
                let err = f64::try_from((k - rotated.narrow(2, 0, at)).abs().max()).unwrap();
                assert!(err < 1e-6, "{space:?}: keys differ by {err}");
                let err = f64::try_from((v - all_v.narrow(2, 0, at)).abs().max()).unwrap();
                assert!(err < 1e-6, "{space:?}: values differ by {err}");
            });
            let positions = if space == KeySpace::PreRope {
                2 * 40 * 8
            } else {
                0
            };
            assert_eq!(cache.bytes(), 2 * (2 * 2 * 40 * 4 * 4) + positions);
            assert_eq!(cache.map_bytes(), 2 * (8 * 4 + 4) * 4);
        }
    }
}

//! The KV cache: per layer, the keys and values of every position seen so far. The generation loop
//! owns it and passes it `&mut` into each forward step.
//!
//! Each layer follows a [`LayerLayout`]. A plain layer stores every KV head (keys after QK-norm and
//! RoPE). A layer whose kind goes through a [`RowMap`] stores one narrower row per token (reference
//! heads, or a low-rank projection) and attention reads every head through the map; keys mapped
//! before RoPE are stored before RoPE with each entry's position, and rebuilt and rotated at each
//! read. A quantized kind stores integer codes ([`QuantBuffer`]) of whatever it would store
//! otherwise. An evicting layer keeps only the first `sinks` and the last `window` positions.

use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::model::head_map::KeySpace;
use crate::model::kv_quant::{QuantBuffer, QuantFormat};
use crate::model::rope::Rope;
use crate::model::row_map::{read_all_heads, RowMap};

/// A buffer growing along one dimension (positions, or groups of them); capacity doubles when
/// full, so a decode step copies one position instead of the whole history.
#[derive(Default)]
pub struct GrowingBuffer {
    data: Option<Tensor>,
    /// The growing dimension (set by the first append).
    dim: usize,
}

impl GrowingBuffer {
    /// Writes `new` (entries along `dim`) after the first `len` entries; returns all `len + new`.
    pub fn append(&mut self, new: &Tensor, len: i64, dim: i64) -> Tensor {
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

    /// The first `len` entries (`None` before the first append).
    pub fn filled(&self, len: i64) -> Option<Tensor> {
        self.data
            .as_ref()
            .map(|t| t.narrow(self.dim as i64, 0, len))
    }

    /// Keeps only the entries `index` (int64, ascending) of the first `len`, in a new tensor: views
    /// handed out before stay valid.
    fn keep(&mut self, index: &Tensor, len: i64) {
        if let Some(data) = self.filled(len) {
            self.data = Some(data.index_select(self.dim as i64, index));
        }
    }

    /// Bytes of the first `len` entries.
    pub fn bytes(&self, len: i64) -> i64 {
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
    /// Bool `[batch, new]`: the entry is a real token (`None`: all are).
    pub valid: Option<&'a Tensor>,
}

/// What attention reads from a layer's cache for one kind (keys or values).
pub enum CachedHeads {
    /// Every KV head, `[batch, kv_heads, len, head_dim]`.
    Whole(Tensor),
    /// One row per position, `[batch, 1, len, width]`; attention reads each head through the map
    /// ([`RowMap::read_maps`]) without building it.
    Stored { rows: Tensor, map: Rc<dyn RowMap> },
}

impl CachedHeads {
    /// Every head, `[batch, kv_heads, len, head_dim]` (stored rows read through the map).
    pub fn all_heads(&self) -> Tensor {
        match self {
            CachedHeads::Whole(t) => t.shallow_clone(),
            CachedHeads::Stored { rows, map } => read_all_heads(map.as_ref(), &rows.squeeze_dim(1)),
        }
    }
}

/// Sink + window token eviction (StreamingLLM): a query sees the first `sinks` positions, the
/// `window` positions before it and itself; the cache holds at most `sinks + window` positions
/// between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Eviction {
    pub sinks: i64,
    pub window: i64,
}

impl Eviction {
    /// Bool `[batch, 1, queries, held]`: whether a query at `positions` `[batch, queries]` may
    /// read a held key at `key_positions` `[batch, held]` under eviction.
    pub fn readable(&self, positions: &Tensor, key_positions: &Tensor) -> Tensor {
        let (batch, queries) = (positions.size()[0], positions.size()[1]);
        let held = key_positions.size()[1];
        let keys = key_positions.view([batch, 1, 1, held]);
        let oldest = (positions - self.window).view([batch, 1, queries, 1]);
        keys.lt(self.sinks).logical_or(&keys.ge_tensor(&oldest))
    }
}

/// How one kind (keys or values) of a layer is stored.
#[derive(Clone, Debug, Default)]
pub struct KindLayout {
    /// `None`: every head is stored.
    pub map: Option<Rc<dyn RowMap>>,
    /// `None`: stored in the compute kind.
    pub quant: Option<QuantFormat>,
}

/// How one layer's cache stores its keys and values.
#[derive(Clone, Debug)]
pub struct LayerLayout {
    pub keys: KindLayout,
    pub values: KindLayout,
    /// Where mapped keys are stored and rebuilt (quantized unmapped keys are stored after RoPE).
    pub key_space: KeySpace,
    pub eviction: Option<Eviction>,
}

impl LayerLayout {
    /// Every head of every position, in the compute kind.
    pub fn plain() -> Self {
        LayerLayout {
            keys: KindLayout::default(),
            values: KindLayout::default(),
            key_space: KeySpace::PostRope,
            eviction: None,
        }
    }
}

/// One kind's stored entries.
struct KindCache {
    layout: KindLayout,
    plain: GrowingBuffer,
    quantized: Option<QuantBuffer>,
}

impl KindCache {
    fn new(layout: KindLayout) -> Self {
        KindCache {
            quantized: layout.quant.map(QuantBuffer::new),
            layout,
            plain: GrowingBuffer::default(),
        }
    }

    /// Appends `new` `[batch, heads, seq, head_dim]` after `len` held entries; returns every
    /// held entry: all heads `[batch, heads, len', head_dim]` (no map) or rows `[batch, len',
    /// width]` (mapped).
    fn append(&mut self, new: &Tensor, len: i64) -> Tensor {
        let (b, heads, s, d) = new.size4().expect("per-head tensors are 4-D");
        let rows = match &self.layout.map {
            Some(map) => map.encode(new),
            None if self.quantized.is_some() => new.transpose(1, 2).reshape([b, s, heads * d]),
            None => return self.plain.append(new, len, 2),
        };
        let all = match &mut self.quantized {
            Some(buffer) => buffer.append(&rows),
            None => self.plain.append(&rows, len, 1),
        };
        match &self.layout.map {
            Some(_) => all,
            None => all.view([b, -1, heads, d]).transpose(1, 2),
        }
    }

    fn bytes(&self, len: i64) -> i64 {
        match &self.quantized {
            Some(buffer) => buffer.bytes(),
            None => self.plain.bytes(len),
        }
    }
}

/// One layer's cache.
pub struct LayerCache {
    keys: KindCache,
    values: KindCache,
    /// `[batch, capacity]` positions, kept only when keys are rebuilt before RoPE.
    positions: GrowingBuffer,
    key_space: KeySpace,
    eviction: Option<Eviction>,
    /// Entries held per sequence.
    held: i64,
    /// Positions appended so far (what attention's masks and RoPE count); equals `held` unless
    /// the layer evicts.
    seen: i64,
    /// Under eviction: the column (`0..seen`) of each held entry, and whether it is some row's sink.
    columns: Vec<i64>,
    sinks: Vec<bool>,
}

impl Default for LayerCache {
    fn default() -> Self {
        LayerCache::new(LayerLayout::plain())
    }
}

/// What attention reads from a layer's cache after an append.
pub struct CachedKv {
    pub keys: CachedHeads,
    pub values: CachedHeads,
    /// Under eviction: the column of each held entry among all `0..seen` (int64 `[held]`), and
    /// the eviction that decides which of them each query reads.
    pub held_columns: Option<(Tensor, Eviction)>,
}

impl LayerCache {
    pub fn new(layout: LayerLayout) -> Self {
        assert!(
            layout.eviction.is_none()
                || (layout.keys.map.is_none()
                    && layout.values.map.is_none()
                    && layout.keys.quant.is_none()
                    && layout.values.quant.is_none()),
            "eviction works on plain entries"
        );
        LayerCache {
            keys: KindCache::new(layout.keys),
            values: KindCache::new(layout.values),
            positions: GrowingBuffer::default(),
            key_space: layout.key_space,
            eviction: layout.eviction,
            held: 0,
            seen: 0,
            columns: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// Positions seen (held or evicted): where the next call's positions start.
    pub fn len(&self) -> i64 {
        self.seen
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Whether some positions may be dropped, so attention needs explicit visibility.
    pub fn evicts(&self) -> bool {
        self.eviction.is_some()
    }

    /// Appends the new entries and returns what attention reads for keys (after RoPE) and values.
    ///
    /// Keys mapped before RoPE are rebuilt here (RoPE must follow the map, so the map cannot be
    /// folded into the queries); keys mapped after RoPE and mapped values come back as the stored
    /// rows, which attention reads through the map without building the heads.
    pub fn append(&mut self, new: &NewEntries, rope: &Rope) -> CachedKv {
        let len = self.held;
        let keys = match (self.keys.layout.map.clone(), self.key_space) {
            (Some(map), KeySpace::PreRope) => {
                let rows = self.keys.append(new.keys_unrotated, len);
                let positions = self.positions.append(new.positions, len, 1);
                CachedHeads::Whole(rope.apply_at(&read_all_heads(map.as_ref(), &rows), &positions))
            }
            (Some(map), KeySpace::PostRope) => CachedHeads::Stored {
                rows: self.keys.append(new.keys, len).unsqueeze(1),
                map,
            },
            (None, _) => CachedHeads::Whole(self.keys.append(new.keys, len)),
        };
        let values = match self.values.layout.map.clone() {
            Some(map) => CachedHeads::Stored {
                rows: self.values.append(new.values, len).unsqueeze(1),
                map,
            },
            None => CachedHeads::Whole(self.values.append(new.values, len)),
        };
        let added = new.keys.size()[2];
        self.held += added;
        self.seen += added;
        let held_columns = self.eviction.map(|eviction| {
            let columns = self.track_columns(new, added, eviction);
            (columns.to_device(new.keys.device()), eviction)
        });
        CachedKv {
            keys,
            values,
            held_columns,
        }
    }

    /// Records the new entries' columns and sink flags; returns the held columns (this call's
    /// reads) and then drops what no later query reads.
    fn track_columns(&mut self, new: &NewEntries, added: i64, eviction: Eviction) -> Tensor {
        let sink = new.positions.lt(eviction.sinks);
        let sink = match new.valid {
            Some(valid) => sink.logical_and(valid),
            None => sink,
        };
        let sink = Vec::<bool>::try_from(sink.any_dim(0, false).to_device(tch::Device::Cpu))
            .expect("a bool vector");
        self.columns.extend(self.seen - added..self.seen);
        self.sinks.extend(sink);
        let read = Tensor::from_slice(&self.columns);
        let oldest_kept = self.seen - eviction.window;
        let kept: Vec<i64> = (0..self.columns.len())
            .filter(|&i| self.sinks[i] || self.columns[i] >= oldest_kept)
            .map(|i| i as i64)
            .collect();
        if (kept.len() as i64) < self.held {
            let index = Tensor::from_slice(&kept).to_device(new.keys.device());
            self.keys.plain.keep(&index, self.held);
            self.values.plain.keep(&index, self.held);
            self.columns = kept.iter().map(|&i| self.columns[i as usize]).collect();
            self.sinks = kept.iter().map(|&i| self.sinks[i as usize]).collect();
            self.held = kept.len() as i64;
        }
        read
    }

    /// Bytes of the held entries (stored keys, values, their codes and scales, and positions).
    pub fn bytes(&self) -> i64 {
        self.keys.bytes(self.held) + self.values.bytes(self.held) + self.positions.bytes(self.held)
    }

    /// Bytes of this layer's map parameters (shared by every sequence and position).
    pub fn map_bytes(&self) -> i64 {
        [&self.keys.layout.map, &self.values.layout.map]
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

    /// An empty cache laid out layer by layer.
    pub fn with_layout(layouts: &[LayerLayout]) -> Self {
        KvCache {
            layers: layouts.iter().cloned().map(LayerCache::new).collect(),
        }
    }

    /// Positions seen (the same in every layer once a step has finished).
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by all layers' entries.
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
    use crate::model::head_map::HeadMap;
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
            let read = cache.append(
                &NewEntries {
                    keys_unrotated: &unrotated,
                    keys: &rope.apply_at(&unrotated, &positions),
                    values: &values.narrow(2, at, step),
                    positions: &positions,
                    valid: None,
                },
                rope,
            );
            at += step;
            check(at, &read.keys.all_heads(), &read.values.all_heads());
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
            let mapped = || KindLayout {
                map: Some(copy_map() as Rc<dyn RowMap>),
                quant: None,
            };
            let mut cache = LayerCache::new(LayerLayout {
                keys: mapped(),
                values: mapped(),
                key_space: space,
                eviction: None,
            });
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

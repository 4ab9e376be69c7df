//! The KV cache: per layer, the keys (after QK-norm and RoPE) and values of every position seen so
//! far. The generation loop owns it and passes it `&mut` into each forward step.

use tch::{Kind, Tensor};

/// One layer's cached keys and values, `[batch, num_key_value_heads, capacity, head_dim]`, of which
/// the first `len` positions are filled. Capacity doubles when full, so a decode step copies one
/// position instead of the whole history.
#[derive(Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: i64,
}

impl LayerCache {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `keys`/`values` `[batch, kv_heads, new, head_dim]` and returns views of all positions.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
        let new = keys.size()[2];
        let needed = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |k| k.size()[2]);
        if needed > capacity {
            let grown = needed.max(2 * capacity).max(16);
            let grow = |old: &Option<Tensor>, like: &Tensor| {
                let mut size = like.size();
                size[2] = grown;
                let buffer = Tensor::zeros(size, (like.kind(), like.device()));
                if let Some(old) = old {
                    buffer
                        .narrow(2, 0, self.len)
                        .copy_(&old.narrow(2, 0, self.len));
                }
                buffer
            };
            self.keys = Some(grow(&self.keys, keys));
            self.values = Some(grow(&self.values, values));
        }
        let (k, v) = (
            self.keys.as_ref().expect("grown"),
            self.values.as_ref().expect("grown"),
        );
        k.narrow(2, self.len, new).copy_(keys);
        v.narrow(2, self.len, new).copy_(values);
        self.len = needed;
        (k.narrow(2, 0, needed), v.narrow(2, 0, needed))
    }

    /// Bytes of the filled positions (keys and values).
    pub fn bytes(&self) -> i64 {
        let filled = |t: &Option<Tensor>| {
            t.as_ref().map_or(0, |t| {
                let s = t.size();
                s[0] * s[1] * self.len * s[3] * element_bytes(t.kind())
            })
        };
        filled(&self.keys) + filled(&self.values)
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
    use tch::Device;

    #[test]
    fn appended_positions_read_back_in_order_across_growth() {
        let mut cache = LayerCache::default();
        let opts = (Kind::Float, Device::Cpu);
        let all_k = Tensor::randn([2, 3, 40, 4], opts);
        let all_v = Tensor::randn([2, 3, 40, 4], opts);
        let mut at = 0;
        for step in [10, 1, 1, 7, 21] {
            let (k, v) = cache.append(&all_k.narrow(2, at, step), &all_v.narrow(2, at, step));
            at += step;
            assert!(k.equal(&all_k.narrow(2, 0, at)));
            assert!(v.equal(&all_v.narrow(2, 0, at)));
        }
        assert_eq!(cache.len(), 40);
        assert_eq!(cache.bytes(), 2 * (2 * 3 * 40 * 4 * 4));
    }
}

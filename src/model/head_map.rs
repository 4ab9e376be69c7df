//! A linear map that rebuilds one layer's target KV heads from the heads the cache stores (the
//! compressed KV cache: only reference heads are cached; targets are recomputed at attention time).

use tch::{Device, Kind, Tensor};

use crate::model::row_map::{ConvertedMaps, RowMap};

/// Whether a key map works on keys before RoPE (after QK-norm) or after it. Values have no RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySpace {
    /// Keys are cached and rebuilt before RoPE; RoPE is applied to every key after the rebuild
    /// (the map then never has to learn a position-dependent rotation).
    PreRope,
    /// Keys are cached and rebuilt after RoPE, as the linear-predictability paper's code does.
    PostRope,
}

/// One layer's map for one kind (K or V): `heads` KV heads of `head_dim`, of which `stored` are
/// cached and the rest rebuilt as `[stored vectors] · coefficients + intercept`.
#[derive(Debug)]
pub struct HeadMap {
    pub heads: usize,
    pub head_dim: usize,
    /// Cached heads, ascending.
    pub stored: Vec<usize>,
    /// Rebuilt heads, ascending.
    pub targets: Vec<usize>,
    /// f32 `[stored·head_dim, targets·head_dim]`: target `t`'s columns read only its references'
    /// rows (zero elsewhere).
    pub coefficients: Tensor,
    /// f32 `[targets·head_dim]`.
    pub intercept: Tensor,
    /// `stored` as an index tensor, built once (every decode step selects with it).
    stored_index: Tensor,
    /// f32 `[heads, stored·head_dim, head_dim]`: head `h` = stored rows · `read[h]` +
    /// `read_intercept[h]` (a block of the identity for a stored head, its coefficient columns for a
    /// target), so attention can read every head straight from the stored rows.
    read: Tensor,
    /// f32 `[heads, head_dim]`: zero for stored heads, the intercept for targets.
    read_intercept: Tensor,
    converted: ConvertedMaps,
}

impl HeadMap {
    /// `coefficients`/`intercept` as [`HeadMap::coefficients`] describes; `stored` and `targets`
    /// must partition `0..heads`.
    pub fn new(
        heads: usize,
        head_dim: usize,
        stored: Vec<usize>,
        targets: Vec<usize>,
        coefficients: Tensor,
        intercept: Tensor,
    ) -> Self {
        let mut all: Vec<usize> = stored.iter().chain(&targets).copied().collect();
        all.sort_unstable();
        assert!(
            all == (0..heads).collect::<Vec<_>>(),
            "stored {stored:?} and targets {targets:?} must partition 0..{heads}"
        );
        let d = head_dim as i64;
        assert_eq!(
            coefficients.size(),
            [stored.len() as i64 * d, targets.len() as i64 * d]
        );
        let order: Vec<i64> = (0..heads)
            .map(|h| {
                stored
                    .iter()
                    .chain(&targets)
                    .position(|&x| x == h)
                    .expect("partition checked above") as i64
            })
            .collect();
        let stored_index: Vec<i64> = stored.iter().map(|&h| h as i64).collect();
        let stored_index = Tensor::from_slice(&stored_index);
        let coefficients = coefficients.to_kind(Kind::Float);
        let intercept = intercept.to_kind(Kind::Float);
        let rows = stored.len() as i64 * d;
        // Columns of [identity (stored heads) | coefficients (targets)], reordered to head order.
        let columns = Tensor::cat(
            &[
                Tensor::eye(rows, (Kind::Float, coefficients.device())),
                coefficients.shallow_clone(),
            ],
            1,
        )
        .view([rows, heads as i64, d])
        .index_select(1, &Tensor::from_slice(&order))
        .permute([1, 0, 2])
        .contiguous();
        let read_intercept = Tensor::cat(
            &[
                Tensor::zeros([rows], (Kind::Float, intercept.device())),
                intercept.shallow_clone(),
            ],
            0,
        )
        .view([heads as i64, d])
        .index_select(0, &Tensor::from_slice(&order));
        HeadMap {
            heads,
            head_dim,
            stored,
            targets,
            coefficients,
            intercept,
            stored_index,
            read: columns,
            read_intercept,
            converted: ConvertedMaps::default(),
        }
    }

    /// The stored heads of `all` `[batch, heads, seq, head_dim]` → `[batch, stored, seq, head_dim]`.
    pub fn stored_part(&self, all: &Tensor) -> Tensor {
        all.index_select(1, &self.stored_index.to_device(all.device()))
    }
}

/// The row is the stored heads, in order; a stored head reads its own block, a target its
/// coefficient columns.
impl RowMap for HeadMap {
    fn width(&self) -> i64 {
        (self.stored.len() * self.head_dim) as i64
    }

    fn encode(&self, all: &Tensor) -> Tensor {
        let (b, _, s, _) = all.size4().expect("per-head tensors are 4-D");
        self.stored_part(all)
            .permute([0, 2, 1, 3])
            .reshape([b, s, self.width()])
    }

    /// Fitted in f64 and kept in f32, the maps are read in the cache's compute kind, so bf16
    /// inference reads them rounded like its own weights.
    fn read_maps(&self, device: Device, kind: Kind) -> (Tensor, Tensor) {
        self.converted
            .get(&self.read, &self.read_intercept, device, kind)
    }

    fn bytes(&self) -> i64 {
        (self.coefficients.numel() + self.intercept.numel()) as i64 * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::row_map::read_all_heads;

    #[test]
    fn rebuild_keeps_stored_heads_and_applies_the_map_to_targets() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let (heads, d) = (4, 3);
        let all = Tensor::randn([2, heads as i64, 5, d as i64], opts);
        // Stored 0 and 2; target 1 = 2·head0 + 1, target 3 = head2 − head0 (built by hand).
        let eye = Tensor::eye(d as i64, opts);
        let zero = Tensor::zeros([d as i64, d as i64], opts);
        let coefficients = Tensor::cat(
            &[
                Tensor::cat(&[&eye * 2.0, -&eye], 1),
                Tensor::cat(&[zero, eye.shallow_clone()], 1),
            ],
            0,
        );
        let intercept = Tensor::cat(
            &[
                Tensor::ones([d as i64], opts),
                Tensor::zeros([d as i64], opts),
            ],
            0,
        );
        let map = HeadMap::new(heads, d, vec![0, 2], vec![1, 3], coefficients, intercept);
        let rebuilt = read_all_heads(&map, &map.encode(&all));
        let h = |t: &Tensor, i: i64| t.narrow(1, i, 1);
        assert!(h(&rebuilt, 0).equal(&h(&all, 0)));
        assert!(h(&rebuilt, 2).equal(&h(&all, 2)));
        let expected1 = h(&all, 0) * 2.0 + 1.0;
        let expected3 = h(&all, 2) - h(&all, 0);
        let err = |a: Tensor, b: Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(err(h(&rebuilt, 1), expected1) < 1e-6);
        assert!(err(h(&rebuilt, 3), expected3) < 1e-6);
        assert_eq!(map.bytes(), (6 * 6 + 6) * 4);
    }
}

//! A linear code for one layer's KV heads: the cache stores a row per token, narrower than all heads,
//! and attention reads every head from it through a linear map. Reference heads ([`HeadMap`]: the
//! row is the stored heads) and low-rank projections ([`LowRankMap`]: the row is a projection of all
//! heads) are the two codes.
//!
//! [`HeadMap`]: crate::model::head_map::HeadMap
//! [`LowRankMap`]: crate::model::low_rank::LowRankMap

use tch::{Device, Kind, Tensor};

pub trait RowMap: std::fmt::Debug {
    /// Values per stored row.
    fn width(&self) -> i64;

    /// All heads `[batch, heads, seq, head_dim]` → the stored rows `[batch, seq, width]`.
    fn encode(&self, all: &Tensor) -> Tensor;

    /// `[heads, width, head_dim]` and `[heads, head_dim]` on `device` in `kind`: head `h` =
    /// row · `read[h]` + `intercept[h]`.
    fn read_maps(&self, device: Device, kind: Kind) -> (Tensor, Tensor);

    /// Bytes of the map's parameters as held (shared by every sequence and position).
    fn bytes(&self) -> i64;
}

/// Every head `[batch, heads, len, head_dim]` from rows `[batch, len, width]`, in the rows' kind.
pub fn read_all_heads(map: &dyn RowMap, rows: &Tensor) -> Tensor {
    let (read, intercept) = map.read_maps(rows.device(), rows.kind());
    let heads = read.size()[0];
    rows.unsqueeze(1).matmul(&read.unsqueeze(0)) + intercept.view([1, heads, 1, -1])
}

/// Converted read maps, kept as last asked for: every decode step asks, and on a GPU or in bf16
/// converting each time would copy.
#[derive(Debug, Default)]
pub struct ConvertedMaps(std::cell::RefCell<Option<(Device, Kind, Tensor, Tensor)>>);

impl ConvertedMaps {
    /// `read` and `intercept` (f32, CPU) on `device` in `kind`, converted once per (device, kind).
    pub fn get(
        &self,
        read: &Tensor,
        intercept: &Tensor,
        device: Device,
        kind: Kind,
    ) -> (Tensor, Tensor) {
        let mut converted = self.0.borrow_mut();
        match converted.as_ref() {
            Some((d, k, r, i)) if *d == device && *k == kind => {
                (r.shallow_clone(), i.shallow_clone())
            }
            _ => {
                let r = read.to_device(device).to_kind(kind);
                let i = intercept.to_device(device).to_kind(kind);
                *converted = Some((device, kind, r.shallow_clone(), i.shallow_clone()));
                (r, i)
            }
        }
    }
}

//! Where the residual stream of every token batch waits between layers: in memory (on the compute
//! device) while it fits the budget, else in a memory-mapped scratch file on disk.

use std::path::Path;

use anyhow::{Context, Result};
use memmap2::MmapMut;
use tch::{Device, Kind, Tensor};

/// Hidden states `[batch, seq, hidden]`, one per token batch.
pub struct HiddenStore {
    // Field order matters: the tensors view the mapping, so they must drop before it.
    slots: Vec<Tensor>,
    device: Device,
    _mapping: Option<(MmapMut, tempfile::NamedTempFile)>,
}

impl HiddenStore {
    /// Keeps `initial` as is when it fits `budget_bytes`; otherwise copies it into a scratch file
    /// in `spill_dir` (the OS pages it in and out as layers pass over it).
    pub fn new(
        initial: Vec<Tensor>,
        device: Device,
        budget_bytes: u64,
        spill_dir: &Path,
    ) -> Result<Self> {
        let bytes: u64 = initial.iter().map(byte_size).sum();
        if bytes <= budget_bytes {
            return Ok(HiddenStore {
                slots: initial,
                device,
                _mapping: None,
            });
        }
        let file = tempfile::Builder::new()
            .prefix("ckpt-scan-hidden-")
            .tempfile_in(spill_dir)
            .with_context(|| {
                format!(
                    "{}: cannot create the hidden-state spill file",
                    spill_dir.display()
                )
            })?;
        file.as_file().set_len(bytes).with_context(|| {
            format!(
                "{}: cannot size the spill file to {bytes} bytes",
                file.path().display()
            )
        })?;
        // SAFETY: the file is ours alone (a fresh temp file), and every tensor viewing the mapping is
        // dropped before it (field order).
        let mut mmap = unsafe { MmapMut::map_mut(file.as_file()) }
            .with_context(|| format!("{}: cannot map the spill file", file.path().display()))?;
        let mut offset = 0usize;
        let mut slots = Vec::with_capacity(initial.len());
        for t in &initial {
            let size: Vec<i64> = t.size();
            let len = byte_size(t) as usize;
            // SAFETY: [offset, offset+len) lies inside the mapping, is f32-aligned (page-aligned
            // base, every slot a multiple of 4 bytes) and is viewed by this one tensor only.
            let mut slot = unsafe {
                Tensor::from_blob(
                    mmap.as_mut_ptr().add(offset),
                    &size,
                    &[],
                    t.kind(),
                    Device::Cpu,
                )
            };
            slot.copy_(t);
            slots.push(slot);
            offset += len;
        }
        Ok(HiddenStore {
            slots,
            device,
            _mapping: Some((mmap, file)),
        })
    }

    pub fn is_spilled(&self) -> bool {
        self._mapping.is_some()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Batch `i` on the compute device.
    pub fn get(&self, i: usize) -> Tensor {
        self.slots[i].to_device(self.device)
    }

    /// Replaces batch `i` with `value` (same shape).
    pub fn set(&mut self, i: usize, value: Tensor) {
        if self.is_spilled() {
            self.slots[i].copy_(&value);
        } else {
            self.slots[i] = value;
        }
    }
}

fn byte_size(t: &Tensor) -> u64 {
    let element = match t.kind() {
        Kind::BFloat16 | Kind::Half => 2,
        Kind::Double | Kind::Int64 => 8,
        _ => 4,
    };
    element * t.numel() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_store_round_trips_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([2, 3, 4]);
        let b = Tensor::ones([1, 5, 4], (Kind::Float, Device::Cpu));
        let mut store =
            HiddenStore::new(vec![a.copy(), b.copy()], Device::Cpu, 10, dir.path()).unwrap();
        assert!(store.is_spilled());
        assert!(store.get(0).equal(&a) && store.get(1).equal(&b));
        store.set(1, &b * 3.0);
        assert!(store.get(1).equal(&(&b * 3.0)));
        let in_memory = HiddenStore::new(vec![a.copy()], Device::Cpu, 1 << 20, dir.path()).unwrap();
        assert!(!in_memory.is_spilled());
    }
}

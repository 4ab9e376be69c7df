//! Where the residual stream of every token batch waits between layers: in memory (on the compute
//! device) while it fits the budget, else in a memory-mapped scratch file on disk (reserved in full
//! and unnamed: see `scratch_file`).

use std::path::Path;

use anyhow::{Context, Result};
use memmap2::MmapMut;
use tch::{Device, Kind, Tensor};

use crate::scratch_file::create_reserved;

/// Hidden states `[batch, seq, hidden]`, one per token batch.
pub struct HiddenStore {
    // Field order matters: the tensors view the mapping, so they must drop before it.
    slots: Vec<Tensor>,
    device: Device,
    _mapping: Option<MmapMut>,
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
        // A sparse file (`set_len`) would die of SIGBUS on a full disk at the first page written.
        let file = create_reserved(
            spill_dir,
            bytes,
            "hidden-state spill file (--hidden-budget-gb)",
        )?;
        // SAFETY: the file is ours alone (unnamed, fresh), and every tensor viewing the mapping is
        // dropped before it (field order). The mapping keeps the blocks after `file` closes.
        let mut mmap = unsafe { MmapMut::map_mut(&file) }.with_context(|| {
            format!(
                "{}: cannot map the hidden-state spill file",
                spill_dir.display()
            )
        })?;
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
            _mapping: Some(mmap),
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

    #[test]
    fn spill_leaves_no_file_in_the_temp_folder_even_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::ones([2, 3, 4], (Kind::Float, Device::Cpu));
        let store = HiddenStore::new(vec![a], Device::Cpu, 0, dir.path()).unwrap();
        assert!(store.is_spilled());
        // Nothing named: a `kill -9` now would leave no ckpt-scan-hidden-* behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(f64::try_from(store.get(0).sum(Kind::Double)).unwrap(), 24.0);
    }
}

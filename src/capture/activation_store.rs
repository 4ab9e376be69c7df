//! Token rows of every captured layer in memory-mapped scratch files, so an analysis that needs
//! several layers at once (cross-layer Gram blocks, analysis/cross_layer.rs) can stream them back.
//!
//! Layout: one file per (kind, layer), `[rows, heads·head_dim]` f32 row-major, rows in token order
//! (the forward's batches in order; in a batch, sequence by sequence, position by position), so a
//! split's rows are the union of its batches' row ranges. The files are unnamed scratch files in the
//! spill folder (`scratch_file`: nothing is left behind even by `kill -9`), reserved in full when
//! the store is created (a full disk fails then, not with SIGBUS mid-run), and freed when the store
//! drops. Pages are handed back to the kernel
//! once written or read, so resident memory stays at about one chunk however large the store.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::{MmapMut, UncheckedAdvice};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{CapturePoint, CaptureSink, HeadKind, LayerCapture};
use crate::data::token_set::Split;
use crate::scratch_file;

/// Most rows one streamed chunk holds.
pub const CHUNK_ROWS: i64 = 8192;
/// Most bytes (f64) the column blocks of one chunk may take together; chunks shrink to fit.
pub const CHUNK_BYTES: i64 = 256 << 20;
const F32_BYTES: i64 = 4;
const F64_BYTES: i64 = 8;

/// What a store will hold; its size is known before anything is written.
#[derive(Clone, Debug, Serialize)]
pub struct StorePlan {
    pub point: CapturePoint,
    /// Layers `0..layers` are stored.
    pub layers: i64,
    /// Each kind and its columns per layer (heads·head_dim).
    pub kinds: Vec<(HeadKind, i64)>,
    /// Token rows of each forward batch, in batch order.
    pub batch_rows: Vec<i64>,
    /// The split of each forward batch (batches are split-pure).
    pub batch_splits: Vec<Split>,
}

impl StorePlan {
    pub fn rows(&self) -> i64 {
        self.batch_rows.iter().sum()
    }

    /// Disk use: layers × Σ_kind columns × rows × 4 bytes.
    pub fn bytes(&self) -> u64 {
        let columns: i64 = self.kinds.iter().map(|(_, c)| c).sum();
        (self.layers * columns * self.rows() * F32_BYTES) as u64
    }

    /// "16 layers × 1 kind (k) × 4096 tokens × 2048 columns × 4 bytes = 0.50 GiB".
    pub fn describe(&self) -> String {
        let kinds: Vec<&str> = self.kinds.iter().map(|(k, _)| k.name()).collect();
        let columns: Vec<String> = self.kinds.iter().map(|(_, c)| c.to_string()).collect();
        format!(
            "{} layers × {} kind{} ({}) × {} tokens × {} columns × 4 bytes = {:.2} GiB",
            self.layers,
            kinds.len(),
            if kinds.len() == 1 { "" } else { "s" },
            kinds.join(","),
            self.rows(),
            columns.join("/"),
            gib(self.bytes())
        )
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// One (kind, layer) file.
struct LayerFile {
    // Field order matters: the tensor views the mapping, so it must drop first.
    /// `[rows, columns]` f32 view of the whole mapping.
    rows: Tensor,
    mapping: MmapMut,
    columns: i64,
    rows_written: i64,
}

impl LayerFile {
    /// Hands the pages of rows `start..start+len` back to the kernel.
    fn release(&self, start: i64, len: i64) {
        let row_bytes = (self.columns * F32_BYTES) as usize;
        // SAFETY: MADV_DONTNEED on a shared file mapping only drops this process's page-table
        // entries; the data stays in the page cache and file, and the next access reads it back.
        // No reference into the range outlives this call (tensors read from it are copies).
        // Failure only means the pages stay resident, so it is ignored.
        let _ = unsafe {
            self.mapping.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                start as usize * row_bytes,
                len as usize * row_bytes,
            )
        };
    }
}

/// A column range of one layer's rows of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ColumnBlock {
    pub kind: HeadKind,
    pub layer: i64,
    pub start: i64,
    pub width: i64,
}

/// The token rows of layers `0..plan.layers` for the planned kinds, on disk.
pub struct ActivationStore {
    files: BTreeMap<(HeadKind, i64), LayerFile>,
    plan: StorePlan,
    /// First row of each batch.
    batch_offsets: Vec<i64>,
}

impl ActivationStore {
    /// Creates and reserves the store's files in `spill_dir`. Refuses, with
    /// one line naming the flag, a store larger than `budget_bytes` or than the free space there.
    pub fn create(plan: StorePlan, spill_dir: &Path, budget_bytes: u64) -> Result<Self> {
        let bytes = plan.bytes();
        if bytes > budget_bytes {
            bail!(
                "--store-budget-gb {:.2}: the earlier-layers activation store needs {:.2} GiB ({}); raise --store-budget-gb or lower --tokens, --kinds or the deepest of --layers",
                gib(budget_bytes),
                gib(bytes),
                plan.describe()
            );
        }
        let free = scratch_file::free_bytes(spill_dir)?;
        if bytes > free {
            bail!(
                "--candidates earlier-layers: the activation store needs {:.2} GiB ({}) but {} has {:.2} GiB free; free space there, set TMPDIR to a larger disk, or lower --tokens, --kinds or the deepest of --layers",
                gib(bytes),
                plan.describe(),
                spill_dir.display(),
                gib(free)
            );
        }
        let rows = plan.rows();
        let mut files = BTreeMap::new();
        for layer in 0..plan.layers {
            for &(kind, columns) in &plan.kinds {
                let what = format!("activation store ({} of layer {layer})", kind.name());
                let len = (rows * columns * F32_BYTES) as u64;
                let file = scratch_file::create_reserved(spill_dir, len, &what)?;
                // SAFETY: the file is ours alone (unnamed, fresh), sized before mapping, and the
                // only tensor viewing the mapping drops before it (field order).
                let mut mapping = unsafe { MmapMut::map_mut(&file) }
                    .with_context(|| format!("{}: cannot map the {what}", spill_dir.display()))?;
                // SAFETY: the mapping is `rows·columns` f32s, page-aligned, viewed by this tensor
                // only; it outlives the tensor (LayerFile field order).
                let view = unsafe {
                    Tensor::from_blob(
                        mapping.as_mut_ptr(),
                        &[rows, columns],
                        &[],
                        Kind::Float,
                        Device::Cpu,
                    )
                };
                files.insert(
                    (kind, layer),
                    LayerFile {
                        rows: view,
                        mapping,
                        columns,
                        rows_written: 0,
                    },
                );
            }
        }
        let batch_offsets = plan
            .batch_rows
            .iter()
            .scan(0, |next, &r| {
                let start = *next;
                *next += r;
                Some(start)
            })
            .collect();
        Ok(ActivationStore {
            files,
            plan,
            batch_offsets,
        })
    }

    pub fn plan(&self) -> &StorePlan {
        &self.plan
    }

    /// Row ranges `(start, len)` of `split`, in token order, each at most `max_rows` long; a range
    /// never crosses into the other split.
    pub fn chunks(&self, split: Split, max_rows: i64) -> Vec<(i64, i64)> {
        let mut segments: Vec<(i64, i64)> = Vec::new();
        for ((&start, &len), &s) in self
            .batch_offsets
            .iter()
            .zip(&self.plan.batch_rows)
            .zip(&self.plan.batch_splits)
        {
            if s != split || len == 0 {
                continue;
            }
            match segments.last_mut() {
                Some((a, n)) if *a + *n == start => *n += len,
                _ => segments.push((start, len)),
            }
        }
        let max_rows = max_rows.max(1);
        segments
            .into_iter()
            .flat_map(|(start, len)| {
                (0..len)
                    .step_by(max_rows as usize)
                    .map(move |o| (start + o, max_rows.min(len - o)))
            })
            .collect()
    }

    fn file(&self, kind: HeadKind, layer: i64) -> Result<&LayerFile> {
        self.files.get(&(kind, layer)).with_context(|| {
            format!(
                "the activation store holds no {} rows of layer {layer}",
                kind.name()
            )
        })
    }

    /// Rows `start..start+len` of `block` as f64 on `device` (a copy; the pages are released).
    pub fn read(&self, block: ColumnBlock, start: i64, len: i64, device: Device) -> Result<Tensor> {
        let file = self.file(block.kind, block.layer)?;
        if file.rows_written != self.plan.rows() {
            bail!(
                "layer {} of the activation store is read before all its rows were written",
                block.layer
            );
        }
        let rows = file
            .rows
            .narrow(0, start, len)
            .narrow(1, block.start, block.width)
            .to_device(device)
            .to_kind(Kind::Double);
        file.release(start, len);
        Ok(rows)
    }

    /// For each pair `(a, b)` of column blocks, Σ over `split`'s rows of `aᵀb`: `[a.width, b.width]`
    /// f64 on `device`. Streams row chunks of at most [`CHUNK_ROWS`] rows, fewer when the distinct
    /// blocks of one chunk would exceed [`CHUNK_BYTES`]; each block is read once per chunk.
    pub fn cross_products(
        &self,
        split: Split,
        pairs: &[(ColumnBlock, ColumnBlock)],
        device: Device,
    ) -> Result<Vec<Tensor>> {
        let mut blocks: Vec<ColumnBlock> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        blocks.sort();
        blocks.dedup();
        let width: i64 = blocks.iter().map(|b| b.width).sum();
        let max_rows = (CHUNK_BYTES / (width.max(1) * F64_BYTES)).clamp(1, CHUNK_ROWS);
        let mut sums: Vec<Tensor> = pairs
            .iter()
            .map(|(a, b)| Tensor::zeros([a.width, b.width], (Kind::Double, device)))
            .collect();
        for (start, len) in self.chunks(split, max_rows) {
            let rows: BTreeMap<ColumnBlock, Tensor> = blocks
                .iter()
                .map(|&b| Ok((b, self.read(b, start, len, device)?)))
                .collect::<Result<_>>()?;
            for (sum, (a, b)) in sums.iter_mut().zip(pairs) {
                *sum += rows[a].transpose(0, 1).matmul(&rows[b]);
            }
        }
        Ok(sums)
    }
}

impl CaptureSink for ActivationStore {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        if layer < self.plan.layers {
            vec![self.plan.point]
        } else {
            Vec::new()
        }
    }

    fn last_layer(&self) -> Option<i64> {
        Some(self.plan.layers - 1)
    }

    fn capture(&mut self, c: &LayerCapture) -> Result<()> {
        if c.point != self.plan.point || c.layer >= self.plan.layers {
            return Ok(());
        }
        let (offset, expected) = match (
            self.batch_offsets.get(c.batch_index),
            self.plan.batch_rows.get(c.batch_index),
        ) {
            (Some(&o), Some(&r)) => (o, r),
            _ => bail!(
                "capture from batch {} that the activation store was not planned for",
                c.batch_index
            ),
        };
        for &(kind, columns) in &self.plan.kinds {
            let rows = c.token_rows(kind);
            if rows.size() != [expected, columns] {
                bail!(
                    "layer {} batch {}: {} rows are {:?}, the activation store planned [{expected}, {columns}]",
                    c.layer,
                    c.batch_index,
                    kind.name(),
                    rows.size()
                );
            }
            let file = self
                .files
                .get_mut(&(kind, c.layer))
                .expect("every planned (kind, layer) has a file");
            file.rows
                .narrow(0, offset, expected)
                .copy_(&rows.to_device(Device::Cpu).to_kind(Kind::Float));
            file.rows_written += expected;
            file.release(offset, expected);
        }
        Ok(())
    }

    fn finish_layer(&mut self, layer: i64) -> Result<()> {
        let rows = self.plan.rows();
        for &(kind, _) in &self.plan.kinds {
            if let Some(file) = self.files.get(&(kind, layer)) {
                if file.rows_written != rows {
                    bail!(
                        "layer {layer}: the activation store got {} of {rows} {} rows",
                        file.rows_written,
                        kind.name()
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> StorePlan {
        StorePlan {
            point: CapturePoint::Rope,
            layers: 2,
            kinds: vec![(HeadKind::K, 6)],
            batch_rows: vec![4, 6, 5],
            batch_splits: vec![Split::Fit, Split::Fit, Split::Heldout],
        }
    }

    fn store_with(values: &[Tensor; 2]) -> (tempfile::TempDir, ActivationStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ActivationStore::create(plan(), dir.path(), u64::MAX).unwrap();
        for (layer, x) in values.iter().enumerate() {
            // [batch=1, heads=2, seq, head_dim=3] per batch, so token rows are x's rows.
            let mut offset = 0;
            for (batch_index, &rows) in [4i64, 6, 5].iter().enumerate() {
                let heads = x
                    .narrow(0, offset, rows)
                    .view([1, rows, 2, 3])
                    .permute([0, 2, 1, 3]);
                let c = LayerCapture {
                    layer: layer as i64,
                    batch_index,
                    point: CapturePoint::Rope,
                    queries: &heads,
                    keys: &heads,
                    values: &heads,
                    attention: None,
                };
                store.capture(&c).unwrap();
                offset += rows;
            }
            store.finish_layer(layer as i64).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn plan_reports_its_size() {
        assert_eq!(plan().bytes(), 2 * 6 * 15 * 4);
        assert!(plan()
            .describe()
            .starts_with("2 layers × 1 kind (k) × 15 tokens × 6 columns"));
    }

    #[test]
    fn chunks_follow_the_splits_in_token_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = ActivationStore::create(plan(), dir.path(), u64::MAX).unwrap();
        assert_eq!(store.chunks(Split::Fit, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(store.chunks(Split::Heldout, 100), vec![(10, 5)]);
    }

    #[test]
    fn cross_products_equal_the_direct_ones_and_files_go_with_the_store() {
        tch::manual_seed(1);
        let x = [
            Tensor::randn([15, 6], (Kind::Float, Device::Cpu)),
            Tensor::randn([15, 6], (Kind::Float, Device::Cpu)),
        ];
        let (dir, store) = store_with(&x);
        let block = |layer, start, width| ColumnBlock {
            kind: HeadKind::K,
            layer,
            start,
            width,
        };
        let pairs = [
            (block(1, 0, 6), block(0, 0, 6)),
            (block(0, 3, 3), block(1, 0, 3)),
        ];
        for (split, range) in [(Split::Fit, (0, 10)), (Split::Heldout, (10, 5))] {
            let got = store.cross_products(split, &pairs, Device::Cpu).unwrap();
            let rows = |l: usize| x[l].narrow(0, range.0, range.1).to_kind(Kind::Double);
            let want0 = rows(1).transpose(0, 1).matmul(&rows(0));
            let want1 = rows(0)
                .narrow(1, 3, 3)
                .transpose(0, 1)
                .matmul(&rows(1).narrow(1, 0, 3));
            assert!(f64::try_from((&got[0] - want0).abs().max()).unwrap() < 1e-12);
            assert!(f64::try_from((&got[1] - want1).abs().max()).unwrap() < 1e-12);
        }
        drop(store);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn store_files_leave_no_name_in_the_temp_folder_even_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = ActivationStore::create(plan(), dir.path(), u64::MAX).unwrap();
        // Nothing named: a `kill -9` now would leave no ckpt-scan-activations-* behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop(store);
    }

    #[test]
    fn a_store_over_budget_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let e = ActivationStore::create(plan(), dir.path(), 100)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("--store-budget-gb") && !e.contains('\n'),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! Safetensors checkpoints: one file or shards listed in `model.safetensors.index.json`,
//! each memory-mapped once; a tensor is copied out only when asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensors};
use safetensors::{Dtype, SafeTensorError};
use tch::{Kind, Tensor};

use super::{Provenance, TensorInfo, WeightSource};
use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};
use crate::input_file::{check_regular, open_regular, read_text_capped};

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// The largest header a safetensors reader accepts (the `safetensors` crate's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A safetensors header on its own: tensor names, dtypes, shapes and data offsets, checked against
/// the size of the file it describes. Lets a remote shard be listed from its first bytes.
#[derive(Debug)]
pub struct ShardHeader {
    header_len: usize,
    metadata: Metadata,
}

impl ShardHeader {
    /// The header length a file announces in its first 8 bytes, when `prefix` holds them.
    pub fn announced_len(prefix: &[u8]) -> Option<u64> {
        let bytes: [u8; 8] = prefix.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// Parses the header from the first bytes of a file of `file_len` bytes (`prefix` must hold
    /// the 8-byte length and the whole JSON header; more is ignored). `path` names the file in
    /// errors.
    pub fn parse(prefix: &[u8], file_len: u64, path: &Path) -> SourceResult<Self> {
        let truncated = |message: String| SourceError::Truncated {
            path: path.to_path_buf(),
            message,
        };
        let n = Self::announced_len(prefix).ok_or_else(|| {
            truncated(format!("{} bytes is too short for a header", prefix.len()))
        })?;
        if n > MAX_HEADER_BYTES || 8 + n > file_len {
            return Err(truncated(format!(
                "the header length field ({n}) points past the end of the file ({file_len} bytes)"
            )));
        }
        let end = 8 + n as usize;
        let json = prefix.get(8..end).ok_or_else(|| {
            truncated(format!(
                "only {} of {end} header bytes were given",
                prefix.len()
            ))
        })?;
        // Deserialising `Metadata` runs the crate's own checks: offsets contiguous from 0 and each
        // tensor's byte length equal to its shape times its dtype size.
        let metadata: Metadata = serde_json::from_slice(json).map_err(|e| {
            SourceError::malformed(path, format!("invalid safetensors header: {e}"))
        })?;
        let data_len = metadata
            .tensors()
            .values()
            .map(|info| info.data_offsets.1 as u64)
            .max()
            .unwrap_or(0);
        if 8 + n + data_len != file_len {
            return Err(truncated(format!(
                "the header declares {} bytes but the file holds {file_len}",
                8 + n + data_len
            )));
        }
        Ok(ShardHeader {
            header_len: n as usize,
            metadata,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.metadata.tensors().keys().cloned().collect()
    }

    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let info = self.metadata.info(name)?;
        Some(TensorInfo {
            name: name.to_string(),
            shape: info.shape.iter().map(|&d| d as i64).collect(),
            dtype: format!("{:?}", info.dtype),
            bytes: (info.data_offsets.1 - info.data_offsets.0) as u64,
        })
    }
}

/// One memory-mapped `.safetensors` file with its parsed, validated header.
pub struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header: ShardHeader,
}

impl Shard {
    /// Maps the file and validates its header against the file size; reads no tensor data.
    pub fn open(path: &Path) -> SourceResult<Self> {
        let file = open_regular(path).map_err(|e| SourceError::io(path, e))?;
        // SAFETY: the mapping is read-only and every read copies out of it; a file changed on disk
        // underneath us is outside what any reader of checkpoints can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| SourceError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| header_error(path, e, mmap.len()))?;
        Ok(Shard {
            path: path.to_path_buf(),
            mmap,
            header: ShardHeader {
                header_len,
                metadata,
            },
        })
    }

    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Unmaps the file, keeping what its header says.
    pub fn into_header(self) -> ShardHeader {
        self.header
    }

    pub fn names(&self) -> Vec<String> {
        self.header.names()
    }

    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        self.header.info(name)
    }

    /// Copies one tensor out of the mapping, converted to f32.
    pub fn read(&self, name: &str) -> SourceResult<Tensor> {
        let info = self
            .header
            .metadata
            .info(name)
            .ok_or_else(|| SourceError::MissingTensor {
                name: name.to_string(),
                location: self.path.display().to_string(),
            })?;
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(SourceError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    path: self.path.clone(),
                })
            }
        };
        let start = 8 + self.header.header_len + info.data_offsets.0;
        let end = 8 + self.header.header_len + info.data_offsets.1;
        let bytes = &self.mmap[start..end];
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(bytes, &shape, kind)?;
        // The tensor is an owned copy now; drop the mapped pages so a streamed pass over a 5 GB
        // shard does not keep the whole shard resident (they are re-read from disk if needed).
        // SAFETY: the mapping is private to this struct, read-only and file-backed, so dropping its
        // pages changes no data; no reference into `bytes` outlives this point.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        Ok(if kind == Kind::Float {
            tensor
        } else {
            tensor.to_kind(Kind::Float)
        })
    }
}

fn header_error(path: &Path, error: SafeTensorError, file_len: usize) -> SourceError {
    match error {
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooSmall => {
            SourceError::Truncated {
                path: path.to_path_buf(),
                message: format!(
                    "the header length field points past the end of the file ({file_len} bytes)"
                ),
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => SourceError::Truncated {
            path: path.to_path_buf(),
            message: format!(
                "the header declares more tensor data than the file holds ({file_len} bytes)"
            ),
        },
        other => SourceError::malformed(path, format!("invalid safetensors header: {other}")),
    }
}

/// A Hugging Face model folder (or a single `.safetensors` file beside its `config.json`).
pub struct SafetensorsSource {
    root: PathBuf,
    config: ModelConfig,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`, sorted by name for a stable listing.
    location: BTreeMap<String, usize>,
    provenance: Provenance,
}

impl SafetensorsSource {
    /// Opens a model folder or a `.safetensors` file; reads only headers.
    pub fn open(path: &Path, spec: &str) -> SourceResult<Self> {
        let (root, shard_files) = if path.is_dir() {
            (path.to_path_buf(), shard_files_in(path)?)
        } else if path.symlink_metadata().is_ok() {
            // A file, a FIFO, a link loop…: say what it is before looking for its config.json.
            check_regular(path).map_err(|e| SourceError::io(path, e))?;
            let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (root, vec![path.to_path_buf()])
        } else {
            return Err(SourceError::MissingFile {
                path: path.to_path_buf(),
            });
        };
        let config = ModelConfig::from_file(&root.join("config.json"))?;
        let shards = shard_files
            .iter()
            .map(|p| Shard::open(p))
            .collect::<SourceResult<Vec<_>>>()?;
        let mut location = BTreeMap::new();
        for (index, shard) in shards.iter().enumerate() {
            for name in shard.names() {
                location.insert(name, index);
            }
        }
        let provenance = Provenance {
            spec: spec.to_string(),
            kind: "safetensors".into(),
            files: shard_files,
            ..Default::default()
        };
        Ok(SafetensorsSource {
            root,
            config,
            shards,
            location,
            provenance,
        })
    }

    pub fn set_provenance(&mut self, provenance: Provenance) {
        self.provenance = provenance;
    }
}

/// The shard files of a folder, from the index when there is one.
fn shard_files_in(dir: &Path) -> SourceResult<Vec<PathBuf>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.exists() {
        let files = index_shard_names(&index_path)?;
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    if !dir.join("config.json").exists() {
        return Err(SourceError::MissingFile {
            path: dir.join("config.json"),
        });
    }
    Err(SourceError::MissingFile { path: single })
}

/// Distinct shard file names listed in an index's `weight_map`, in first-seen order.
pub fn index_shard_names(index_path: &Path) -> SourceResult<Vec<String>> {
    let mut files: Vec<String> = Vec::new();
    for file in read_index(index_path)?.into_values() {
        if !files.contains(&file) {
            files.push(file);
        }
    }
    Ok(files)
}

/// The `weight_map` of a `model.safetensors.index.json`: tensor name → shard file name.
pub fn read_index(index_path: &Path) -> SourceResult<BTreeMap<String, String>> {
    let text = read_text_capped(index_path, MAX_HEADER_BYTES)
        .map_err(|e| SourceError::io(index_path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SourceError::malformed(index_path, format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| SourceError::malformed(index_path, "no \"weight_map\" object"))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            SourceError::malformed(
                index_path,
                format!("weight_map[{tensor:?}] is not a string"),
            )
        })?;
        if file.contains('/') || file.contains("..") {
            return Err(SourceError::malformed(
                index_path,
                format!("shard name {file:?} leaves the model folder"),
            ));
        }
        weight_map.insert(tensor.clone(), file.to_string());
    }
    Ok(weight_map)
}

impl WeightSource for SafetensorsSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.location
            .iter()
            .filter_map(|(name, &i)| self.shards[i].info(name))
            .collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    fn read(&self, name: &str) -> SourceResult<Tensor> {
        match self.location.get(name) {
            Some(&i) => self.shards[i].read(name),
            None => Err(SourceError::MissingTensor {
                name: name.to_string(),
                location: self.root.display().to_string(),
            }),
        }
    }

    fn tokenizer_path(&self) -> Option<PathBuf> {
        let path = self.root.join("tokenizer.json");
        path.exists().then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::TensorView;

    use super::*;

    /// A two-tensor file: `a` is 2×3 f32, `b` is 4 f32.
    fn small_file() -> Vec<u8> {
        let a = vec![0u8; 24];
        let b = vec![0u8; 16];
        let views = vec![
            ("a", TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap()),
            ("b", TensorView::new(Dtype::F32, vec![4], &b).unwrap()),
        ];
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn a_header_parses_from_the_first_bytes_alone() {
        let file = small_file();
        let n = ShardHeader::announced_len(&file).unwrap() as usize;
        let header = ShardHeader::parse(&file[..8 + n], file.len() as u64, Path::new("x")).unwrap();
        let mut names = header.names();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(header.info("a").unwrap().shape, [2, 3]);
        assert_eq!(header.info("b").unwrap().bytes, 16);
    }

    #[test]
    fn a_header_that_disagrees_with_the_file_size_is_truncated() {
        let file = small_file();
        let path = Path::new("remote/x.safetensors");
        let e = ShardHeader::parse(&file, file.len() as u64 - 1, path).unwrap_err();
        assert!(matches!(e, SourceError::Truncated { .. }), "{e}");
        let e = ShardHeader::parse(&file[..20], file.len() as u64, path).unwrap_err();
        assert!(e.to_string().contains("header bytes were given"), "{e}");
    }

    #[test]
    fn an_absurd_header_length_is_refused_before_allocating() {
        let mut prefix = u64::MAX.to_le_bytes().to_vec();
        prefix.extend_from_slice(b"{}");
        let e = ShardHeader::parse(&prefix, 1 << 40, Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("points past the end"), "{e}");
    }
}

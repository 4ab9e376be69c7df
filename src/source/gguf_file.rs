//! The GGUF container (ggml `docs/gguf.md`, versions 2 and 3, little-endian): header, metadata
//! key/values, tensor infos and the aligned data section, parsed from a memory-mapped file.
//!
//! Every count and length in the header is checked against the bytes left in the file before
//! anything is allocated for it, so a corrupt or hostile header gives an error, never an
//! out-of-memory abort or a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Device, Kind, Tensor};

use super::gguf_quant::{dequantize, dequantize_into, GgmlType};
use crate::error::{SourceError, SourceResult};

const MAGIC: &[u8; 4] = b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is refused (it only serves to exhaust the stack).
const MAX_ARRAY_NESTING: usize = 4;
/// Smallest possible key/value: key length (8) + value type (4) + a one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// Smallest possible tensor info: name length (8) + dim count (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer value that fits an i64 (GGUF writers differ in which integer type they use).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Where one tensor lives and how it is stored.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    /// llama.cpp name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions innermost first, as GGUF stores them (`[in, out]` for a linear weight).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub bytes: u64,
}

impl GgufTensorInfo {
    /// Shape in PyTorch order (outermost first): GGUF `[in, out]` is `[out, in]`.
    pub fn shape(&self) -> Vec<i64> {
        // Every dim was checked to fit an i64 when the header was parsed.
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file: parsed header plus the mapping the tensor data is read from.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute offset of the data section.
    pub data_start: u64,
    pub alignment: u64,
}

impl GgufFile {
    /// Maps the file and parses and validates its header; reads no tensor data.
    pub fn open(path: &Path) -> SourceResult<Self> {
        let file = crate::input_file::open_regular(path).map_err(|e| SourceError::io(path, e))?;
        // SAFETY: read-only mapping; every read copies out of it (as for safetensors shards).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| SourceError::io(path, e))?;
        let header = parse_header(&mmap, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            data_start: header.data_start,
            alignment: header.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of one tensor (extent validated when the header was parsed).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        let start = (self.data_start + info.offset) as usize;
        &self.mmap[start..start + info.bytes as usize]
    }

    /// Dequantises one tensor to f32 values in storage order (innermost dimension fastest).
    pub fn read_f32(&self, info: &GgufTensorInfo) -> SourceResult<Vec<f32>> {
        dequantize(info.ggml_type, self.tensor_bytes(info)).ok_or_else(|| self.unsupported(info))
    }

    /// Dequantises one tensor into a new f32 CPU tensor of shape `info.shape()` (PyTorch order).
    pub fn read_tensor(&self, info: &GgufTensorInfo) -> SourceResult<Tensor> {
        if !info.ggml_type.is_supported() {
            return Err(self.unsupported(info));
        }
        let tensor = Tensor::f_empty(info.shape().as_slice(), (Kind::Float, Device::Cpu))?;
        let elements = info.elements() as usize;
        if elements == 0 {
            return Ok(tensor);
        }
        // SAFETY: `tensor` was just allocated here, contiguous f32 on the CPU with `elements`
        // values, and no other handle to its storage exists while `values` lives. Filling it in
        // place skips tch's `from_slice` (zero-fill, then copy), which costs seconds on SmolLM2.
        let values =
            unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut f32, elements) };
        dequantize_into(info.ggml_type, self.tensor_bytes(info), values)
            .ok_or_else(|| self.unsupported(info))?;
        Ok(tensor)
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> SourceError {
        SourceError::UnsupportedDtype {
            name: info.name.clone(),
            dtype: format!(
                "{} (GGML type {}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                info.ggml_type.name(),
                info.ggml_type.id()
            ),
            path: self.path.clone(),
        }
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: u64,
    alignment: u64,
}

/// Parses everything before the data section and checks every tensor's extent against the file.
fn parse_header(bytes: &[u8], path: &Path) -> SourceResult<Header> {
    let mut r = Reader {
        bytes,
        pos: 0,
        path,
    };
    let magic = r.take(4, "the magic number")?;
    if magic != MAGIC {
        return Err(SourceError::malformed(
            path,
            format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"),
        ));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err(r.malformed("GGUF version 1 (32-bit counts) is not supported; re-convert the model with a current llama.cpp".into())),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(r.malformed("big-endian GGUF files are not supported".into()))
        }
        v => return Err(r.malformed(format!("unknown GGUF version {v} (supported: 2, 3)"))),
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the key/value count")?;
    r.check_count(kv_count, MIN_KV_BYTES, "key/value pairs")?;
    r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensors")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        let value_type = r.u32("a metadata value type")?;
        let value = r.value(value_type, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.malformed(format!("metadata key {key:?} appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(other) => {
            return Err(r.malformed(format!(
                "general.alignment must be a power-of-two u32, got {other:?}"
            )))
        }
    };

    // Checked again now that the metadata is consumed: the infos must fit in what is left.
    r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, "tensors")?;
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let info = r.tensor_info(alignment)?;
        if !seen.insert(info.name.clone()) {
            return Err(r.malformed(format!("tensor {} appears twice", info.name)));
        }
        tensors.push(info);
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(SourceError::Truncated {
                path: path.to_path_buf(),
                message: format!(
                    "tensor {} ({} bytes at data offset {}) ends past the end of the file ({file_len} bytes; data section starts at {data_start})",
                    t.name, t.bytes, t.offset
                ),
            });
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start,
        alignment,
    })
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn malformed(&self, message: String) -> SourceError {
        SourceError::malformed(self.path, message)
    }

    fn take(&mut self, n: u64, what: &str) -> SourceResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(SourceError::Truncated {
                path: self.path.to_path_buf(),
                message: format!(
                    "{what} needs {n} bytes at offset {}, but the file has {} bytes",
                    self.pos,
                    self.bytes.len()
                ),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> SourceResult<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> SourceResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> SourceResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses a count of items that could not fit in the rest of the file even at their smallest.
    fn check_count(&self, count: u64, min_item_bytes: u64, what: &str) -> SourceResult<()> {
        let fits = count
            .checked_mul(min_item_bytes)
            .is_some_and(|need| need <= self.remaining());
        if fits {
            return Ok(());
        }
        Err(self.malformed(format!(
            "the header declares {count} {what}, more than the {} bytes left in the file could hold \
             (at least {min_item_bytes} bytes each at offset {})",
            self.remaining(),
            self.pos
        )))
    }

    fn string(&mut self, what: &str) -> SourceResult<String> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.malformed(format!(
                "{what} claims a length of {len} bytes at offset {}, but only {} bytes remain",
                self.pos,
                self.remaining()
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))
    }

    /// Bytes the smallest value of a type occupies, to bound array lengths before allocating.
    fn min_value_bytes(&self, value_type: u32, key: &str) -> SourceResult<u64> {
        Ok(match value_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(self.malformed(format!("metadata {key:?}: unknown value type {t}"))),
        })
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> SourceResult<GgufValue> {
        let what = format!("metadata {key:?}");
        Ok(match value_type {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.malformed(format!("{what}: bool byte is {b}, not 0 or 1"))),
            },
            8 => GgufValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(self.malformed(format!(
                        "{what}: arrays nested more than {MAX_ARRAY_NESTING} deep"
                    )));
                }
                let item_type = self.u32(&what)?;
                let len = self.u64(&what)?;
                let min = self.min_value_bytes(item_type, key)?;
                self.check_count(len, min, &format!("items in {what}"))?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(self.malformed(format!("{what}: unknown value type {t}"))),
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> SourceResult<GgufTensorInfo> {
        let name = self.string("a tensor name")?;
        let n_dims = self.u32(&format!("tensor {name}: dimension count"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.malformed(format!(
                "tensor {name}: {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&format!("tensor {name}: dimensions"))?);
        }
        // Each dim must fit an i64 on its own too: with a zero dim the product says nothing.
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok() && dims.iter().all(|&d| d <= i64::MAX as u64))
            .ok_or_else(|| {
                self.malformed(format!(
                    "tensor {name}: dimensions {dims:?} overflow the element count"
                ))
            })?;
        let type_id = self.u32(&format!("tensor {name}: type"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            self.malformed(format!("tensor {name}: unknown GGML type id {type_id}"))
        })?;
        let offset = self.u64(&format!("tensor {name}: offset"))?;
        if offset % alignment != 0 {
            return Err(self.malformed(format!(
                "tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let block = ggml_type.block_size() as u64;
        if dims[0] % block != 0 {
            return Err(self.malformed(format!(
                "tensor {name}: rows of {} weights are not a whole number of {} blocks ({block} weights)",
                dims[0],
                ggml_type.name()
            )));
        }
        let bytes = (elements / block)
            .checked_mul(ggml_type.type_size() as u64)
            .ok_or_else(|| self.malformed(format!("tensor {name}: byte size overflows")))?;
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with `tensor_count`, `kv_count` and then `rest`.
    fn header(version: u32, tensor_count: u64, kv_count: u64, rest: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensor_count.to_le_bytes());
        b.extend(kv_count.to_le_bytes());
        b.extend(rest);
        b
    }

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    fn parse(bytes: &[u8]) -> SourceResult<Header> {
        parse_header(bytes, Path::new("t.gguf"))
    }

    fn error(bytes: &[u8]) -> String {
        match parse(bytes) {
            Ok(_) => panic!("parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_with_no_tensors_parses() {
        let h = parse(&header(3, 0, 0, &[])).unwrap();
        assert_eq!((h.version, h.tensors.len(), h.data_start), (3, 0, 32));
    }

    #[test]
    fn every_value_type_parses() {
        let mut kv = Vec::new();
        let mut push = |key: &str, ty: u32, value: &[u8]| {
            kv.extend(string(key));
            kv.extend(ty.to_le_bytes());
            kv.extend(value);
        };
        push("u8", 0, &[7]);
        push("i8", 1, &[0xFF]);
        push("u16", 2, &300u16.to_le_bytes());
        push("i16", 3, &(-300i16).to_le_bytes());
        push("u32", 4, &70000u32.to_le_bytes());
        push("i32", 5, &(-70000i32).to_le_bytes());
        push("f32", 6, &1.5f32.to_le_bytes());
        push("bool", 7, &[1]);
        push("str", 8, &string("héllo"));
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend(string("a"));
        arr.extend(string("b c"));
        push("arr", 9, &arr);
        push("u64", 10, &(1u64 << 40).to_le_bytes());
        push("i64", 11, &(-5i64).to_le_bytes());
        push("f64", 12, &0.25f64.to_le_bytes());
        let h = parse(&header(3, 0, 13, &kv)).unwrap();
        let m = &h.metadata;
        assert_eq!(m["u8"].as_i64(), Some(7));
        assert_eq!(m["i8"].as_i64(), Some(-1));
        assert_eq!(m["u16"].as_i64(), Some(300));
        assert_eq!(m["i16"].as_i64(), Some(-300));
        assert_eq!(m["u32"].as_i64(), Some(70000));
        assert_eq!(m["i32"].as_i64(), Some(-70000));
        assert_eq!(m["f32"].as_f64(), Some(1.5));
        assert_eq!(m["bool"].as_bool(), Some(true));
        assert_eq!(m["str"].as_str(), Some("héllo"));
        let items: Vec<_> = m["arr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str())
            .collect();
        assert_eq!(items, [Some("a"), Some("b c")]);
        assert_eq!(m["u64"].as_i64(), Some(1 << 40));
        assert_eq!(m["i64"].as_i64(), Some(-5));
        assert_eq!(m["f64"].as_f64(), Some(0.25));
    }

    #[test]
    fn absurd_counts_and_lengths_are_refused_before_allocating() {
        let e = error(&header(3, u64::MAX / 2, 0, &[]));
        assert!(e.contains("declares 9223372036854775807 tensors"), "{e}");
        let e = error(&header(3, 0, 1 << 60, &[]));
        assert!(e.contains("key/value pairs"), "{e}");
        let mut kv = (1u64 << 62).to_le_bytes().to_vec(); // key length 2^62
        kv.extend([0u8; 16]);
        let e = error(&header(3, 0, 1, &kv));
        assert!(
            e.contains("a metadata key claims a length of 4611686018427387904"),
            "{e}"
        );
        let mut kv = string("tokens");
        kv.extend(9u32.to_le_bytes());
        kv.extend(8u32.to_le_bytes());
        kv.extend(u64::MAX.to_le_bytes()); // array of 2^64-1 strings
        let e = error(&header(3, 0, 1, &kv));
        assert!(e.contains("items in metadata \"tokens\""), "{e}");
    }

    #[test]
    fn deeply_nested_arrays_are_refused() {
        let mut kv = string("deep");
        kv.extend(9u32.to_le_bytes());
        for _ in 0..10 {
            kv.extend(9u32.to_le_bytes());
            kv.extend(1u64.to_le_bytes());
        }
        kv.extend([0u8; 64]);
        let e = error(&header(3, 0, 1, &kv));
        assert!(e.contains("nested more than"), "{e}");
    }

    fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        let mut b = string(name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b
    }

    #[test]
    fn bad_tensor_infos_name_the_tensor() {
        let cases: [(Vec<u8>, &str); 6] = [
            (tensor_info("w", &[1, 2, 3, 4, 5], 0, 0), "5 dimensions"),
            (tensor_info("w", &[1 << 32, 1 << 32], 0, 0), "overflow"),
            (tensor_info("w", &[0, u64::MAX], 0, 0), "overflow"),
            (tensor_info("w", &[32], 77, 0), "unknown GGML type id 77"),
            (
                tensor_info("w", &[33], 8, 0),
                "not a whole number of Q8_0 blocks",
            ),
            (
                tensor_info("w", &[32], 0, 3),
                "not a multiple of the alignment",
            ),
        ];
        for (info, needle) in cases {
            let mut bytes = header(3, 1, 0, &info);
            bytes.resize(bytes.len() + 4096, 0);
            let e = error(&bytes);
            assert!(
                e.contains("tensor w") && e.contains(needle),
                "{needle}: {e}"
            );
        }
    }

    #[test]
    fn tensor_data_past_the_end_is_truncation() {
        let bytes = header(3, 1, 0, &tensor_info("blk.0.x.weight", &[8, 2], 0, 0));
        let e = error(&bytes);
        assert!(
            e.contains("truncated") && e.contains("blk.0.x.weight"),
            "{e}"
        );
    }

    #[test]
    fn data_starts_at_the_declared_alignment() {
        let mut kv = string("general.alignment");
        kv.extend(4u32.to_le_bytes());
        kv.extend(64u32.to_le_bytes());
        let mut rest = kv;
        rest.extend(tensor_info("x", &[4], 0, 0));
        let mut bytes = header(3, 1, 1, &rest);
        let header_len = bytes.len();
        bytes.resize(header_len.next_multiple_of(64) + 16, 0);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_start as usize, header_len.next_multiple_of(64));
        assert_eq!(h.tensors[0].shape(), vec![4]);
    }

    #[test]
    fn versions_other_than_two_and_three_are_refused() {
        assert!(parse(&header(2, 0, 0, &[])).is_ok());
        assert!(error(&header(1, 0, 0, &[])).contains("version 1"));
        assert!(error(&header(3u32.swap_bytes(), 0, 0, &[])).contains("big-endian"));
        assert!(error(b"GGML\x03\0\0\0").contains("not a GGUF file"));
        assert!(error(b"GG").contains("truncated"));
    }
}

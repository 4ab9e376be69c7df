//! Seeded mutation fuzzing of the parsers that take untrusted bytes: safetensors headers, GGUF
//! files, series manifests (TOML), gzipped request files and tokenizer.json. Each target starts
//! from a small valid input built here, mutates it (bit flips, interesting integers over
//! length/count fields, truncation, splices) and feeds it in for a bounded time. The harness fails
//! on a panic, on one input taking longer than `STALL` (a hang), and on any single allocation above
//! `ALLOCATION_CAP` (a size taken from the input without a check); the failing input is written
//! to the temp folder and named in the message.
//!
//! `CKPT_SCAN_FUZZ_SECONDS` sets the time per target (default 6 s: five targets ≈ 30 s in
//! `make test`); `CKPT_SCAN_FUZZ_SEED` the seed (default 0).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The largest single Rust allocation any input of a few kB may cause. Inputs here are at most
/// ~64 kB; the parsers' own limits (100 MB safetensors header) are far above this, so an
/// allocation this large means a declared size was trusted.
const ALLOCATION_CAP: usize = 64 << 20;
/// One input taking longer than this counts as a hang.
const STALL: Duration = Duration::from_secs(20);

struct CappedAllocator;

/// Set while a target runs: only then are allocations checked against the cap.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The input being run and its target's name, for the report of an oversized allocation.
static CURRENT: Mutex<(String, Vec<u8>)> = Mutex::new((String::new(), Vec::new()));

/// Called (disarmed) when a target asks for more than the cap: saves the input, says so, and lets
/// the refused allocation abort the process.
fn over_cap(size: usize) {
    ARMED.store(false, Ordering::Relaxed);
    if let Ok(current) = CURRENT.try_lock() {
        let path = save(&current.0, &current.1);
        eprintln!(
            "fuzz {}: an input asked for one allocation of {size} bytes (cap {ALLOCATION_CAP}); saved as {}",
            current.0,
            path.display()
        );
    }
}

// SAFETY: delegates to the system allocator; refuses (null) only requests above the cap while armed.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && layout.size() > ALLOCATION_CAP {
            over_cap(layout.size());
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) && new_size > ALLOCATION_CAP {
            over_cap(new_size);
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

fn seconds_per_target() -> f64 {
    std::env::var("CKPT_SCAN_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6.0)
}

fn seed() -> u64 {
    std::env::var("CKPT_SCAN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Integers that sit on edges of length and count checks.
const INTERESTING: [u64; 10] = [
    0,
    1,
    7,
    0x7f,
    0xff,
    0xffff_ffff,
    1 << 31,
    1 << 61,
    u64::MAX,
    u64::MAX - 7,
];

fn mutate(rng: &mut ChaCha8Rng, seed_input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = seed_input.to_vec();
    let rounds = 1 + rng.next_u32() % 4;
    for _ in 0..rounds {
        let len = bytes.len().max(1);
        let at = rng.next_u32() as usize % len;
        match rng.next_u32() % 7 {
            0 => {
                if !bytes.is_empty() {
                    bytes[at] ^= 1 << (rng.next_u32() % 8);
                }
            }
            1 => {
                if !bytes.is_empty() {
                    bytes[at] =
                        [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'\n'][rng.next_u32() as usize % 7];
                }
            }
            2 => {
                let value = INTERESTING[rng.next_u32() as usize % INTERESTING.len()];
                let width = [1usize, 4, 8][rng.next_u32() as usize % 3];
                let le = value.to_le_bytes();
                for (i, b) in le.iter().take(width).enumerate() {
                    if let Some(slot) = bytes.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => bytes.truncate(at),
            4 => {
                // Splice in a piece of another corpus entry.
                let other = &corpus[rng.next_u32() as usize % corpus.len()];
                if !other.is_empty() {
                    let from = rng.next_u32() as usize % other.len();
                    let n = (rng.next_u32() as usize % 64).min(other.len() - from);
                    let at = at.min(bytes.len());
                    bytes.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            5 => {
                let n = (rng.next_u32() as usize % 16).min(bytes.len().saturating_sub(at));
                bytes.drain(at..at + n);
            }
            _ => {
                // Repeat a chunk (long strings, many entries).
                let n = (rng.next_u32() as usize % 32).min(bytes.len().saturating_sub(at));
                let chunk = bytes[at..at + n].to_vec();
                let at = at.min(bytes.len());
                for _ in 0..(1 + rng.next_u32() % 8) {
                    bytes.splice(at..at, chunk.iter().copied());
                }
            }
        }
    }
    bytes
}

/// Runs `target` on mutations of `seeds` for the time budget. A watchdog thread fails the test if
/// one input stalls; a panic or an allocation over the cap fails it with the input saved.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) {
    // One target at a time: the allocation cap and the current input are process-wide.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let budget = Duration::from_secs_f64(seconds_per_target());
    let mut rng = ChaCha8Rng::seed_from_u64(seed() ^ name.len() as u64);
    let started_at = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let clock = Instant::now();
    let watchdog = {
        let (started_at, done) = (started_at.clone(), done.clone());
        let name = name.to_string();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let since = clock.elapsed().as_millis() as u64 - started_at.load(Ordering::Relaxed);
                if since > STALL.as_millis() as u64 && !done.load(Ordering::Relaxed) {
                    let input = CURRENT.lock().map(|c| c.1.clone()).unwrap_or_default();
                    let path = save(&name, &input);
                    eprintln!(
                        "fuzz {name}: one input ran over {STALL:?} (hang); saved as {}",
                        path.display()
                    );
                    std::process::exit(101);
                }
            }
        })
    };
    let mut inputs = 0u64;
    while clock.elapsed() < budget {
        let base = &seeds[rng.next_u32() as usize % seeds.len()];
        let input = mutate(&mut rng, base, &seeds);
        *CURRENT.lock().unwrap() = (name.to_string(), input.clone());
        started_at.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        ARMED.store(false, Ordering::Relaxed);
        if outcome.is_err() {
            done.store(true, Ordering::Relaxed);
            let path = save(name, &input);
            panic!(
                "fuzz {name}: input {inputs} panicked; saved as {}",
                path.display()
            );
        }
        inputs += 1;
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    eprintln!(
        "fuzz {name}: {inputs} inputs in {:.1} s, no panic, hang or oversized allocation",
        clock.elapsed().as_secs_f64()
    );
    assert!(inputs > 0);
}

fn save(name: &str, bytes: &[u8]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("ckpt-scan-fuzz-{name}-{}.bin", std::process::id()));
    let _ = std::fs::write(&path, bytes);
    path
}

/// A scratch file the file-based parsers read; rewritten for every input.
fn scratch(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(bytes).unwrap();
    path
}

// ---- seeds ----

fn safetensors_seed() -> Vec<u8> {
    let header = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend(std::iter::repeat_n(0u8, 22));
    bytes
}

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF v3: llama metadata (so the config path runs too), a string array, one F32 tensor.
fn gguf_seed() -> Vec<u8> {
    let mut kv = Vec::new();
    let mut count = 0u64;
    let u32_kv = |kv: &mut Vec<u8>, key: &str, v: u32| {
        gguf_string(kv, key);
        kv.extend(4u32.to_le_bytes());
        kv.extend(v.to_le_bytes());
    };
    gguf_string(&mut kv, "general.architecture");
    kv.extend(8u32.to_le_bytes());
    gguf_string(&mut kv, "llama");
    count += 1;
    for (key, v) in [
        ("llama.embedding_length", 8u32),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.feed_forward_length", 16),
        ("llama.context_length", 32),
        ("general.alignment", 32),
    ] {
        u32_kv(&mut kv, key, v);
        count += 1;
    }
    gguf_string(&mut kv, "llama.attention.layer_norm_rms_epsilon");
    kv.extend(6u32.to_le_bytes());
    kv.extend(1e-5f32.to_le_bytes());
    count += 1;
    gguf_string(&mut kv, "tokenizer.ggml.tokens");
    kv.extend(9u32.to_le_bytes());
    kv.extend(8u32.to_le_bytes());
    kv.extend(3u64.to_le_bytes());
    for t in ["a", "b", "<s>"] {
        gguf_string(&mut kv, t);
    }
    count += 1;
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(count.to_le_bytes());
    bytes.extend(kv);
    gguf_string(&mut bytes, "token_embd.weight");
    bytes.extend(2u32.to_le_bytes());
    bytes.extend(8u64.to_le_bytes());
    bytes.extend(3u64.to_le_bytes());
    bytes.extend(0u32.to_le_bytes()); // F32
    bytes.extend(0u64.to_le_bytes());
    while !bytes.len().is_multiple_of(32) {
        bytes.push(0);
    }
    bytes.extend(std::iter::repeat_n(0u8, 8 * 3 * 4));
    bytes
}

const MANIFEST_SEED: &str = r#"name = "olmo2-7b"
description = "seed"
[hub]
repo = "allenai/OLMo-2-1124-7B"
branches = { pattern = "stage1-*", log_spaced = 8 }
[[sources]]
label = "final"
source = "gguf:${CKPT_SCAN_DATA}/smollm2/x.gguf"
step = 100
[[init]]
config = "olmo2-7b"
seeds = [0, 1]
schemes = ["olmo", "hf"]
[analysis]
tokens = 16384
seq_len = 256
kinds = ["q", "k"]
"#;

const REQUEST_SEED: &str = r#"{"request_type": "loglikelihood", "doc": {"id": "X_1", "query": "Question: Which?\nAnswer:", "choices": ["a", "b"], "gold": 0}, "request": {"context": "Question: Which?\nAnswer:", "continuation": " a"}, "idx": 0, "task_name": "arc_easy", "doc_id": 0, "native_id": "X_1", "label": 0}
{"request_type": "loglikelihood", "doc": {"id": "X_1", "query": "Question: Which?\nAnswer:", "choices": ["a", "b"], "gold": 0}, "request": {"context": "Question: Which?\nAnswer:", "continuation": " b"}, "idx": 1, "task_name": "arc_easy", "doc_id": 0, "native_id": "X_1", "label": 0}
"#;

const TOKENIZER_SEED: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"<s>":0,"a":1,"b":2,"ab":3},"merges":["a b"]}}"#;

// ---- targets ----

#[test]
fn fuzz_safetensors_header() {
    use ckpt_scan::source::safetensors::{Shard, ShardHeader};
    let dir = tempfile::tempdir().unwrap();
    fuzz("safetensors", vec![safetensors_seed()], |bytes| {
        let path = Path::new("fuzz.safetensors");
        if let Ok(header) = ShardHeader::parse(bytes, bytes.len() as u64, path) {
            for name in header.names() {
                let _ = header.info(&name);
            }
        }
        // Through the mapped file as well, reading every tensor the header admits.
        let file = scratch(dir.path(), "model.safetensors", bytes);
        if let Ok(shard) = Shard::open(&file) {
            for name in shard.names() {
                let _ = shard.read(&name);
            }
        }
    });
}

#[test]
fn fuzz_gguf() {
    use ckpt_scan::source::gguf::GgufSource;
    use ckpt_scan::source::gguf_file::GgufFile;
    let dir = tempfile::tempdir().unwrap();
    fuzz("gguf", vec![gguf_seed()], |bytes| {
        let path = scratch(dir.path(), "m.gguf", bytes);
        if let Ok(file) = GgufFile::open(&path) {
            for info in &file.tensors {
                let _ = file.read_f32(info);
            }
        }
        let _ = GgufSource::open(&path, "gguf:fuzz");
    });
}

#[test]
fn fuzz_series_manifest() {
    use ckpt_scan::series::manifest::SeriesManifest;
    fuzz(
        "manifest",
        vec![MANIFEST_SEED.as_bytes().to_vec()],
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let _ = SeriesManifest::parse(&text, Path::new("fuzz.toml"));
        },
    );
}

#[test]
fn fuzz_request_file() {
    use ckpt_scan::data::tasks::read_mc_items;
    let dir = tempfile::tempdir().unwrap();
    fuzz(
        "requests",
        vec![REQUEST_SEED.as_bytes().to_vec()],
        |bytes| {
            // Mutate the JSON lines, then gzip them, so the fuzzing reaches the parser, not only
            // the decompressor; every fourth input is fed raw (a corrupt gzip stream).
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(bytes).unwrap();
            let mut packed = gz.finish().unwrap();
            if bytes.len().is_multiple_of(4) {
                packed = bytes.to_vec();
            }
            let path = scratch(dir.path(), "requests.jsonl.gz", &packed);
            let _ = read_mc_items(&path);
        },
    );
}

#[test]
fn fuzz_tokenizer_json() {
    use ckpt_scan::data::tokenizer::{encode, load_tokenizer_file};
    let dir = tempfile::tempdir().unwrap();
    fuzz(
        "tokenizer",
        vec![TOKENIZER_SEED.as_bytes().to_vec()],
        |bytes| {
            let path = scratch(dir.path(), "tokenizer.json", bytes);
            if let Ok(tokenizer) = load_tokenizer_file(&path) {
                let _ = encode(&tokenizer, "ab ba aab");
            }
        },
    );
}

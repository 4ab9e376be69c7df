//! The ground floor of writing results: atomic files, tidy CSV, the run manifest's tool version,
//! digests, peak memory, and where a command's report goes by default.

pub mod atomic;
pub mod csv;
pub mod digest;
pub mod folder_lock;
pub mod manifest;
pub mod peak_memory;

use std::path::{Path, PathBuf};

/// `reports/<command>-<source>` with the source spec made safe as one folder name.
pub fn default_out_dir(command: &str, spec: &str) -> PathBuf {
    let name: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::new("reports").join(format!("{command}-{}", name.trim_matches('_')))
}

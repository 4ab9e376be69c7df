//! Writing results: atomic files, tidy CSV, run manifests.

pub mod atomic;
pub mod claim;
pub mod csv;
pub mod manifest;
pub mod plot;
pub mod scan_figures;
pub mod scan_report;
pub mod theory_section;
pub mod unit_cache;

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

//! Tidy CSV tables from plain rows, written atomically.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::output::atomic::write_atomic;

/// Writes `rows` with a header taken from the row type's field names.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .with_context(|| format!("{}: cannot serialise a row", path.display()))?;
    }
    let bytes = writer.into_inner().context("csv writer")?;
    write_atomic(path, &bytes)
}

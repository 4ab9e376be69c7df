//! An exclusive lock on a report folder, so two runs never write one folder at once.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// An exclusive lock on `<out>/.scan.lock` (released when the file closes, also on a kill).
pub fn lock_report_folder(out_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create the report folder", out_dir.display()))?;
    let path = out_dir.join(".scan.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("{}: cannot create the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another scan is writing this report folder\nhint: wait for it, or give this one another --out",
            out_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

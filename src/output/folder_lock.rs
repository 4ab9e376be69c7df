//! A report folder held for one run: an exclusive lock, so two runs never write it at once, and
//! a marker that says a run into it has not finished.

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

/// Marks a report folder whose run has not finished.
const IN_PROGRESS: &str = ".scan-in-progress";

/// A report folder this run writes: locked until dropped, marked in progress until [`finish`].
///
/// [`finish`]: ReportFolder::finish
pub struct ReportFolder {
    marker: std::path::PathBuf,
    _lock: std::fs::File,
}

impl ReportFolder {
    /// Locks `out_dir` and marks it in progress. A folder whose last run did not finish is
    /// refused unless `continue_unfinished` (`--resume` or `--force`, or a run that only
    /// assembles finished work).
    pub fn claim(out_dir: &Path, continue_unfinished: bool) -> Result<Self> {
        let lock = lock_report_folder(out_dir)?;
        let marker = out_dir.join(IN_PROGRESS);
        if marker.exists() && !continue_unfinished {
            bail!(
                "{}: a previous scan into this folder did not finish\nhint: --resume continues it (finished units are reused), --force recomputes everything",
                out_dir.display()
            );
        }
        crate::output::atomic::write_atomic(&marker, b"scan running\n")?;
        Ok(ReportFolder {
            marker,
            _lock: lock,
        })
    }

    /// The run finished: the marker goes (the lock goes with `self`).
    pub fn finish(self) -> Result<()> {
        std::fs::remove_file(&self.marker)
            .with_context(|| format!("{}: cannot remove", self.marker.display()))
    }
}

//! Scratch files for stores that outgrow memory (the hidden-state spill, the earlier-layers
//! activation store): unnamed from the start, so a run killed with `kill -9` leaves nothing in the
//! temp folder, and reserved in full when created, so a full disk fails then with a message naming
//! the folder and TMPDIR, not later with SIGBUS when a page of the mapping is first written.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// An unnamed file in `dir` with `len` bytes allocated. `what` names the store in errors.
pub fn create_reserved(dir: &Path, len: u64, what: &str) -> Result<File> {
    let free = free_bytes(dir)?;
    if len > free {
        bail!(
            "{}: the {what} needs {len} bytes but the folder has {free} free\nhint: set TMPDIR to a folder with more free space",
            dir.display()
        );
    }
    // Linux: O_TMPFILE, never linked into the folder; elsewhere created and unlinked at once.
    let file = tempfile::tempfile_in(dir)
        .with_context(|| format!("{}: cannot create the {what} (TMPDIR)", dir.display()))?;
    reserve(&file, len).with_context(|| {
        format!(
            "{}: cannot reserve {len} bytes for the {what}\nhint: set TMPDIR to a folder with more free space",
            dir.display()
        )
    })?;
    Ok(file)
}

/// Bytes available to an unprivileged user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{}: path holds a NUL byte", dir.display()))?;
    // SAFETY: statvfs writes only into `stats`, which is a plain C struct; `path` is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{}: cannot read free space (TMPDIR)", dir.display()));
    }
    // The field types differ between platforms (u32 or u64); widen whatever they are.
    #[allow(clippy::unnecessary_cast)]
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Sizes `file` to `len` bytes with the blocks allocated, so writing through a mapping cannot
/// meet a full disk later.
pub fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to a sparse file (the free-space check in
        // `create_reserved` is then the only guard).
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_larger_than_the_free_space_is_refused_naming_tmpdir() {
        let dir = tempfile::tempdir().unwrap();
        let e = create_reserved(dir.path(), u64::MAX / 4, "hidden-state spill")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hidden-state spill") && e.contains("TMPDIR"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn scratch_files_are_reserved_and_unnamed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = create_reserved(dir.path(), 1 << 20, "test store").unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), 1 << 20);
        // Blocks allocated (512-byte units), not a sparse hole.
        assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

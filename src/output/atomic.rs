//! Atomic file writes: a temp file in the same folder, fsynced, then renamed over the target, so a
//! reader (or a killed run) never sees half a file.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut tmp = temp_file_in(dir, ".ckpt-scan-", "")
        .with_context(|| format!("{}: cannot create a temp file", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: write failed", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot rename the temp file into place", path.display()))?;
    Ok(())
}

/// Checks, before any work, that files can be created in folder `dir` (which may not exist yet):
/// its nearest existing ancestor must be a folder we can write to. Creates nothing that stays, so a
/// refused run leaves no empty folders behind. `flag` names the option in the error (`--out`).
pub fn check_output_dir(dir: &Path, flag: &str) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => anyhow::bail!(
                "{flag} {}: {} is not a folder",
                dir.display(),
                existing.display()
            ),
            // A file further up gives ENOTDIR here; walking up reaches it and names it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
                    _ => {
                        existing = Path::new(".");
                        break;
                    }
                }
            }
            Err(e) => anyhow::bail!("{flag} {}: {e}", dir.display()),
        }
    }
    // Trying is the only honest test (permissions, ACLs, read-only mounts); the probe file is
    // unlinked when it drops.
    tempfile::Builder::new()
        .prefix(".ckpt-scan-probe-")
        .tempfile_in(existing)
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "{flag} {}: cannot create files in {}: {e}",
                dir.display(),
                existing.display()
            )
        })
}

/// A temp file in `dir` for renaming into place, created readable by everyone (0644 on Unix) as
/// an ordinary output file would be: tempfile's default of 0600 would survive the rename and leave
/// reports and checkpoints unreadable to other users of a shared machine.
pub fn temp_file_in(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644, "{mode:o}");
        }
    }

    #[test]
    fn unusable_output_folder_is_found_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = check_output_dir(&file.join("sub"), "--out").unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
        let e = check_output_dir(&file, "--out").unwrap_err();
        assert!(e.to_string().starts_with("--out "), "{e}");
        // A folder not yet there is fine, and checking creates nothing.
        check_output_dir(&dir.path().join("new/deeper"), "--out").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("read-only");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
            // root ignores permission bits; the check is only meaningful for other users.
            if std::fs::write(ro.join("probe"), b"").is_err() {
                let e = check_output_dir(&ro.join("out"), "--cache-dir").unwrap_err();
                assert!(e.to_string().contains("cannot create files"), "{e}");
            }
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

//! Files a user names as input (weights, configs, text, tokenizers): regular files only, opened
//! without blocking, and text read under a size cap.
//!
//! A FIFO opened for reading blocks until a writer appears, and `/dev/zero` never ends; both have
//! been given as `model.safetensors` or `--text`. Opening with `O_NONBLOCK` and checking the file
//! type on the open descriptor (not on the path, which could change between the check and the
//! open) refuses them at once.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest text file read whole into memory (`--text FILE`, calibration text): far above any
/// corpus the analyses tokenize (they read at most a few million tokens), far below a machine's RAM.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Opens `path` for reading when it is a regular file (symbolic links followed). Folders give
/// EISDIR, link loops ELOOP, FIFOs, devices and sockets an `InvalidInput` error naming the type.
pub fn open_regular(path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?
    };
    #[cfg(not(unix))]
    let file = File::open(path)?;
    let file_type = file.metadata()?.file_type();
    if file_type.is_dir() {
        #[cfg(unix)]
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
        #[cfg(not(unix))]
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a folder"));
    }
    if !file_type.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file (a {})", describe(&file_type)),
        ));
    }
    #[cfg(unix)]
    {
        // Back to blocking reads: the descriptor is a regular file, where the flag never mattered.
        use std::os::unix::io::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; only the status flags change.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(file)
}

/// Checks that `path` is a regular file without keeping it open (for readers that open it
/// themselves, such as the tokenizers crate).
pub fn check_regular(path: &Path) -> io::Result<()> {
    open_regular(path).map(drop)
}

/// Reads a regular file of at most `max_bytes` bytes as UTF-8 text.
pub fn read_text_capped(path: &Path, max_bytes: u64) -> io::Result<String> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        return Err(too_large(len, max_bytes));
    }
    let mut text = String::new();
    // `take` guards against a file that grows while it is read.
    file.take(max_bytes + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max_bytes {
        return Err(too_large(text.len() as u64, max_bytes));
    }
    Ok(text)
}

fn too_large(len: u64, max_bytes: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{len} bytes, more than the {} MiB a text input may hold",
            max_bytes >> 20
        ),
    )
}

fn describe(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    let _ = file_type;
    "special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates a file system entry.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[cfg(unix)]
    #[test]
    fn fifo_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file (a FIFO)"), "{e}");
        let e = read_text_capped(Path::new("/dev/zero"), MAX_TEXT_BYTES).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn folders_and_link_loops_are_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{e}");
        let a = dir.path().join("a");
        std::os::unix::fs::symlink(dir.path().join("b"), &a).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("b")).unwrap();
        let e = open_regular(&a).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    }

    #[test]
    fn text_above_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_text_capped(&path, 10).unwrap(), "0123456789");
        let e = read_text_capped(&path, 9).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
}

//! Verified downloads into the cache's `blobs/`.
//!
//! hf-hub 0.5 writes `blobs/<etag>.part`, resumes from whatever `.part` it finds, and renames it
//! into place without checking its length or hash, so a body that ends early without a
//! Content-Length becomes a complete-looking blob. Here bytes go to a private temp file, a cut-off
//! transfer resumes with a range request from what this process received, and the rename happens
//! only after the size and (for LFS files, whose etag is the sha256) the hash match.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::client::{content_range, Attempt, Failure, HubClient, RemoteFile};
use crate::error::{SourceError, SourceResult};
use crate::output::atomic::temp_file_in;
use crate::output::digest::{hex, is_sha256_hex};

const COPY_CHUNK_BYTES: usize = 1 << 20;

impl HubClient {
    /// Downloads `remote` to `dest`. Bytes stream into a temp file beside `dest`, a cut-off
    /// transfer resumes with a range request, and the file is renamed to `dest` only once its
    /// size (and its sha256, when the etag is one) match; on any failure the temp file is deleted,
    /// so nothing partial ever sits at `dest`.
    pub fn download(&self, repo: &str, remote: &RemoteFile, dest: &Path) -> SourceResult<()> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e))?;
        let mut temp =
            temp_file_in(dir, ".ckpt-scan-", ".incomplete").map_err(|e| SourceError::io(dir, e))?;
        let mut progress = Progress {
            hasher: Sha256::new(),
            written: 0,
        };
        self.retrying(|| self.transfer(repo, remote, temp.as_file_mut(), &mut progress))?;
        if is_sha256_hex(&remote.etag) {
            let actual = hex(&progress.hasher.finalize());
            if actual != remote.etag {
                return Err(SourceError::ChecksumMismatch {
                    path: remote.label.clone().into(),
                    expected: remote.etag.clone(),
                    actual,
                });
            }
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| SourceError::io(temp.path(), e))?;
        temp.persist(dest)
            .map_err(|e| SourceError::io(dest, e.error))?;
        Ok(())
    }

    /// One attempt at the rest of a download, from `progress.written` on.
    fn transfer(
        &self,
        repo: &str,
        remote: &RemoteFile,
        file: &mut File,
        progress: &mut Progress,
    ) -> Attempt<()> {
        let url = &remote.url;
        let range = (progress.written > 0).then(|| format!("bytes={}-", progress.written));
        let response = self.call(url, repo, range.as_deref())?;
        match response.status().as_u16() {
            206 if content_range(&response).map(|(start, _)| start) == Some(progress.written) => {}
            // No usable range: the server sent the whole file, so start over.
            200 => {
                progress
                    .restart(file)
                    .map_err(|e| fatal_io(&remote.label, e))?;
            }
            206 => {
                return Err(Failure::Fatal(SourceError::HubHttp {
                    url: url.clone(),
                    message: format!(
                        "asked for bytes from {} but got Content-Range {:?}",
                        progress.written,
                        response.headers().get("content-range")
                    ),
                }))
            }
            404 => {
                return Err(Failure::Fatal(SourceError::HubHttp {
                    url: url.clone(),
                    message: "HTTP 404 for a file whose metadata was just read".into(),
                }))
            }
            status => return Err(self.status_failure(url, repo, status)),
        }
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; COPY_CHUNK_BYTES];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Retry(truncated(remote, progress.written, Some(e)))),
            };
            if progress.written + n as u64 > remote.size {
                return Err(Failure::Fatal(SourceError::HubHttp {
                    url: url.clone(),
                    message: format!(
                        "the server sent more than the {} bytes announced",
                        remote.size
                    ),
                }));
            }
            file.write_all(&buffer[..n])
                .map_err(|e| fatal_io(&remote.label, e))?;
            progress.hasher.update(&buffer[..n]);
            progress.written += n as u64;
        }
        if progress.written < remote.size {
            // A body without Content-Length that ends early looks complete to the HTTP layer.
            return Err(Failure::Retry(truncated(remote, progress.written, None)));
        }
        Ok(())
    }
}

/// Bytes received so far and their running hash.
struct Progress {
    hasher: Sha256,
    written: u64,
}

impl Progress {
    fn restart(&mut self, file: &mut File) -> std::io::Result<()> {
        if self.written > 0 {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            self.hasher = Sha256::new();
            self.written = 0;
        }
        Ok(())
    }
}

fn fatal_io(label: &str, error: std::io::Error) -> Failure {
    Failure::Fatal(SourceError::io(format!("{label} (temp file)"), error))
}

fn truncated(remote: &RemoteFile, received: u64, error: Option<std::io::Error>) -> SourceError {
    let cause = error.map_or(String::new(), |e| format!(" ({e})"));
    SourceError::Truncated {
        path: remote.label.clone().into(),
        message: format!(
            "received {received} of {} bytes from {}{cause}; the partial download was discarded",
            remote.size, remote.url
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_of_the_right_length_is_a_sha256() {
        assert!(is_sha256_hex(&"a1".repeat(32)));
        assert!(!is_sha256_hex(&"A1".repeat(32)));
        assert!(!is_sha256_hex(&"a1".repeat(20)));
    }
}

//! One commit's files: taken from the HF cache when there, otherwise (online) downloaded into it.

use std::path::{Path, PathBuf};

use super::cache::{Cached, RepoCache};
use super::client::HubClient;
use crate::error::{SourceError, SourceResult};
use crate::printer::Printer;
use crate::source::safetensors::{index_shard_names, Shard, ShardHeader, INDEX_FILE, SINGLE_FILE};

/// What is known about a shard once the revision is open.
pub enum ShardAtOpen {
    /// On disk and mapped.
    Mapped(Shard),
    /// Only its header, read with range requests; the data comes on first use.
    Remote(ShardHeader),
    /// Offline and not in the cache.
    NotCached,
}

pub struct Snapshot {
    pub repo: String,
    /// As the user wrote it (branch, tag or sha), for messages.
    pub revision: String,
    pub commit: String,
    pub cache: RepoCache,
    /// `None` when offline.
    pub client: Option<HubClient>,
    pub printer: Printer,
}

impl Snapshot {
    /// The local path of `file`; `Ok(None)` when the repo has no such file. Offline, a file that
    /// is not cached is an error unless `optional`.
    pub fn fetch(&self, file: &str, optional: bool) -> SourceResult<Option<PathBuf>> {
        match self.cache.lookup(&self.commit, file) {
            Cached::Present(path) => return Ok(Some(path)),
            Cached::KnownMissing => return Ok(None),
            Cached::Absent => {}
        }
        let Some(client) = &self.client else {
            return if optional {
                Ok(None)
            } else {
                Err(self.not_cached(file.to_string()))
            };
        };
        let Some(remote) = client.file_metadata(&self.repo, &self.commit, file)? else {
            self.cache.mark_missing(&self.commit, file)?;
            return Ok(None);
        };
        let blob = self.cache.blob_path(&remote.etag);
        // Another revision (or huggingface_hub) may hold the same blob already. One of the wrong
        // size is replaced: hf-hub 0.5 can leave a short blob behind.
        let complete = |blob: &Path| blob.metadata().is_ok_and(|m| m.len() == remote.size);
        if !complete(&blob) {
            let _lock = self.cache.lock_blob(&remote.etag)?;
            if !complete(&blob) {
                self.printer.note(format!(
                    "downloading {} ({})",
                    remote.label,
                    human_bytes(remote.size)
                ));
                client.download(&self.repo, &remote, &blob)?;
            }
        }
        self.cache.link(&self.commit, file, &remote.etag).map(Some)
    }

    /// `fetch` for a file the revision must have.
    pub fn require(&self, file: &str) -> SourceResult<PathBuf> {
        self.fetch(file, false)?
            .ok_or_else(|| SourceError::MissingFile {
                path: PathBuf::from(format!("{}@{}/{file}", self.repo, self.revision)),
            })
    }

    /// The shard files of this commit: those the index lists, else the single
    /// `model.safetensors`.
    pub fn shard_files(&self) -> SourceResult<Vec<String>> {
        if let Some(index) = self.fetch(INDEX_FILE, true)? {
            return index_shard_names(&index);
        }
        if self.fetch(SINGLE_FILE, true)?.is_some() {
            return Ok(vec![SINGLE_FILE.to_string()]);
        }
        let neither = format!("neither {INDEX_FILE} nor {SINGLE_FILE}");
        Err(match self.client {
            None => self.not_cached(neither),
            Some(_) => SourceError::malformed(
                format!("{}@{}", self.repo, self.revision),
                format!("no safetensors weights ({neither}); ckpt-scan reads safetensors only"),
            ),
        })
    }

    /// A shard's state at open: mapped when it is cached, or when it is the single file (whose
    /// tensor names are written nowhere else); otherwise its header alone, read remotely.
    pub fn shard_at_open(&self, file: &str) -> SourceResult<ShardAtOpen> {
        let cached = matches!(self.cache.lookup(&self.commit, file), Cached::Present(_));
        match &self.client {
            _ if cached || file == SINGLE_FILE => self.map_shard(file).map(ShardAtOpen::Mapped),
            None => Ok(ShardAtOpen::NotCached),
            Some(client) => {
                let url = client.file_url(&self.repo, &self.commit, file);
                let label = format!("{}/{file}", self.repo);
                client
                    .read_header(&self.repo, &url, &label)
                    .map(ShardAtOpen::Remote)
            }
        }
    }

    /// Maps a shard, downloading it first when needed. Online, a cached shard shorter than its
    /// own header says (a blob another tool left truncated) is fetched again, once.
    pub fn map_shard(&self, file: &str) -> SourceResult<Shard> {
        let path = self.require(file)?;
        match Shard::open(&path) {
            Err(error @ SourceError::Truncated { .. }) if self.client.is_some() => {
                self.printer
                    .warn(format!("{error}; downloading {file} again"));
                self.cache.unlink(&self.commit, file)?;
                Shard::open(&self.require(file)?)
            }
            other => other,
        }
    }

    pub fn not_cached(&self, missing: String) -> SourceError {
        SourceError::NotCached {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            cache_dir: self.cache.cache_dir().to_path_buf(),
            missing,
        }
    }
}

/// `1.5 GB`, `12.3 MB`, `800 B`: decimal units, as the Hub shows sizes.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_the_hub_shows_them() {
        assert_eq!(human_bytes(800), "800 B");
        assert_eq!(human_bytes(12_300_000), "12.3 MB");
        assert_eq!(human_bytes(4_970_000_000), "5.0 GB");
    }
}

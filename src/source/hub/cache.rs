//! One repo's folder in the Hugging Face cache, the layout Python's huggingface_hub and hf-hub
//! share (research/olmo2.md §5.2):
//!
//! ```text
//! <cache>/models--ORG--NAME/refs/<revision>          commit sha the revision pointed to
//! <cache>/models--ORG--NAME/snapshots/<sha>/<file>   symlink to ../../blobs/<etag>
//! <cache>/models--ORG--NAME/blobs/<etag>             file contents, complete and verified
//! <cache>/models--ORG--NAME/.no_exist/<sha>/<file>   the repo has no such file at <sha>
//! <cache>/.locks/models--ORG--NAME/<etag>.lock       held while a blob is written
//! ```
//!
//! hf-hub supplies the folder name and the `refs/` writer; reading refs, `.no_exist` markers,
//! links and eviction are here.

use std::fs::File;
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use super::BranchRef;
use crate::error::{SourceError, SourceResult};

/// What the cache knows about one file at one commit.
#[derive(Debug, PartialEq)]
pub enum Cached {
    /// Here, at this path (a snapshot link that resolves).
    Present(PathBuf),
    /// A `.no_exist` marker says the repo has no such file at this commit.
    KnownMissing,
    /// Nothing recorded.
    Absent,
}

/// A repo's folder inside a cache directory.
#[derive(Clone, Debug)]
pub struct RepoCache {
    cache_dir: PathBuf,
    repo: String,
    folder_name: String,
}

/// A 40-hex-digit lowercase git commit id (huggingface_hub's `REGEX_COMMIT_HASH`).
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder_name = Repo::new(repo.to_string(), RepoType::Model).folder_name();
        RepoCache {
            cache_dir: cache_dir.to_path_buf(),
            repo: repo.to_string(),
            folder_name,
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// `<cache>/models--ORG--NAME`.
    pub fn folder(&self) -> PathBuf {
        self.cache_dir.join(&self.folder_name)
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.folder().join("blobs").join(etag)
    }

    pub fn snapshot_path(&self, commit: &str, file: &str) -> PathBuf {
        self.folder().join("snapshots").join(commit).join(file)
    }

    fn no_exist_path(&self, commit: &str, file: &str) -> PathBuf {
        self.folder().join(".no_exist").join(commit).join(file)
    }

    /// The commit a revision resolves to without the network: a commit sha is itself, anything
    /// else is looked up in `refs/`.
    pub fn commit_for(&self, revision: &str) -> SourceResult<Option<String>> {
        if is_commit_sha(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.folder().join("refs").join(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let commit = text.trim();
                if !is_commit_sha(commit) {
                    return Err(SourceError::malformed(
                        &path,
                        format!("expected a 40-hex commit sha, found {commit:?}"),
                    ));
                }
                Ok(Some(commit.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError::io(&path, e)),
        }
    }

    /// Records that `revision` points at `commit` (hf-hub's writer, so both tools agree).
    pub fn write_ref(&self, revision: &str, commit: &str) -> SourceResult<()> {
        let repo = Repo::with_revision(self.repo.clone(), RepoType::Model, revision.to_string());
        Cache::new(self.cache_dir.clone())
            .repo(repo)
            .create_ref(commit)
            .map_err(|e| SourceError::io(self.folder().join("refs").join(revision), e))
    }

    pub fn lookup(&self, commit: &str, file: &str) -> Cached {
        let path = self.snapshot_path(commit, file);
        // `exists` follows the link, so a link to a deleted blob counts as absent.
        if path.exists() {
            Cached::Present(path)
        } else if self.no_exist_path(commit, file).exists() {
            Cached::KnownMissing
        } else {
            Cached::Absent
        }
    }

    /// Writes the `.no_exist` marker Python writes after a 404, so offline runs know the file is
    /// not merely uncached.
    pub fn mark_missing(&self, commit: &str, file: &str) -> SourceResult<()> {
        let path = self.no_exist_path(commit, file);
        create_parent(&path)?;
        File::create(&path)
            .map(drop)
            .map_err(|e| SourceError::io(&path, e))
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative link, replacing any
    /// older link, and returns the snapshot path.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> SourceResult<PathBuf> {
        let path = self.snapshot_path(commit, file);
        create_parent(&path)?;
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path).map_err(|e| SourceError::io(&path, e))?;
        }
        let depth = Path::new(file).components().count() + 1;
        let mut target: PathBuf = std::iter::repeat_n("..", depth).collect();
        target.push("blobs");
        target.push(etag);
        link_file(&target, &self.blob_path(etag), &path).map_err(|e| SourceError::io(&path, e))?;
        Ok(path)
    }

    /// Removes the snapshot link of `file` (not the blob), so the next fetch asks the Hub again.
    pub fn unlink(&self, commit: &str, file: &str) -> SourceResult<()> {
        let path = self.snapshot_path(commit, file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SourceError::io(&path, e)),
        }
    }

    /// Opens and exclusively locks the lock file for one blob; the lock is released when the
    /// returned file is dropped.
    pub fn lock_blob(&self, etag: &str) -> SourceResult<File> {
        let path = self
            .cache_dir
            .join(".locks")
            .join(&self.folder_name)
            .join(format!("{etag}.lock"));
        create_parent(&path)?;
        let file = File::create(&path).map_err(|e| SourceError::io(&path, e))?;
        file.lock().map_err(|e| SourceError::io(&path, e))?;
        Ok(file)
    }

    /// Branches recorded under `refs/` (nested names such as `refs/pr/1` included), by name.
    /// Refs named by a commit sha, which hf-hub writes when asked for a sha, are skipped.
    pub fn branches(&self) -> SourceResult<Vec<BranchRef>> {
        let root = self.folder().join("refs");
        let mut found = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io(&dir, e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| SourceError::io(&dir, e))?.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let Ok(relative) = path.strip_prefix(&root) else {
                    continue;
                };
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if is_commit_sha(&name) {
                    continue;
                }
                let text = std::fs::read_to_string(&path).map_err(|e| SourceError::io(&path, e))?;
                let target_commit = text.trim();
                if is_commit_sha(target_commit) {
                    found.push(BranchRef {
                        name,
                        target_commit: target_commit.to_string(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Removes `snapshots/<commit>/<file>` and its blob unless another snapshot still links to
    /// that blob; returns the bytes freed.
    pub fn remove(&self, commit: &str, file: &str) -> SourceResult<u64> {
        let path = self.snapshot_path(commit, file);
        let Ok(target) = std::fs::read_link(&path) else {
            return Ok(0);
        };
        std::fs::remove_file(&path).map_err(|e| SourceError::io(&path, e))?;
        let Some(etag) = target.file_name() else {
            return Ok(0);
        };
        let blob = self.folder().join("blobs").join(etag);
        if self.blob_is_linked(etag.to_string_lossy().as_ref())? {
            return Ok(0);
        }
        let bytes = blob.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&blob) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(SourceError::io(&blob, e)),
        }
    }

    /// Whether any snapshot link still points at `blobs/<etag>`.
    fn blob_is_linked(&self, etag: &str) -> SourceResult<bool> {
        let mut pending = vec![self.folder().join("snapshots")];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.map_err(|e| SourceError::io(&dir, e))?.path();
                match std::fs::read_link(&path) {
                    Ok(target) if target.file_name().is_some_and(|n| n == etag) => return Ok(true),
                    Ok(_) => {}
                    Err(_) if path.is_dir() => pending.push(path),
                    Err(_) => {}
                }
            }
        }
        Ok(false)
    }
}

fn create_parent(path: &Path) -> SourceResult<()> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| SourceError::io(dir, e)),
        None => Ok(()),
    }
}

#[cfg(unix)]
fn link_file(relative_target: &Path, _blob: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(relative_target, link)
}

/// Without symlinks, a hard link (or a copy) stands in, as huggingface_hub does on Windows.
#[cfg(not(unix))]
fn link_file(_relative_target: &Path, blob: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::hard_link(blob, link).or_else(|_| std::fs::copy(blob, link).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn sha_revisions_resolve_to_themselves_and_branches_through_refs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        assert_eq!(cache.folder(), dir.path().join("models--org--name"));
        assert_eq!(cache.commit_for(SHA).unwrap().as_deref(), Some(SHA));
        assert_eq!(cache.commit_for("main").unwrap(), None);
        cache.write_ref("main", SHA).unwrap();
        cache.write_ref("refs/pr/1", SHA).unwrap();
        assert_eq!(cache.commit_for("main").unwrap().as_deref(), Some(SHA));
        let names: Vec<String> = cache
            .branches()
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["main", "refs/pr/1"]);
    }

    #[test]
    fn a_ref_that_is_not_a_sha_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        cache.write_ref("main", "not-a-sha").unwrap();
        let e = cache.commit_for("main").unwrap_err().to_string();
        assert!(e.contains("refs/main") && e.contains("40-hex"), "{e}");
    }

    #[test]
    fn links_resolve_and_removal_keeps_shared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "org/name");
        let other = "f".repeat(40);
        std::fs::create_dir_all(cache.folder().join("blobs")).unwrap();
        std::fs::write(cache.blob_path("etag1"), b"abc").unwrap();
        assert_eq!(cache.lookup(SHA, "a.json"), Cached::Absent);
        let path = cache.link(SHA, "a.json", "etag1").unwrap();
        cache.link(&other, "a.json", "etag1").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(cache.lookup(SHA, "a.json"), Cached::Present(path));
        assert_eq!(cache.remove(SHA, "a.json").unwrap(), 0, "still linked");
        assert!(cache.blob_path("etag1").exists());
        assert_eq!(cache.remove(&other, "a.json").unwrap(), 3);
        assert!(!cache.blob_path("etag1").exists());
        cache.mark_missing(SHA, "tokenizer.json").unwrap();
        assert_eq!(cache.lookup(SHA, "tokenizer.json"), Cached::KnownMissing);
    }
}

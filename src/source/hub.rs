//! Hugging Face Hub revisions as a weight source: a branch or sha resolved to a commit, files kept
//! in the shared HF cache, and each shard downloaded the first time one of its tensors is read
//! (research/olmo2.md §3.1–3.3, §5).
//!
//! Opening a revision downloads `config.json`, the shard index (or the single
//! `model.safetensors`) and `tokenizer.json` when the repo has one, and reads every shard's header
//! with a range request so tensors can be listed without their data. With `HF_HUB_OFFLINE` the
//! same files come from the cache alone and no connection is made.

mod cache;
mod client;
mod download;
mod settings;
mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tch::Tensor;

pub use cache::{is_commit_sha, Cached, RepoCache};
pub use settings::{HubSettings, DEFAULT_ENDPOINT};

use super::safetensors::{Shard, ShardHeader};
use super::{Provenance, TensorInfo, WeightSource};
use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};
use crate::printer::Printer;
use client::HubClient;
use snapshot::{ShardAtOpen, Snapshot};

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A branch and the commit it points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BranchRef {
    pub name: String,
    pub target_commit: String,
}

/// Where a branch listing came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum RefsOrigin {
    /// The Hub's refs API: every branch.
    Server { url: String },
    /// `refs/` in the local cache (offline): only branches fetched before.
    Cache { folder: PathBuf },
}

#[derive(Clone, Debug, Serialize)]
pub struct RefListing {
    pub branches: Vec<BranchRef>,
    pub origin: RefsOrigin,
}

/// The branches of a model repo: from the Hub, or offline the cached subset.
pub fn list_refs(repo: &str, settings: &HubSettings) -> SourceResult<RefListing> {
    check_repo_id(repo)?;
    if settings.offline {
        let cache = RepoCache::new(&settings.cache_dir, repo);
        return Ok(RefListing {
            branches: cache.branches()?,
            origin: RefsOrigin::Cache {
                folder: cache.folder(),
            },
        });
    }
    let client = HubClient::new(settings)?;
    let url = client.refs_url(repo);
    match client.list_branches(repo)? {
        Some(branches) => Ok(RefListing {
            branches,
            origin: RefsOrigin::Server { url },
        }),
        None => Err(SourceError::HubHttp {
            url,
            message: format!("HTTP 404: there is no model repo {repo}"),
        }),
    }
}

/// A shard whose header is known and whose data is mapped on first use.
struct LazyShard {
    file: String,
    /// Read with a range request; `None` when the shard was already in the cache at open.
    remote_header: Option<ShardHeader>,
    mapped: OnceLock<Shard>,
    /// Held while the shard downloads so two readers do not fetch it twice.
    loading: Mutex<()>,
}

impl LazyShard {
    fn header(&self) -> Option<&ShardHeader> {
        self.mapped
            .get()
            .map(Shard::header)
            .or(self.remote_header.as_ref())
    }
}

/// A Hub revision (`hf:ORG/NAME@REVISION`), read through the local HF cache.
pub struct HubSource {
    snapshot: Snapshot,
    config: ModelConfig,
    provenance: Provenance,
    shards: Vec<LazyShard>,
    /// Tensor name → index into `shards`, sorted by name for a stable listing.
    location: BTreeMap<String, usize>,
    tokenizer: Option<PathBuf>,
}

impl HubSource {
    /// Resolves `revision`, fetches config, index and tokenizer, and reads the shard headers.
    pub fn open(
        repo: &str,
        revision: &str,
        spec: &str,
        settings: &HubSettings,
    ) -> SourceResult<Self> {
        check_repo_id(repo)?;
        check_revision(revision)?;
        let cache = RepoCache::new(&settings.cache_dir, repo);
        let (commit, client) = if settings.offline {
            let commit = cache
                .commit_for(revision)?
                .ok_or_else(|| SourceError::NotCached {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    cache_dir: settings.cache_dir.clone(),
                    missing: format!(
                        "no {}",
                        cache.folder().join("refs").join(revision).display()
                    ),
                })?;
            (commit, None)
        } else {
            let client = HubClient::new(settings)?;
            let commit = client.resolve_commit(repo, revision)?;
            if revision != commit {
                cache.write_ref(revision, &commit)?;
            }
            (commit, Some(client))
        };
        let snapshot = Snapshot {
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit,
            cache,
            client,
            printer: Printer {
                quiet: settings.quiet,
            },
        };
        let config = ModelConfig::from_file(&snapshot.require(CONFIG_FILE)?)?;
        let mut shards = Vec::new();
        let mut missing = Vec::new();
        for file in snapshot.shard_files()? {
            let (mapped, remote_header) = match snapshot.shard_at_open(&file)? {
                ShardAtOpen::Mapped(shard) => (OnceLock::from(shard), None),
                ShardAtOpen::Remote(header) => (OnceLock::new(), Some(header)),
                ShardAtOpen::NotCached => {
                    missing.push(file);
                    continue;
                }
            };
            shards.push(LazyShard {
                file,
                remote_header,
                mapped,
                loading: Mutex::new(()),
            });
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(snapshot.not_cached(format!(
                "{} of {} shards: {}",
                missing.len(),
                shards.len() + missing.len(),
                missing.join(", ")
            )));
        }
        let mut location = BTreeMap::new();
        for (index, shard) in shards.iter().enumerate() {
            if let Some(header) = shard.header() {
                for name in header.names() {
                    location.insert(name, index);
                }
            }
        }
        let tokenizer = snapshot.fetch(TOKENIZER_FILE, true)?;
        let provenance = Provenance {
            spec: spec.to_string(),
            kind: if snapshot.client.is_some() {
                "hub"
            } else {
                "hf-cache"
            }
            .into(),
            files: shards
                .iter()
                .map(|s| snapshot.cache.snapshot_path(&snapshot.commit, &s.file))
                .collect(),
            revision_sha: Some(snapshot.commit.clone()),
            init: None,
        };
        Ok(HubSource {
            snapshot,
            config,
            provenance,
            shards,
            location,
            tokenizer,
        })
    }

    /// The commit the revision resolved to.
    pub fn commit(&self) -> &str {
        &self.snapshot.commit
    }

    /// Shard files whose data is on disk now.
    pub fn local_shards(&self) -> Vec<&str> {
        self.shards
            .iter()
            .filter(|s| s.mapped.get().is_some())
            .map(|s| s.file.as_str())
            .collect()
    }

    /// Deletes this revision's shard files from the cache (blobs another snapshot still links
    /// to are kept) and returns the bytes freed; later reads download them again. Scanning many
    /// checkpoints of a large model needs this to stay within disk.
    pub fn evict(&mut self) -> SourceResult<u64> {
        let mut freed = 0;
        for shard in &mut self.shards {
            if let Some(mapped) = shard.mapped.take() {
                if shard.remote_header.is_none() {
                    shard.remote_header = Some(mapped.into_header());
                }
            }
            freed += self
                .snapshot
                .cache
                .remove(&self.snapshot.commit, &shard.file)?;
        }
        Ok(freed)
    }

    /// The mapped shard at `index`, downloading it first if needed.
    fn shard(&self, index: usize) -> SourceResult<&Shard> {
        let lazy = &self.shards[index];
        if let Some(shard) = lazy.mapped.get() {
            return Ok(shard);
        }
        let _loading = lazy.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shard) = lazy.mapped.get() {
            return Ok(shard);
        }
        let shard = self.snapshot.map_shard(&lazy.file)?;
        Ok(lazy.mapped.get_or_init(|| shard))
    }
}

impl WeightSource for HubSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.location
            .iter()
            .filter_map(|(name, &i)| self.shards[i].header()?.info(name))
            .collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    fn read(&self, name: &str) -> SourceResult<Tensor> {
        match self.location.get(name) {
            Some(&i) => self.shard(i)?.read(name),
            None => Err(SourceError::MissingTensor {
                name: name.to_string(),
                location: self.provenance.spec.clone(),
            }),
        }
    }

    fn tokenizer_path(&self) -> Option<PathBuf> {
        self.tokenizer.clone()
    }
}

/// `ORG/NAME` with characters the Hub allows; both parts become path and URL segments.
fn check_repo_id(repo: &str) -> SourceResult<()> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(SourceError::BadSpec {
            spec: format!("hf:{repo}"),
            message: "expected ORG/NAME made of letters, digits, '-', '_' and '.'".into(),
        })
    }
}

/// A branch, tag or sha; slashes (`refs/pr/1`) allowed, but no segment that climbs out of
/// `refs/` or breaks a URL.
fn check_revision(revision: &str) -> SourceResult<()> {
    let ok = !revision.is_empty()
        && revision.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(SourceError::BadSpec {
            spec: revision.to_string(),
            message: "a revision is a branch, tag or commit sha: letters, digits, '-', '_', '.', \
                      '+' and '/' between non-empty parts"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_revisions_cannot_leave_the_cache() {
        assert!(check_repo_id("allenai/OLMo-2-1124-7B").is_ok());
        for bad in ["a", "a/b/c", "../b", "a/..", "a/b c", "/b"] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        for good in ["main", "stage1-step1000-tokens5B", "refs/pr/1", "v1.0"] {
            assert!(check_revision(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/../../b",
            "a//b",
            "/abs",
            "a b",
            "a?b",
            "a%2Fb",
        ] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }
}

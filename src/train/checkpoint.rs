//! Writing training checkpoints as a local Hugging Face cache repo, the layout `source::hub::cache`
//! reads, so `hf:ckpt-scan/NAME@stage1-step{N}-tokens{M}K` resolves offline like an OLMo-2 branch:
//!
//! ```text
//! <series_dir>/models--ckpt-scan--NAME/blobs/<sha256>              file contents
//! <series_dir>/models--ckpt-scan--NAME/snapshots/<commit>/<file>   symlink ../../blobs/<sha256>
//! <series_dir>/models--ckpt-scan--NAME/refs/<branch>               the commit (written last)
//! ```
//!
//! The commit id is the first 40 hex digits of sha256 over the snapshot's (file, blob sha256)
//! list, so equal checkpoints get equal ids. Each step is atomic: blobs are written to temp files
//! and renamed, the snapshot folder is built under a temp name and renamed, and the ref is written
//! last, so a reader that finds a ref finds a complete snapshot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::output::atomic::write_atomic;
use crate::source::export::serialize_f32;
use crate::source::hub::RepoCache;
use crate::train::tokenizer::{EOS_TOKEN, PAD_TOKEN};

/// Test hook: when set to a step number, the writer aborts the process half-way through that
/// step's checkpoint (blobs written, snapshot and ref not), as a crash or `kill -9` would.
pub const ABORT_ENV: &str = "CKPT_SCAN_TRAIN_ABORT_AT_STEP";

/// The files of one checkpoint, by name.
pub struct CheckpointFiles {
    pub files: Vec<(String, Vec<u8>)>,
}

impl CheckpointFiles {
    /// config.json, model.safetensors (f32), tokenizer.json and tokenizer_config.json.
    pub fn new(
        config: &ModelConfig,
        weights: &[(String, &Tensor)],
        tokenizer_json: &[u8],
    ) -> Result<Self> {
        let mut hf_config = config.to_hf_json();
        hf_config["torch_dtype"] = "float32".into();
        hf_config["initializer_range"] = 0.02.into();
        hf_config["rope_scaling"] = serde_json::Value::Null;
        hf_config["attention_dropout"] = 0.0.into();
        hf_config["use_cache"] = true.into();
        let tokenizer_config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "add_bos_token": false,
            "model_max_length": config.max_position_embeddings,
        });
        Ok(CheckpointFiles {
            files: vec![
                ("config.json".into(), serde_json::to_vec_pretty(&hf_config)?),
                ("model.safetensors".into(), safetensors_bytes(weights)?),
                ("tokenizer.json".into(), tokenizer_json.to_vec()),
                (
                    "tokenizer_config.json".into(),
                    serde_json::to_vec_pretty(&tokenizer_config)?,
                ),
            ],
        })
    }

    /// `(file, sha256 hex)` sorted by file name.
    fn digests(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .files
            .iter()
            .map(|(name, bytes)| (name.clone(), format!("{:x}", Sha256::digest(bytes))))
            .collect();
        out.sort();
        out
    }

    /// The deterministic 40-hex commit id of these files.
    pub fn commit(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, digest) in self.digests() {
            hasher.update(name.as_bytes());
            hasher.update([0u8]);
            hasher.update(digest.as_bytes());
            hasher.update([b'\n']);
        }
        format!("{:x}", hasher.finalize())[..40].to_string()
    }
}

/// Named tensors as f32 safetensors bytes (sorted by name, as `save_pretrained` writes them).
fn safetensors_bytes(weights: &[(String, &Tensor)]) -> Result<Vec<u8>> {
    let tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|(n, t)| {
            let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float);
            (n.clone(), t.contiguous())
        })
        .collect();
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    serialize_f32(&tensors, Some(metadata))
}

/// The series repo inside a cache folder.
pub struct SeriesRepo {
    pub cache: RepoCache,
}

impl SeriesRepo {
    pub fn new(series_dir: &Path, repo: &str) -> Self {
        SeriesRepo {
            cache: RepoCache::new(series_dir, repo),
        }
    }

    /// Writes `files` as the snapshot of `branch` (blobs, snapshot, then the ref) and returns the
    /// commit id. `step` only matters for the [`ABORT_ENV`] test hook.
    pub fn write(&self, branch: &str, files: &CheckpointFiles, step: u64) -> Result<String> {
        let commit = files.commit();
        let folder = self.cache.folder();
        for (name, bytes) in &files.files {
            let blob = self
                .cache
                .blob_path(&format!("{:x}", Sha256::digest(bytes)));
            let complete = blob.metadata().is_ok_and(|m| m.len() == bytes.len() as u64);
            if !complete {
                write_atomic(&blob, bytes)
                    .with_context(|| format!("writing {name} of {branch}"))?;
            }
        }
        if std::env::var(ABORT_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            == Some(step)
        {
            std::process::abort();
        }
        let snapshot = folder.join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            let snapshots = folder.join("snapshots");
            std::fs::create_dir_all(&snapshots)?;
            let staging = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempdir_in(&snapshots)
                .with_context(|| format!("{}: cannot create a temp folder", snapshots.display()))?;
            for (name, sha) in files.digests() {
                // Same depth as snapshots/<commit>/, so the relative link holds after the rename.
                let target = PathBuf::from("../../blobs").join(sha);
                std::os::unix::fs::symlink(&target, staging.path().join(&name))
                    .with_context(|| format!("linking {name} into {}", staging.path().display()))?;
            }
            let staged = staging.keep();
            std::fs::rename(&staged, &snapshot).with_context(|| {
                format!(
                    "{}: cannot rename the snapshot into place",
                    snapshot.display()
                )
            })?;
        }
        write_atomic(&folder.join("refs").join(branch), commit.as_bytes())?;
        Ok(commit)
    }

    /// Points `branch` at an existing commit (used for `main` = the final checkpoint).
    pub fn point(&self, branch: &str, commit: &str) -> Result<()> {
        write_atomic(
            &self.cache.folder().join("refs").join(branch),
            commit.as_bytes(),
        )
    }

    /// The snapshot folder of a branch, when its ref and snapshot both exist.
    pub fn snapshot_of(&self, branch: &str) -> Option<PathBuf> {
        let commit = self.cache.commit_for(branch).ok()??;
        let dir = self.cache.folder().join("snapshots").join(commit);
        dir.join("model.safetensors").exists().then_some(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::olmo2_preset;

    #[test]
    fn commit_ids_are_deterministic_and_content_addressed() {
        let config = olmo2_preset("olmo2-1b").unwrap();
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let named = [("a".to_string(), &w)];
        let one = CheckpointFiles::new(&config, &named, b"{}").unwrap();
        let two = CheckpointFiles::new(&config, &named, b"{}").unwrap();
        assert_eq!(one.commit(), two.commit());
        assert_eq!(one.commit().len(), 40);
        let other = CheckpointFiles::new(&config, &named, b"{ }").unwrap();
        assert_ne!(one.commit(), other.commit());

        let dir = tempfile::tempdir().unwrap();
        let repo = SeriesRepo::new(dir.path(), "ckpt-scan/t");
        let commit = repo.write("stage1-step0-tokens0K", &one, 0).unwrap();
        let snapshot = repo.snapshot_of("stage1-step0-tokens0K").unwrap();
        assert!(snapshot.ends_with(&commit));
        assert_eq!(
            std::fs::read(snapshot.join("tokenizer.json")).unwrap(),
            b"{}"
        );
        // Writing again is a no-op that keeps the same commit.
        assert_eq!(
            repo.write("stage1-step0-tokens0K", &one, 0).unwrap(),
            commit
        );
        assert!(repo.snapshot_of("main").is_none());
    }
}

//! A manifest resolved into the checkpoints a scan will visit, in order: the series' own
//! checkpoints by step, then the random initialisations.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::presets::preset;
use crate::config::ModelConfig;
use crate::series::manifest::{expand, parse_scheme, SeriesManifest};
use crate::series::sampling::sample_branches;
use crate::source::branch::BranchName;
use crate::source::hub::{list_refs, HubSettings};

/// Where a planned checkpoint's weights come from.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum PlannedSource {
    /// A branch of the series' repo.
    Hub { repo: String, revision: String },
    /// Any source string (local folder, GGUF file, …).
    Spec { spec: String },
    /// A random initialisation; `config: None` means the series' own config.
    Init {
        config: Option<String>,
        seed: u64,
        scheme: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct PlannedCheckpoint {
    /// Unique within the scan: the branch name, the source's label, or `init-…`.
    pub label: String,
    /// Optimizer step (0 for random inits), when known.
    pub step: Option<u64>,
    /// Tokens as the branch name writes them (`tokens5B` → `5B`), when known.
    pub tokens: Option<String>,
    pub source: PlannedSource,
}

impl PlannedCheckpoint {
    pub fn is_init(&self) -> bool {
        matches!(self.source, PlannedSource::Init { .. })
    }
}

/// The resolved plan plus what integrity checks found on the way.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub checkpoints: Vec<PlannedCheckpoint>,
    /// Listed revisions the repo does not have (skipped).
    pub missing_revisions: Vec<String>,
    /// Hub settings for the series' repo (a local cache folder is read offline).
    #[serde(skip)]
    pub hub: HubSettings,
}

impl Plan {
    /// The checkpoint whose config stands for the series: the first that is not a random init
    /// (or the first, when all are). Panics on an empty plan, which resolving refuses.
    pub fn series_checkpoint(&self) -> &PlannedCheckpoint {
        self.checkpoints
            .iter()
            .find(|c| !c.is_init())
            .or(self.checkpoints.first())
            .expect("a resolved plan has checkpoints")
    }
}

/// Resolves a manifest; `manifest_dir` anchors relative config paths.
pub fn resolve_plan(
    manifest: &SeriesManifest,
    manifest_dir: &Path,
    hub: &HubSettings,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan> {
    let mut hub = hub.clone();
    let mut checkpoints = Vec::new();
    let mut missing_revisions = Vec::new();
    if let Some(series) = &manifest.hub {
        if let Some(dir) = &series.cache_dir {
            hub.cache_dir = expand(dir, var)?.into();
            hub.offline = true;
            // Offline, a missing folder lists no branches; say so instead of "no branch matched".
            if !hub.cache_dir.is_dir() {
                anyhow::bail!(
                    "series {}: hub.cache_dir {}: not a folder\nhint: point cache_dir at the series folder `ckpt-scan train --out` wrote",
                    manifest.name,
                    hub.cache_dir.display()
                );
            }
        }
        let listing = list_refs(&series.repo, &hub)
            .with_context(|| format!("series {}: listing {}", manifest.name, series.repo))?;
        let names: Vec<String> = listing.branches.iter().map(|b| b.name.clone()).collect();
        let chosen: Vec<String> = match (&series.revisions, &series.branches) {
            (Some(revisions), _) => {
                for r in revisions {
                    if !names.contains(r) {
                        missing_revisions.push(r.clone());
                    }
                }
                revisions
                    .iter()
                    .filter(|r| names.contains(r))
                    .cloned()
                    .collect()
            }
            (None, Some(sampling)) => sample_branches(&names, sampling)
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
            (None, None) => Vec::new(),
        };
        for revision in chosen {
            let parsed = BranchName::parse(&revision);
            let checkpoint = parsed.checkpoint();
            checkpoints.push(PlannedCheckpoint {
                label: revision.clone(),
                step: checkpoint.map(|c| c.step),
                tokens: revision
                    .rsplit_once("-tokens")
                    .map(|(_, t)| t.to_string())
                    .filter(|_| checkpoint.is_some()),
                source: PlannedSource::Hub {
                    repo: series.repo.clone(),
                    revision,
                },
            });
        }
    }
    for entry in &manifest.sources {
        checkpoints.push(PlannedCheckpoint {
            label: entry.label.clone(),
            step: entry.step,
            tokens: None,
            source: PlannedSource::Spec {
                spec: expand(&entry.source, var)?,
            },
        });
    }
    for entry in &manifest.init {
        let config = match entry.config.as_str() {
            "series" => None,
            name if preset(name).is_some() => Some(name.to_string()),
            path => Some(
                manifest_dir
                    .join(expand(path, var)?)
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        for scheme in &entry.schemes {
            parse_scheme(scheme)?;
            for &seed in &entry.seeds {
                let name = config
                    .as_deref()
                    .map(|c| {
                        Path::new(c)
                            .file_stem()
                            .map_or(c.to_string(), |s| s.to_string_lossy().into_owned())
                    })
                    .unwrap_or_else(|| "series".to_string());
                checkpoints.push(PlannedCheckpoint {
                    label: format!("init-{name}-seed{seed}-{scheme}"),
                    step: Some(0),
                    tokens: Some("0".into()),
                    source: PlannedSource::Init {
                        config: config.clone(),
                        seed,
                        scheme: scheme.clone(),
                    },
                });
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for c in &checkpoints {
        if !seen.insert(c.label.clone()) {
            anyhow::bail!(
                "series {}: two checkpoints are labelled {:?}",
                manifest.name,
                c.label
            );
        }
    }
    Ok(Plan {
        checkpoints,
        missing_revisions,
        hub,
    })
}

/// The init source string for a planned init with an explicit config.
pub fn init_spec(config: &str, seed: u64, scheme: &str) -> String {
    format!("init:{config}?seed={seed}&scheme={scheme}")
}

/// A config read for an init entry that names a preset or file.
pub fn init_config(config: &str) -> Result<ModelConfig> {
    match preset(config) {
        Some(c) => Ok(c),
        None => Ok(ModelConfig::from_file(Path::new(config))?),
    }
}

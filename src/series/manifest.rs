//! Series manifests (checkpoints/*.toml): which checkpoints make up a training series, which random
//! initialisations stand beside them, and the analysis settings a scan of it uses by default.
//!
//! ```toml
//! name = "olmo2-7b"
//! [hub]                                   # Hub branches, or a local HF-cache repo with cache_dir
//! repo = "allenai/OLMo-2-1124-7B"
//! revisions = ["stage1-step150-tokens1B"] # or: branches = { pattern = "stage1-*", log_spaced = 8 }
//! [[sources]]                             # any other source string (folder, gguf:, …)
//! label = "final"
//! source = "gguf:${CKPT_SCAN_DATA}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! [[init]]                                # preset name, config.json path, or "series"
//! config = "olmo2-7b"
//! seeds = [0]
//! schemes = ["olmo", "hf"]
//! [analysis]
//! tokens = 16384
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::source::init::InitScheme;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesManifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub hub: Option<HubSeries>,
    #[serde(default)]
    pub sources: Vec<SourceEntry>,
    #[serde(default)]
    pub init: Vec<InitEntry>,
    #[serde(default)]
    pub analysis: AnalysisDefaults,
    /// sbatch defaults for `scan --slurm`.
    #[serde(default)]
    pub slurm: SlurmSettings,
}

/// sbatch options: the manifest's `[slurm]` table, which `--slurm-*` flags override.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// Array tasks running at once (the `%K` of `--array`).
    pub concurrency: Option<usize>,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub mem: Option<String>,
    pub gres: Option<String>,
    pub account: Option<String>,
}

/// Checkpoints that are branches of one repo.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HubSeries {
    pub repo: String,
    /// A local Hugging Face cache folder holding the repo: read offline, never downloaded.
    pub cache_dir: Option<String>,
    /// Explicit branch names, in order.
    pub revisions: Option<Vec<String>>,
    /// Or: the branches matching a pattern, sampled by step.
    pub branches: Option<BranchSampling>,
}

/// Which of the matching branches to scan.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSampling {
    /// Glob over branch names; `*` matches any run of characters.
    pub pattern: String,
    /// Keep steps that are multiples of this.
    pub every: Option<u64>,
    /// Keep the branches nearest to this many log-spaced steps (step 0 always kept).
    pub log_spaced: Option<usize>,
    /// At most this many, evenly thinned, first and last kept.
    pub max: Option<usize>,
}

/// A checkpoint given by any source string.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    pub label: String,
    pub source: String,
    pub step: Option<u64>,
}

/// Random initialisations scanned beside the series.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitEntry {
    /// An OLMo-2 preset (`olmo2-1b`, …), a config.json path (relative to the manifest), or
    /// `series`: the config of the series' own checkpoints.
    pub config: String,
    pub seeds: Vec<u64>,
    #[serde(default = "default_schemes")]
    pub schemes: Vec<String>,
}

fn default_schemes() -> Vec<String> {
    vec!["olmo".to_string()]
}

/// Analysis settings a scan of this series uses unless the command line overrides them.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisDefaults {
    pub text: Option<String>,
    pub tokens: Option<usize>,
    pub seq_len: Option<usize>,
    pub kinds: Option<Vec<String>>,
    pub max_refs: Option<usize>,
    /// tokenizer.json for the token set; default: the first checkpoint's own.
    pub tokenizer: Option<String>,
    /// Sequences whose attention maps give the sink statistics.
    pub sink_sequences: Option<usize>,
    pub seed: Option<u64>,
}

impl SeriesManifest {
    /// Reads a manifest file, or `checkpoints/<name>.toml` when given a bare name.
    pub fn load(argument: &str) -> Result<(Self, PathBuf)> {
        let direct = PathBuf::from(argument);
        let path = if direct.is_file() {
            direct
        } else if !argument.contains('/') && !argument.ends_with(".toml") {
            let named = Path::new("checkpoints").join(format!("{argument}.toml"));
            if !named.is_file() {
                bail!(
                    "series {argument:?}: no file {argument} and no {}\nhint: give a manifest path, or a name from checkpoints/",
                    named.display()
                );
            }
            named
        } else {
            bail!("series manifest {argument}: no such file");
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("series manifest {}", path.display()))?;
        let manifest = Self::parse(&text, &path)?;
        Ok((manifest, path))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let manifest: SeriesManifest = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "series manifest {}: {}",
                path.display(),
                e.to_string().lines().collect::<Vec<_>>().join(" ")
            )
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let file = path.display();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("series manifest {file}: name {:?} must be letters, digits, '-', '_' or '.' (it names the report folder)", self.name);
        }
        if let Some(hub) = &self.hub {
            match (&hub.revisions, &hub.branches) {
                (Some(_), Some(_)) => {
                    bail!("series manifest {file}: [hub] has both revisions and branches; give one")
                }
                (None, None) => {
                    bail!("series manifest {file}: [hub] needs revisions = [...] or branches = {{ pattern = ... }}")
                }
                _ => {}
            }
            if let Some(b) = &hub.branches {
                if b.every == Some(0) || b.log_spaced == Some(0) || b.max == Some(0) {
                    bail!("series manifest {file}: branches.every, log_spaced and max must be at least 1");
                }
            }
        }
        for entry in &self.init {
            if entry.seeds.is_empty() {
                bail!(
                    "series manifest {file}: init entry {:?} has no seeds",
                    entry.config
                );
            }
            for scheme in &entry.schemes {
                parse_scheme(scheme).with_context(|| format!("series manifest {file}"))?;
            }
        }
        if self.hub.is_none() && self.sources.is_empty() && self.init.is_empty() {
            bail!("series manifest {file}: no checkpoints ([hub], [[sources]] or [[init]])");
        }
        Ok(())
    }
}

pub fn parse_scheme(scheme: &str) -> Result<InitScheme> {
    match InitScheme::parse(scheme) {
        Some(s) => Ok(s),
        None => bail!(
            "init scheme {scheme:?} is not one of {}",
            InitScheme::choices()
        ),
    }
}

/// Expands `${VAR}` (and `${VAR:-default}`) and a leading `~/` in a manifest path or source string.
pub fn expand(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    if let Some(tail) = rest.strip_prefix("~/") {
        let home = var("HOME").context("~ in a manifest path, but HOME is not set")?;
        out.push_str(&home);
        out.push('/');
        rest = tail;
    }
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = closing_brace(after).with_context(|| format!("{text:?}: unclosed ${{"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (var(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(d)) => out.push_str(&expand(d, var)?),
            (None, None) => bail!("{text:?}: environment variable {name} is not set"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` that closes a `${` whose body starts `text`, skipping nested `${…}` (a default
/// may name another variable: `${CKPT_SCAN_SERIES:-${CKPT_SCAN_CACHE}/series}`).
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "DATA" => Some("/data".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_home() {
        assert_eq!(expand("~/x/${DATA}/y", &env).unwrap(), "/home/me/x//data/y");
        assert_eq!(
            expand("${NOPE:-~/cache}/s", &env).unwrap(),
            "/home/me/cache/s"
        );
        assert_eq!(
            expand("${NOPE:-${DATA}/series}/x", &env).unwrap(),
            "/data/series/x"
        );
        assert_eq!(expand("${DATA:-${NOPE}}", &env).unwrap(), "/data");
        assert!(expand("${NOPE:-${DATA}", &env).is_err());
        let err = expand("${NOPE}/x", &env).unwrap_err().to_string();
        assert!(err.contains("NOPE is not set"), "{err}");
    }

    #[test]
    fn parses_and_rejects_with_the_file_named() {
        let path = Path::new("checkpoints/x.toml");
        let ok = SeriesManifest::parse(
            "name = \"x\"\n[hub]\nrepo = \"a/b\"\nbranches = { pattern = \"stage1-*\", max = 3 }\n[[init]]\nconfig = \"series\"\nseeds = [1, 2]\n",
            path,
        )
        .unwrap();
        assert_eq!(ok.init[0].schemes, vec!["olmo"]);
        for (text, needle) in [
            ("name = \"x\"\n[hub]\nrepo = \"a/b\"\n", "needs revisions"),
            ("name = \"x y\"\n[[init]]\nconfig = \"olmo2-1b\"\nseeds = [0]\n", "name"),
            ("name = \"x\"\n[[init]]\nconfig = \"olmo2-1b\"\nseeds = [0]\nschemes = [\"xavier\"]\n", "xavier"),
            ("name = \"x\"\nbogus = 1\n", "bogus"),
            ("name = \"x\"\n", "no checkpoints"),
        ] {
            let err = SeriesManifest::parse(text, path).unwrap_err();
            let message = format!("{err:#}");
            assert!(message.contains("checkpoints/x.toml"), "{message}");
            assert!(message.contains(needle), "{needle}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }
}

//! Source strings as users write them, parsed into a `SourceSpec`, and opened.
//!
//! `hf:ORG/NAME@REVISION` (Hub), `gguf:PATH` or `PATH.gguf`, `init:olmo2-7b?seed=0&scheme=olmo`,
//! `init:PATH/config.json?seed=3`, or a folder / `.safetensors` file.

use std::path::{Path, PathBuf};

use super::gguf::GgufSource;
use super::hub::{HubSettings, HubSource};
use super::init::{InitScheme, InitSource};
use super::safetensors::SafetensorsSource;
use super::WeightSource;
use crate::config::presets::{preset, preset_names};
use crate::config::ModelConfig;
use crate::error::{SourceError, SourceResult};
use crate::source::gpt_neox_names::{has_neox_names, NeoxNames};

#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Hub {
        repo: String,
        revision: String,
    },
    Gguf(PathBuf),
    Init {
        /// A preset name (`olmo2-7b`) or a path to a config.json.
        model: String,
        seed: u64,
        scheme: InitScheme,
    },
    Local(PathBuf),
}

impl SourceSpec {
    pub fn parse(spec: &str) -> SourceResult<Self> {
        let bad = |message: String| SourceError::BadSpec {
            spec: spec.to_string(),
            message,
        };
        if spec.trim().is_empty() {
            return Err(bad("empty source".into()));
        }
        if let Some(rest) = spec.strip_prefix("hf:") {
            let (repo, revision) = match rest.split_once('@') {
                Some((repo, revision)) => (repo, revision),
                None => (rest, "main"),
            };
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(bad("expected hf:ORG/NAME or hf:ORG/NAME@REVISION".into()));
            }
            if revision.is_empty() {
                return Err(bad("empty revision after '@'".into()));
            }
            return Ok(SourceSpec::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            });
        }
        if let Some(path) = spec.strip_prefix("gguf:") {
            if path.is_empty() {
                return Err(bad("expected gguf:PATH".into()));
            }
            return Ok(SourceSpec::Gguf(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("init:") {
            let (model, query) = rest.split_once('?').unwrap_or((rest, ""));
            if model.is_empty() {
                return Err(bad(format!(
                    "expected init:MODEL, MODEL one of {} or a config.json path",
                    preset_names().join(", ")
                )));
            }
            let (mut seed, mut scheme) = (0u64, InitScheme::Olmo);
            let mut seen: Vec<&str> = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if seen.contains(&key) {
                    return Err(bad(format!("option {key:?} is given twice")));
                }
                seen.push(key);
                match pair.split_once('=') {
                    Some(("seed", v)) => {
                        seed = v
                            .parse()
                            .map_err(|_| bad(format!("seed {v:?} is not a non-negative integer")))?
                    }
                    Some(("scheme", v)) => {
                        scheme = InitScheme::parse(v).ok_or_else(|| {
                            bad(format!(
                                "scheme {v:?}: expected one of {}",
                                InitScheme::choices()
                            ))
                        })?
                    }
                    _ => {
                        return Err(bad(format!(
                            "unknown option {pair:?}: expected seed=N or scheme={}",
                            InitScheme::choices()
                        )))
                    }
                }
            }
            if preset(model).is_none() && !model.ends_with(".json") {
                return Err(bad(format!(
                    "unknown model {model:?}: expected one of {} or a path to config.json",
                    preset_names().join(", ")
                )));
            }
            return Ok(SourceSpec::Init {
                model: model.to_string(),
                seed,
                scheme,
            });
        }
        if let Some((prefix, _)) = spec.split_once(':') {
            if !prefix.contains('/') && prefix.len() > 1 {
                return Err(bad(format!(
                    "unknown scheme {prefix:?}: expected hf:, gguf:, init: or a path"
                )));
            }
        }
        let path = PathBuf::from(spec);
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(SourceSpec::Gguf(path));
        }
        Ok(SourceSpec::Local(path))
    }
}

/// Parses and opens a source; reads configs and headers, no tensor data. Hub sources use the
/// settings of the environment (`HubSettings::from_env`).
pub fn open_source(spec: &str) -> SourceResult<Box<dyn WeightSource>> {
    open_source_with(spec, &HubSettings::from_env())
}

/// `open_source` with explicit Hub settings.
pub fn open_source_with(spec: &str, hub: &HubSettings) -> SourceResult<Box<dyn WeightSource>> {
    let source = open_named_as_stored(spec, hub)?;
    Ok(if has_neox_names(source.as_ref()) {
        Box::new(NeoxNames::new(source))
    } else {
        source
    })
}

/// [`open_source_with`] before GPT-NeoX's names are mapped to the common ones.
fn open_named_as_stored(spec: &str, hub: &HubSettings) -> SourceResult<Box<dyn WeightSource>> {
    Ok(match SourceSpec::parse(spec)? {
        SourceSpec::Local(path) => Box::new(SafetensorsSource::open(&path, spec)?),
        SourceSpec::Init {
            model,
            seed,
            scheme,
        } => {
            let config = match preset(&model) {
                Some(c) => c,
                None => ModelConfig::from_file(Path::new(&model))?,
            };
            Box::new(InitSource::new(config, seed, scheme, spec))
        }
        SourceSpec::Hub { repo, revision } => {
            Box::new(HubSource::open(&repo, &revision, spec, hub)?)
        }
        SourceSpec::Gguf(path) => Box::new(GgufSource::open(&path, spec)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            SourceSpec::parse("hf:allenai/OLMo-2-1124-7B@stage1-step1000-tokens5B").unwrap(),
            SourceSpec::Hub {
                repo: "allenai/OLMo-2-1124-7B".into(),
                revision: "stage1-step1000-tokens5B".into()
            }
        );
        assert_eq!(
            SourceSpec::parse("hf:a/b").unwrap(),
            SourceSpec::Hub {
                repo: "a/b".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            SourceSpec::parse("x/m.gguf").unwrap(),
            SourceSpec::Gguf("x/m.gguf".into())
        );
        assert_eq!(
            SourceSpec::parse("init:olmo2-7b?seed=3&scheme=hf").unwrap(),
            SourceSpec::Init {
                model: "olmo2-7b".into(),
                seed: 3,
                scheme: InitScheme::Hf
            }
        );
        assert_eq!(
            SourceSpec::parse("some/dir").unwrap(),
            SourceSpec::Local("some/dir".into())
        );
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("hf:onlyname", "ORG/NAME"),
            ("hf:a/b@", "empty revision"),
            ("init:olmo2-9b", "unknown model"),
            ("init:olmo2-1b?seed=-1", "seed"),
            ("init:olmo2-1b?scheme=xavier", "scheme"),
            ("s3:bucket/x", "unknown scheme"),
            ("", "empty"),
        ] {
            let e = SourceSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec:?} → {e}");
        }
    }

    #[test]
    fn init_option_given_twice_is_refused() {
        for spec in [
            "init:olmo2-1b?seed=1&seed=2",
            "init:olmo2-1b?scheme=hf&seed=0&scheme=olmo",
        ] {
            let e = SourceSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains("given twice"), "{spec:?} → {e}");
        }
    }
}

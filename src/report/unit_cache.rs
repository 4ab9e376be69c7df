//! The work-unit cache that makes `scan` resumable: one finished (checkpoint, analysis) unit per
//! folder, named by the digest of everything its result depends on.
//!
//! ```text
//! <cache>/<digest>/<table>.csv   the unit's rows, one tidy table per file
//! <cache>/<digest>/unit.json     the key and timing, written last
//! ```
//!
//! A unit folder is built under a temp name and renamed into place, so a killed run leaves either a
//! whole unit or none. Tables are CSV rather than JSON because JSON has no NaN, and R² rows carry
//! NaN with a reason; CSV floats round-trip exactly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Everything a unit's result depends on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnitKey {
    /// The checkpoint's identity: resolved commit sha plus file, or the full init spec.
    pub checkpoint: String,
    /// `predict`, `align`, `sinks`, …
    pub analysis: String,
    /// The analysis options, as JSON.
    pub options: serde_json::Value,
    /// sha256 of the token set, for analyses that run a forward.
    pub token_set: Option<String>,
    /// Tool name and analysis version (`report::manifest::ANALYSIS_VERSION`): builds that compute
    /// the same results share units; a change that alters results bumps the version.
    pub tool: String,
}

impl UnitKey {
    /// sha256 of the key's JSON (serde_json writes struct fields in declaration order and
    /// `Value` maps sorted, so the text is canonical).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("a unit key serialises");
        let hash = Sha256::digest(&json);
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What `unit.json` holds.
#[derive(Serialize, Deserialize)]
struct UnitRecord {
    key: UnitKey,
    seconds: f64,
    tables: Vec<String>,
}

/// A finished unit read back.
pub struct CachedUnit {
    dir: PathBuf,
    pub seconds: f64,
}

impl CachedUnit {
    pub fn table<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>> {
        let path = self.dir.join(format!("{name}.csv"));
        let mut reader = csv::Reader::from_path(&path)
            .with_context(|| format!("{}: cannot open cached table", path.display()))?;
        reader
            .deserialize()
            .collect::<Result<Vec<T>, _>>()
            .with_context(|| format!("{}: cached table does not parse", path.display()))
    }
}

/// Rows of one table, serialised, ready to be stored with a unit.
pub struct Table {
    name: String,
    bytes: Vec<u8>,
}

impl Table {
    pub fn new<T: Serialize>(name: &str, rows: &[T]) -> Result<Self> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        for row in rows {
            writer.serialize(row)?;
        }
        Ok(Table {
            name: name.to_string(),
            bytes: writer.into_inner().context("csv writer")?,
        })
    }
}

/// A folder of finished units.
pub struct UnitCache {
    dir: PathBuf,
}

impl UnitCache {
    pub fn new(dir: &Path) -> Self {
        UnitCache {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The finished unit for `key`, if one is stored and its key matches exactly.
    pub fn get(&self, key: &UnitKey) -> Option<CachedUnit> {
        let dir = self.dir.join(key.digest());
        let record: UnitRecord =
            serde_json::from_slice(&std::fs::read(dir.join("unit.json")).ok()?).ok()?;
        (record.key == *key).then_some(CachedUnit {
            dir,
            seconds: record.seconds,
        })
    }

    /// Stores a unit: tables and record into a temp folder, then one rename.
    pub fn put(&self, key: &UnitKey, tables: &[Table], seconds: f64) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("{}: cannot create the unit cache", self.dir.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(".unit-")
            .tempdir_in(&self.dir)
            .with_context(|| format!("{}: cannot create a temp folder", self.dir.display()))?;
        for table in tables {
            let path = staging.path().join(format!("{}.csv", table.name));
            std::fs::write(&path, &table.bytes)
                .with_context(|| format!("{}: write failed", path.display()))?;
        }
        let record = UnitRecord {
            key: key.clone(),
            seconds,
            tables: tables.iter().map(|t| t.name.clone()).collect(),
        };
        std::fs::write(
            staging.path().join("unit.json"),
            serde_json::to_vec_pretty(&record)?,
        )?;
        let target = self.dir.join(key.digest());
        if target.exists() {
            // A stale unit with the same digest (e.g. from --force): replace it.
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("{}: cannot replace", target.display()))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &target)
            .with_context(|| format!("{}: cannot rename the unit into place", target.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        name: String,
        value: f64,
    }

    fn key(analysis: &str) -> UnitKey {
        UnitKey {
            checkpoint: "sha".into(),
            analysis: analysis.into(),
            options: serde_json::json!({"k": 5}),
            token_set: Some("abc".into()),
            tool: "0.1.0".into(),
        }
    }

    #[test]
    fn units_round_trip_with_nan_and_exact_floats() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UnitCache::new(dir.path());
        let rows = vec![
            Row {
                name: "a".into(),
                value: 0.1 + 0.2,
            },
            Row {
                name: "b".into(),
                value: f64::NAN,
            },
        ];
        assert!(cache.get(&key("predict")).is_none());
        cache
            .put(&key("predict"), &[Table::new("rows", &rows).unwrap()], 1.5)
            .unwrap();
        let unit = cache.get(&key("predict")).unwrap();
        let back: Vec<Row> = unit.table("rows").unwrap();
        assert_eq!(back[0].value.to_bits(), (0.1f64 + 0.2).to_bits());
        assert!(back[1].value.is_nan());
        assert_eq!(unit.seconds, 1.5);
        // A different analysis is a different unit; no staging folders are left behind.
        assert!(cache.get(&key("align")).is_none());
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}

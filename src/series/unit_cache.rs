//! The work-unit cache that makes `scan` resumable: one finished (checkpoint, analysis) unit per
//! folder, named by the digest of everything its result depends on.
//!
//! ```text
//! <cache>/<digest>/<table>.csv   the unit's rows, one tidy table per file
//! <cache>/<digest>/unit.json     the key, timing, and each table's sha256 and row count
//! ```
//!
//! A unit folder is built under a temp name, fsynced, and renamed into place, so a killed run
//! leaves either a whole unit or none. A unit is trusted only while every table still has the
//! sha256 `unit.json` recorded: a truncated, emptied, edited or deleted table is a miss, and the
//! unit is computed again rather than reported with rows missing. Tables are CSV rather than JSON because JSON has no NaN, and R² rows carry
//! NaN with a reason; CSV floats round-trip exactly.

use std::io::Write;
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
    /// Tool name and analysis version (`output::manifest::ANALYSIS_VERSION`): builds that compute
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
    tables: Vec<TableRecord>,
}

/// One stored table as `unit.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct TableRecord {
    name: String,
    sha256: String,
    rows: usize,
}

/// A finished unit read back; its tables matched their recorded sha256 when it was looked up.
pub struct CachedUnit {
    dir: PathBuf,
    tables: Vec<TableRecord>,
    pub seconds: f64,
}

impl CachedUnit {
    pub fn table<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>> {
        let path = self.dir.join(format!("{name}.csv"));
        let record = self
            .tables
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{}: not a table of this unit", path.display()))?;
        let mut reader = csv::Reader::from_path(&path)
            .with_context(|| format!("{}: cannot open cached table", path.display()))?;
        let rows = reader
            .deserialize()
            .collect::<Result<Vec<T>, _>>()
            .with_context(|| format!("{}: cached table does not parse", path.display()))?;
        if rows.len() != record.rows {
            anyhow::bail!(
                "{}: {} rows, but unit.json records {}",
                path.display(),
                rows.len(),
                record.rows
            );
        }
        Ok(rows)
    }
}

/// Rows of one table, serialised, ready to be stored with a unit.
pub struct Table {
    name: String,
    bytes: Vec<u8>,
    rows: usize,
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
            rows: rows.len(),
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to a new file and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes a folder's entries (new names, renames) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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

    /// The finished unit for `key`, if one is stored, its key matches exactly and every table
    /// still has the sha256 recorded with it (a unit from before hashes were recorded is a miss).
    pub fn get(&self, key: &UnitKey) -> Option<CachedUnit> {
        let dir = self.dir.join(key.digest());
        let record: UnitRecord =
            serde_json::from_slice(&std::fs::read(dir.join("unit.json")).ok()?).ok()?;
        if record.key != *key {
            return None;
        }
        for table in &record.tables {
            let bytes = std::fs::read(dir.join(format!("{}.csv", table.name))).ok()?;
            if sha256_hex(&bytes) != table.sha256 {
                return None;
            }
        }
        Some(CachedUnit {
            dir,
            tables: record.tables,
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
            write_synced(&path, &table.bytes)
                .with_context(|| format!("{}: write failed", path.display()))?;
        }
        let record = UnitRecord {
            key: key.clone(),
            seconds,
            tables: tables
                .iter()
                .map(|t| TableRecord {
                    name: t.name.clone(),
                    sha256: sha256_hex(&t.bytes),
                    rows: t.rows,
                })
                .collect(),
        };
        let record_path = staging.path().join("unit.json");
        write_synced(&record_path, &serde_json::to_vec_pretty(&record)?)
            .with_context(|| format!("{}: write failed", record_path.display()))?;
        // The files' contents and names must be on disk before the rename publishes them.
        sync_dir(staging.path())
            .with_context(|| format!("{}: cannot sync", staging.path().display()))?;
        let target = self.dir.join(key.digest());
        if target.exists() {
            // A stale unit with the same digest (e.g. from --force): replace it.
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("{}: cannot replace", target.display()))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, &target)
            .with_context(|| format!("{}: cannot rename the unit into place", target.display()))?;
        sync_dir(&self.dir).with_context(|| format!("{}: cannot sync", self.dir.display()))?;
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

    fn stored(cache: &UnitCache) -> PathBuf {
        let rows: Vec<Row> = (0..5)
            .map(|i| Row {
                name: format!("r{i}"),
                value: i as f64,
            })
            .collect();
        cache
            .put(&key("predict"), &[Table::new("rows", &rows).unwrap()], 1.0)
            .unwrap();
        cache.dir().join(key("predict").digest()).join("rows.csv")
    }

    #[test]
    fn truncated_empty_edited_or_deleted_table_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UnitCache::new(dir.path());
        let table = stored(&cache);
        let unit = cache.get(&key("predict")).unwrap();
        assert_eq!(unit.table::<Row>("rows").unwrap().len(), 5);
        let bytes = std::fs::read(&table).unwrap();
        // Whole rows cut off: still valid CSV, so only the recorded hash can tell.
        let cut = bytes.len() - 5;
        type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
        let damage: [Damage; 4] = [
            Box::new(|p| std::fs::write(p, &bytes[..cut]).unwrap()),
            Box::new(|p| std::fs::write(p, b"").unwrap()),
            Box::new(|p| {
                std::fs::write(p, String::from_utf8_lossy(&bytes).replace('3', "4")).unwrap()
            }),
            Box::new(|p| std::fs::remove_file(p).unwrap()),
        ];
        for (i, damage) in damage.iter().enumerate() {
            stored(&cache);
            assert!(cache.get(&key("predict")).is_some());
            damage(&table);
            assert!(cache.get(&key("predict")).is_none(), "damage {i}");
            // Storing the unit again (what a scan does on a miss) makes it a hit again.
            stored(&cache);
            assert_eq!(
                cache
                    .get(&key("predict"))
                    .unwrap()
                    .table::<Row>("rows")
                    .unwrap()
                    .len(),
                5
            );
        }
    }

    #[test]
    fn a_unit_without_table_hashes_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UnitCache::new(dir.path());
        let table = stored(&cache);
        let unit_json = table.parent().unwrap().join("unit.json");
        let old = serde_json::json!({"key": key("predict"), "seconds": 1.0, "tables": ["rows"]});
        std::fs::write(&unit_json, old.to_string()).unwrap();
        assert!(cache.get(&key("predict")).is_none());
    }
}

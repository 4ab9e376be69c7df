//! How a scan obtains its work units from a unit cache that several workers may share: read when
//! finished, else claimed and computed (waiting while another worker holds the claim), or — when
//! assembling a report or printing status — only looked up. Also the per-checkpoint failure
//! records that let a report job list a failed shard's error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::output::atomic::write_atomic;
use crate::printer::Printer;
use crate::series::claim::{holder, try_claim, Attempt, Claim, ClaimTimeouts, Owner};
use crate::series::unit_cache::{CachedUnit, Table, UnitCache, UnitKey};

/// How often a worker waiting on another's claim looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// What a scan does with a unit that is not in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitMode {
    /// Claim it and compute it (a plain scan, a shard).
    Compute,
    /// Report it missing: the report is assembled from finished units only (`--report`).
    Assemble,
    /// Record its state and go on (`--status`).
    Status,
}

/// A unit's state when it is not computed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    Done,
    /// Claimed by a live worker.
    Running,
    Pending,
}

impl UnitState {
    pub fn name(self) -> &'static str {
        match self {
            UnitState::Done => "done",
            UnitState::Running => "running",
            UnitState::Pending => "pending",
        }
    }
}

/// A unit that `--report` needed but the cache lacks.
#[derive(Debug)]
pub struct MissingUnit {
    pub analysis: String,
    pub state: UnitState,
}

impl std::fmt::Display for MissingUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unit {} is {}", self.analysis, self.state.name())
    }
}

impl std::error::Error for MissingUnit {}

/// What [`UnitWork::acquire`] found.
pub enum Acquired {
    Cached(CachedUnit),
    /// Ours to compute; the claim is released when dropped (after the unit is stored).
    Compute(Claim),
    Absent(UnitState),
}

/// The unit cache as one scan worker uses it.
pub struct UnitWork<'a> {
    pub cache: &'a UnitCache,
    /// Recompute even when finished (`--force`).
    pub force: bool,
    pub mode: UnitMode,
    pub timeouts: ClaimTimeouts,
    pub printer: Printer,
}

impl UnitWork<'_> {
    fn claims(&self) -> PathBuf {
        self.cache.dir().join(".claims")
    }

    /// The unit's state without touching it.
    pub fn state(&self, key: &UnitKey) -> UnitState {
        if self.cache.get(key).is_some() {
            return UnitState::Done;
        }
        let claim = self.claims().join(format!("{}.claim", key.digest()));
        match holder(&claim, self.timeouts) {
            Some((_, false)) => UnitState::Running,
            _ => UnitState::Pending,
        }
    }

    /// The finished unit, or a claim to compute it (in [`UnitMode::Compute`]; waits while another
    /// live worker holds the claim, then uses its result), or its state.
    pub fn acquire(&self, key: &UnitKey, checkpoint: &str) -> Result<Acquired> {
        let digest = key.digest();
        let mut waiting_on: Option<Owner> = None;
        loop {
            if !self.force {
                if let Some(unit) = self.cache.get(key) {
                    return Ok(Acquired::Cached(unit));
                }
            }
            if self.mode != UnitMode::Compute {
                return Ok(Acquired::Absent(self.state(key)));
            }
            match try_claim(&self.claims(), &digest, self.timeouts)? {
                Attempt::Claimed(claim) => {
                    // Another worker may have stored it between the look-up and the claim.
                    if !self.force {
                        if let Some(unit) = self.cache.get(key) {
                            return Ok(Acquired::Cached(unit));
                        }
                    }
                    return Ok(Acquired::Compute(claim));
                }
                Attempt::HeldBy(owner) => {
                    if waiting_on.as_ref() != Some(&owner) {
                        self.printer.note(format!(
                            "  {checkpoint}: unit {} is being computed by {}:{}; waiting for it",
                            key.analysis, owner.host, owner.pid
                        ));
                        waiting_on = Some(owner);
                    }
                    std::thread::sleep(WAIT_POLL);
                }
            }
        }
    }
}

/// What happened to one unit in this run: computed or read here, or (`--status`) its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    Computed,
    Cached,
    Done,
    Running,
    Pending,
}

impl UnitStatus {
    pub fn name(self) -> &'static str {
        match self {
            UnitStatus::Computed => "computed",
            UnitStatus::Cached => "cached",
            UnitStatus::Done => "done",
            UnitStatus::Running => "running",
            UnitStatus::Pending => "pending",
        }
    }
}

impl From<UnitState> for UnitStatus {
    fn from(state: UnitState) -> Self {
        match state {
            UnitState::Done => UnitStatus::Done,
            UnitState::Running => UnitStatus::Running,
            UnitState::Pending => UnitStatus::Pending,
        }
    }
}

/// One unit's record in a scan's manifest.
#[derive(Clone, Debug, Serialize)]
pub struct UnitRun {
    pub analysis: String,
    pub digest: String,
    pub status: UnitStatus,
    pub seconds: f64,
}

impl UnitRun {
    fn new(key: &UnitKey, status: UnitStatus, seconds: f64) -> Self {
        UnitRun {
            analysis: key.analysis.clone(),
            digest: key.digest(),
            status,
            seconds,
        }
    }
}

impl UnitWork<'_> {
    /// The unit's result: read from the cache (`load`), or claimed, computed, stored (`store`)
    /// and returned. `None` when this run does not compute it: under `--status` its state goes
    /// into `units`; under `--report` it is a [`MissingUnit`] error.
    pub fn get_or_compute<T>(
        &self,
        key: &UnitKey,
        checkpoint: &str,
        units: &mut Vec<UnitRun>,
        load: impl FnOnce(&CachedUnit) -> Result<T>,
        store: impl FnOnce(&T) -> Result<Vec<Table>>,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        let claim = match self.acquire(key, checkpoint)? {
            Acquired::Cached(unit) => {
                units.push(UnitRun::new(key, UnitStatus::Cached, unit.seconds));
                return load(&unit).map(Some);
            }
            Acquired::Absent(state) if self.mode == UnitMode::Status => {
                units.push(UnitRun::new(key, state.into(), 0.0));
                return Ok(None);
            }
            Acquired::Absent(state) => {
                return Err(MissingUnit {
                    analysis: key.analysis.clone(),
                    state,
                }
                .into())
            }
            Acquired::Compute(claim) => claim,
        };
        let start = Instant::now();
        let output = compute()?;
        let seconds = start.elapsed().as_secs_f64();
        self.cache.put(key, &store(&output)?, seconds)?;
        drop(claim);
        units.push(UnitRun::new(key, UnitStatus::Computed, seconds));
        Ok(Some(output))
    }

    /// [`Self::get_or_compute`] for a unit of one table of rows (empty when not computed here).
    pub fn get_or_compute_rows<T: Serialize + DeserializeOwned>(
        &self,
        key: &UnitKey,
        checkpoint: &str,
        units: &mut Vec<UnitRun>,
        table: &str,
        compute: impl FnOnce() -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let rows = self.get_or_compute(
            key,
            checkpoint,
            units,
            |unit| unit.table(table),
            |rows| Ok(vec![Table::new(table, rows)?]),
            compute,
        )?;
        Ok(rows.unwrap_or_default())
    }
}

/// Why a checkpoint of a shard failed, kept in the unit cache for the report job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailureRecord {
    pub series: String,
    pub checkpoint: String,
    /// The error chain on one line.
    pub error: String,
    pub host: String,
    pub pid: u32,
}

fn failure_path(cache: &Path, series: &str, checkpoint: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{series}\n{checkpoint}").as_bytes());
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    cache.join(".failures").join(format!("{name}.json"))
}

/// Records that `checkpoint` of `series` failed with `error`.
pub fn record_failure(
    cache: &Path,
    series: &str,
    checkpoint: &str,
    error: &anyhow::Error,
) -> Result<()> {
    let me = Owner::this_process();
    let record = FailureRecord {
        series: series.into(),
        checkpoint: checkpoint.into(),
        error: format!("{error:#}").replace('\n', " "),
        host: me.host,
        pid: me.pid,
    };
    let path = failure_path(cache, series, checkpoint);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    write_atomic(&path, &serde_json::to_vec_pretty(&record)?)
}

/// The failure recorded for `checkpoint`, if any.
pub fn recorded_failure(cache: &Path, series: &str, checkpoint: &str) -> Option<FailureRecord> {
    let bytes = std::fs::read(failure_path(cache, series, checkpoint)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Forgets a failure once the checkpoint succeeded.
pub fn clear_failure(cache: &Path, series: &str, checkpoint: &str) {
    let _ = std::fs::remove_file(failure_path(cache, series, checkpoint));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(analysis: &str) -> UnitKey {
        UnitKey {
            checkpoint: "c".into(),
            analysis: analysis.into(),
            options: serde_json::Value::Null,
            token_set: None,
            tool: "t".into(),
        }
    }

    fn work(cache: &UnitCache, mode: UnitMode) -> UnitWork<'_> {
        UnitWork {
            cache,
            force: false,
            mode,
            timeouts: ClaimTimeouts::new(Duration::from_secs(60)),
            printer: Printer { quiet: true },
        }
    }

    #[test]
    fn states_follow_the_cache_and_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UnitCache::new(dir.path());
        let status = work(&cache, UnitMode::Status);
        assert_eq!(status.state(&key("a")), UnitState::Pending);
        let compute = work(&cache, UnitMode::Compute);
        let Acquired::Compute(claim) = compute.acquire(&key("a"), "c").unwrap() else {
            panic!("not claimed");
        };
        assert_eq!(status.state(&key("a")), UnitState::Running);
        cache.put(&key("a"), &[], 0.0).unwrap();
        drop(claim);
        assert_eq!(status.state(&key("a")), UnitState::Done);
        assert!(matches!(
            compute.acquire(&key("a"), "c").unwrap(),
            Acquired::Cached(_)
        ));
    }

    /// Two workers after one unit: the second waits for the first and reads its result.
    #[test]
    fn two_workers_on_one_unit_compute_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = UnitCache::new(dir.path());
        let computed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let w = work(&cache, UnitMode::Compute);
                    match w.acquire(&key("a"), "c").unwrap() {
                        Acquired::Compute(claim) => {
                            computed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(300));
                            cache.put(&key("a"), &[], 0.3).unwrap();
                            drop(claim);
                        }
                        Acquired::Cached(_) => {}
                        Acquired::Absent(s) => panic!("absent: {s:?}"),
                    }
                });
            }
        });
        assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn failures_are_recorded_read_back_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let error = anyhow::anyhow!("bad tensor").context("checkpoint x");
        record_failure(dir.path(), "s", "x", &error).unwrap();
        let record = recorded_failure(dir.path(), "s", "x").unwrap();
        assert_eq!(record.error, "checkpoint x: bad tensor");
        assert!(recorded_failure(dir.path(), "s", "y").is_none());
        clear_failure(dir.path(), "s", "x");
        assert!(recorded_failure(dir.path(), "s", "x").is_none());
    }
}

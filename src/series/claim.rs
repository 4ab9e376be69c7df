//! Claims on work units, so that several workers (processes on one or several hosts, over one
//! shared cache folder) never compute the same unit at once.
//!
//! A claim is a file `<dir>/<name>.claim` created with `O_EXCL`, holding the owner's host and pid;
//! its mtime is the heartbeat, refreshed by a thread while the claim is held. A claim is stale when
//! its heartbeat is older than the timeout, or when its owner is a process of this host that no
//! longer exists (a `kill -9`): a stale claim is taken over by renaming it aside (only one taker's
//! rename succeeds) and creating a fresh one. Dropping a [`Claim`] removes its file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Who holds a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
}

impl Owner {
    pub fn this_process() -> Self {
        Owner {
            host: host_name(),
            pid: std::process::id(),
        }
    }

    /// False only when the owner is a process of this host that no longer runs; a process on
    /// another host cannot be checked and counts as alive until its heartbeat stops.
    fn may_be_alive(&self) -> bool {
        if self.host != host_name() {
            return true;
        }
        // kill(pid, 0) probes without signalling; EPERM still means the process exists.
        let result = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

/// How long a heartbeat stays valid, and how often it is refreshed.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClaimTimeouts {
    pub stale_after: Duration,
    pub heartbeat: Duration,
}

impl ClaimTimeouts {
    /// A heartbeat four times per timeout (at most every 30 s), so a busy filesystem's delays
    /// never make a live claim look stale.
    pub fn new(stale_after: Duration) -> Self {
        ClaimTimeouts {
            stale_after,
            heartbeat: (stale_after / 4).min(Duration::from_secs(30)),
        }
    }
}

/// A held claim; its file is removed on drop.
pub struct Claim {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.heartbeat.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The result of trying to claim.
pub enum Attempt {
    Claimed(Claim),
    /// Someone else holds a live claim.
    HeldBy(Owner),
}

/// Distinguishes the scratch files of claims made at once by threads of one process.
static CLAIM_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// Tries to claim `name` in `dir` (created if needed), taking over a stale claim.
pub fn try_claim(dir: &Path, name: &str, timeouts: ClaimTimeouts) -> Result<Attempt> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the claims folder", dir.display()))?;
    let path = dir.join(format!("{name}.claim"));
    let me = Owner::this_process();
    // Two rounds: a stale claim taken aside in the first leaves the name free for the second.
    for _ in 0..2 {
        // The owner is written to a private file first and hard-linked into place: the link
        // fails if the claim exists (as `create_new` would) and never shows an empty claim. A
        // worker killed between creating and writing a claim used to leave one without an owner,
        // which every other worker then waited on until it went stale.
        let attempt = CLAIM_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let written = dir.join(format!(".{name}.{}.{}.{attempt}.new", me.host, me.pid));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&written)
            .with_context(|| format!("{}: cannot write the claim", written.display()))?;
        file.write_all(&serde_json::to_vec(&me)?)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("{}: cannot write the claim", written.display()))?;
        drop(file);
        let linked = std::fs::hard_link(&written, &path);
        let _ = std::fs::remove_file(&written);
        match linked {
            Ok(()) => return Ok(Attempt::Claimed(start_heartbeat(path, timeouts))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot claim", path.display())),
        }
        match holder(&path, timeouts) {
            // Gone meanwhile: try again.
            None => continue,
            Some((owner, false)) => return Ok(Attempt::HeldBy(owner)),
            Some((_, true)) => {
                let aside = dir.join(format!(".{name}.stale.{}.{}", me.host, me.pid));
                if std::fs::rename(&path, &aside).is_ok() {
                    let _ = std::fs::remove_file(&aside);
                }
            }
        }
    }
    // Lost both races: report whoever holds it now.
    Ok(match holder(&path, timeouts) {
        Some((owner, _)) => Attempt::HeldBy(owner),
        None => Attempt::HeldBy(me),
    })
}

/// The owner of the claim at `path` and whether it is stale; `None` when there is no claim.
pub fn holder(path: &Path, timeouts: ClaimTimeouts) -> Option<(Owner, bool)> {
    let metadata = std::fs::metadata(path).ok()?;
    let age = metadata
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    // A claim file caught between create and write has no owner yet: fresh unless old.
    let owner = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Owner>(&b).ok());
    match owner {
        Some(owner) => {
            let stale = age > timeouts.stale_after || !owner.may_be_alive();
            Some((owner, stale))
        }
        None => Some((
            Owner {
                host: "?".into(),
                pid: 0,
            },
            age > timeouts.stale_after,
        )),
    }
}

fn start_heartbeat(path: PathBuf, timeouts: ClaimTimeouts) -> Claim {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(timeouts.heartbeat);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(file) = File::options().write(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
            }
        })
    };
    Claim {
        path,
        stop,
        heartbeat: Some(thread),
    }
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "unknown-host".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: ClaimTimeouts = ClaimTimeouts {
        stale_after: Duration::from_secs(60),
        heartbeat: Duration::from_millis(20),
    };

    #[test]
    fn a_second_claim_on_a_held_unit_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = match try_claim(dir.path(), "u", TIMEOUTS).unwrap() {
            Attempt::Claimed(c) => c,
            Attempt::HeldBy(o) => panic!("held by {o:?}"),
        };
        match try_claim(dir.path(), "u", TIMEOUTS).unwrap() {
            Attempt::HeldBy(owner) => assert_eq!(owner, Owner::this_process()),
            Attempt::Claimed(_) => panic!("claimed twice"),
        }
        drop(first);
        assert!(!dir.path().join("u.claim").exists());
        assert!(matches!(
            try_claim(dir.path(), "u", TIMEOUTS).unwrap(),
            Attempt::Claimed(_)
        ));
    }

    /// Regression: a claim was created empty and written after, so a worker killed in between
    /// left an ownerless claim that others waited on until it went stale.
    #[test]
    fn a_claim_appears_with_its_owner_and_leaves_no_scratch_file() {
        let dir = tempfile::tempdir().unwrap();
        let timeouts = ClaimTimeouts::new(Duration::from_secs(60));
        let Attempt::Claimed(claim) = try_claim(dir.path(), "u", timeouts).unwrap() else {
            panic!("a free unit is claimed");
        };
        let (owner, stale) = holder(&dir.path().join("u.claim"), timeouts).unwrap();
        assert_eq!(owner, Owner::this_process());
        assert!(!stale);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["u.claim"]);
        drop(claim);
    }

    #[test]
    fn a_claim_of_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has exited: its pid no longer runs (and is not reused this quickly).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Owner {
            host: host_name(),
            pid,
        };
        std::fs::write(
            dir.path().join("u.claim"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        assert!(holder(&dir.path().join("u.claim"), TIMEOUTS).unwrap().1);
        assert!(matches!(
            try_claim(dir.path(), "u", TIMEOUTS).unwrap(),
            Attempt::Claimed(_)
        ));
    }

    #[test]
    fn a_claim_whose_heartbeat_stopped_is_stale_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let other_host = Owner {
            host: "elsewhere".into(),
            pid: 1,
        };
        let path = dir.path().join("u.claim");
        std::fs::write(&path, serde_json::to_vec(&other_host).unwrap()).unwrap();
        let short = ClaimTimeouts {
            stale_after: Duration::from_millis(200),
            heartbeat: Duration::from_millis(20),
        };
        assert!(!holder(&path, short).unwrap().1, "fresh heartbeat");
        let old = SystemTime::now() - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(holder(&path, short).unwrap().1, "stopped heartbeat");
        // A held claim keeps its heartbeat fresh well past the timeout.
        let held = match try_claim(dir.path(), "v", short).unwrap() {
            Attempt::Claimed(c) => c,
            Attempt::HeldBy(o) => panic!("held by {o:?}"),
        };
        std::thread::sleep(Duration::from_millis(500));
        let state = holder(&dir.path().join("v.claim"), short).unwrap();
        assert!(!state.1, "heartbeat kept the claim fresh");
        drop(held);
    }
}

//! `scan --slurm` on a real Slurm (scripts/slurm-local.sh, started by .ci/run): a job array of shards
//! plus a report job gives the single-process scan's CSVs byte for byte; a shard cancelled mid-unit
//! (its claim left behind), once resubmitted, reruns only its own units; a shard that fails is
//! listed by the report job.
//!
//! Skipped with a message when no Slurm is configured (`SLURM_CONF` unset or `sbatch` missing);
//! under `CI=true` that is a failure instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// Longest a test waits for its jobs to leave the queue.
const JOB_DEADLINE: Duration = Duration::from_secs(600);

fn slurm_available() -> bool {
    let configured = std::env::var_os("SLURM_CONF").is_some();
    let sbatch = Command::new("sbatch")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if configured && sbatch {
        return true;
    }
    let why = if sbatch {
        "SLURM_CONF is not set (scripts/slurm-local.sh start, then source its env.sh)"
    } else {
        "sbatch is not installed (scripts/slurm-local.sh start installs it)"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("Slurm tests cannot run under CI: {why}");
    }
    eprintln!("skipping: {why}");
    false
}

/// Runs `scan --slurm` and returns (array job id, report job id).
fn submit(manifest: &Path, out: &Path, units: &Path, extra: &[&str]) -> (String, String) {
    let output = Command::new(crate::common::bin())
        .args(["scan", manifest.to_str().unwrap(), "--slurm", "--out"])
        .arg(out)
        .arg("--cache-dir")
        .arg(units)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scan --slurm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let after = |word: &str| {
        let i = words.iter().position(|w| *w == word).unwrap();
        words[i + 2].to_string()
    };
    (after("array"), after("report"))
}

/// Waits until none of `jobs` is queued or running; prints the queue once while waiting.
fn wait_for(jobs: &[&str]) {
    let list = jobs.join(",");
    let deadline = Instant::now() + JOB_DEADLINE;
    let mut shown = false;
    loop {
        let queue = Command::new("squeue")
            .args(["-h", "-j", &list, "-o", "%i %j %T %r"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&queue.stdout).trim().to_string();
        if text.is_empty() {
            return;
        }
        if !shown {
            eprintln!("squeue -j {list}:\n{text}");
            shown = true;
        }
        assert!(
            Instant::now() < deadline,
            "jobs {list} still queued:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sbatch(script: &Path, extra: &[String]) -> String {
    let output = Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .unwrap();
    assert!(output.status.success(), "{:?}", output);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Unit folders → mtime.
fn unit_times(units: &Path) -> BTreeMap<String, SystemTime> {
    std::fs::read_dir(units)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect()
}

fn reference_scan(manifest: &Path, work: &Path) -> PathBuf {
    let out = work.join("reference");
    let status = Command::new(crate::common::bin())
        .args(["--quiet", "scan", manifest.to_str().unwrap(), "--out"])
        .arg(&out)
        .arg("--cache-dir")
        .arg(work.join("reference-units"))
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn incomplete_rows(out: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(out.join("incomplete.csv"))
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_slurm_array_scan_equals_the_single_process_scan_and_a_cancelled_shard_reruns_alone() {
    if !slurm_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let manifest = crate::common::local_series(work.path());
    let reference = reference_scan(&manifest, work.path());
    let (out, units) = (work.path().join("slurm-out"), work.path().join("units"));

    // One task at a time, so a claim seen while task 2 runs is task 2's: cancel it mid-unit.
    let (array, report) = submit(
        &manifest,
        &out,
        &units,
        &["--shards", "4", "--slurm-concurrency", "1"],
    );
    let task = format!("{array}_2");
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let state = Command::new("squeue")
            .args(["-h", "-j", &task, "-o", "%T"])
            .output()
            .unwrap();
        let running = String::from_utf8_lossy(&state.stdout).trim() == "RUNNING";
        let claimed = std::fs::read_dir(units.join(".claims")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".claim"))
        });
        if running && claimed {
            break;
        }
        assert!(Instant::now() < deadline, "task 2 never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancel = Command::new("scancel").arg(&task).status().unwrap();
    assert!(cancel.success());
    wait_for(&[&array, &report]);
    let missing = incomplete_rows(&out);
    assert!(
        !missing.is_empty(),
        "the cancelled shard's checkpoints are listed"
    );
    assert!(missing.iter().all(|r| &r[1] == "pending"), "{missing:?}");
    let before = unit_times(&units);
    assert!(before.len() < 20);

    // Resubmitted: only the cancelled shard computes; the report is then complete.
    let slurm_dir = out.join("slurm");
    let again = sbatch(&slurm_dir.join("scan.sbatch"), &[]);
    let again_report = sbatch(
        &slurm_dir.join("report.sbatch"),
        &[format!("--dependency=afterany:{again}")],
    );
    wait_for(&[&again, &again_report]);
    let after = unit_times(&units);
    assert_eq!(after.len(), 20);
    for (unit, time) in &before {
        assert_eq!(after.get(unit), Some(time), "unit {unit} was recomputed");
    }
    assert!(incomplete_rows(&out).is_empty());
    crate::common::assert_same_scan_csvs(&reference, &out, "the Slurm and the single-process scan");
    assert!(out.join("report.md").exists());
}

#[test]
fn a_shard_that_fails_on_a_bad_checkpoint_is_listed_by_the_report_job() {
    if !slurm_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let manifest = crate::common::local_series(work.path());
    // A fourth saved checkpoint whose weights file is cut short.
    let bad = work.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for (name, bytes) in crate::common::checkpoint_files(20) {
        let cut = if name.ends_with(".safetensors") {
            &bytes[..bytes.len() / 2]
        } else {
            &bytes[..]
        };
        std::fs::write(bad.join(name), cut).unwrap();
    }
    let text = std::fs::read_to_string(&manifest).unwrap();
    let extra = format!(
        "[[sources]]\nlabel = \"bad\"\nsource = \"{}\"\nstep = 300\n",
        bad.display()
    );
    std::fs::write(
        &manifest,
        text.replacen("[[init]]", &(extra + "[[init]]"), 1),
    )
    .unwrap();

    let (out, units) = (work.path().join("slurm-out"), work.path().join("units"));
    let (array, report) = submit(&manifest, &out, &units, &["--shards", "2"]);
    wait_for(&[&array, &report]);
    let log = std::fs::read_to_string(out.join("slurm/logs/report.log")).unwrap_or_default();
    let rows = incomplete_rows(&out);
    assert_eq!(rows.len(), 1, "{rows:?}\n{log}");
    assert_eq!(&rows[0][0], "bad");
    assert_eq!(&rows[0][1], "failed");
    assert!(
        rows[0][2].contains("model.safetensors"),
        "{:?}",
        &rows[0][2]
    );
    assert!(
        out.join("report.md").exists(),
        "the report job wrote the rest"
    );
    assert!(log.contains("missing or failed"), "{log}");
}

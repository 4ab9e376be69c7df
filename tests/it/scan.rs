//! `ckpt-scan scan`: a series walked over a loopback Hub (shas recorded, downloads evicted,
//! duplicate and missing branches flagged), and a scan killed mid-run then resumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::hub_server::{sha256_hex, Commit, HubRepo, HubServer};
use ckpt_scan::cli::{Cli, Command};
use ckpt_scan::model::forward::HiddenBudget;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::settings::Settings;
use ckpt_scan::source::hub::HubSettings;
use clap::Parser;

const REPO: &str = "org/series";

fn settings(hub: HubSettings) -> Settings {
    Settings {
        load: LoadOptions::cpu_f32(),
        hidden_budget: HiddenBudget::default(),
        quiet: true,
        hub,
        seed: None,
    }
}

fn scan_args(args: &[&str]) -> ckpt_scan::cli::ScanArgs {
    let cli = Cli::try_parse_from([&["ckpt-scan", "scan"], args].concat()).unwrap();
    match cli.command {
        Command::Scan(a) => a,
        _ => unreachable!(),
    }
}

fn manifest_json(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Files under a folder, recursively (symlinks counted as files).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hub_series_is_walked_with_shas_recorded_downloads_evicted_and_duplicates_flagged() {
    let (first, second) = (
        crate::common::checkpoint_files(1),
        crate::common::checkpoint_files(2),
    );
    let commit = |label: &str| sha256_hex(label.as_bytes())[..40].to_string();
    // step20 holds the same weights as step10 under a different commit: a duplicate branch.
    let branches = [
        ("stage1-step0-tokens0B", commit("a"), &first),
        ("stage1-step10-tokens1B", commit("b"), &second),
        ("stage1-step20-tokens2B", commit("c"), &second),
    ];
    let repo = HubRepo {
        branches: branches
            .iter()
            .map(|(b, c, _)| (b.to_string(), c.clone()))
            .collect(),
        commits: branches
            .iter()
            .map(|(_, c, files)| {
                (
                    c.clone(),
                    Commit {
                        files: (*files).clone(),
                    },
                )
            })
            .collect(),
        token: None,
    };
    let server = HubServer::start(HashMap::from([(REPO.to_string(), repo)]));
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("hf-cache");
    let manifest = work.path().join("series.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"loopback\"\n[hub]\nrepo = \"{REPO}\"\nrevisions = [\"stage1-step0-tokens0B\", \"stage1-step10-tokens1B\", \"stage1-step20-tokens2B\", \"stage1-step30-tokens3B\"]\n\
             [[init]]\nconfig = \"series\"\nseeds = [7]\n\
             [analysis]\ntext = \"random\"\ntokens = 1024\nseq_len = 32\nmax_refs = 2\nsink_sequences = 4\n"
        ),
    )
    .unwrap();
    let out = work.path().join("report");
    let mut hub = HubSettings::new(server.url.clone(), &cache);
    hub.quiet = true;
    hub.retries = 1;
    let args = scan_args(&[
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        work.path().join("units").to_str().unwrap(),
    ]);
    ckpt_scan::commands::scan::run(&args, &settings(hub)).unwrap();

    let m = manifest_json(&out);
    let records = m["checkpoints"].as_array().unwrap();
    assert_eq!(records.len(), 4, "3 branches + 1 init");
    for (record, (branch, sha, _)) in records.iter().zip(&branches) {
        assert_eq!(record["label"], *branch);
        assert_eq!(record["provenance"]["revision_sha"], sha.as_str());
        // The weights file's sha256, as the HF cache names its blob.
        let (_, files) = branches
            .iter()
            .find(|b| b.0 == *branch)
            .map(|b| (b.1.clone(), b.2))
            .unwrap();
        assert_eq!(
            record["file_sha256"][0][1],
            sha256_hex(&files["model.safetensors"]).as_str()
        );
    }
    assert_eq!(m["missing_revisions"][0], "stage1-step30-tokens3B");
    assert_eq!(m["duplicates"][0][0], "stage1-step10-tokens1B");
    assert_eq!(m["duplicates"][0][1], "stage1-step20-tokens2B");
    assert_eq!(m["duplicates"].as_array().unwrap().len(), 1);
    let checkpoints = std::fs::read_to_string(out.join("checkpoints.csv")).unwrap();
    assert!(
        checkpoints
            .lines()
            .any(|l| l.starts_with("stage1-step20-tokens2B,20,2B,")
                && l.ends_with(",stage1-step10-tokens1B")),
        "{checkpoints}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("same weights as **stage1-step10-tokens1B**"));
    // Evicted: no weights file is left in the HF cache; config.json stays.
    let left: Vec<String> = files_under(&cache)
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.ends_with(".safetensors"))
        .collect();
    assert!(left.is_empty(), "downloads left in the cache: {left:?}");
    let blobs = files_under(&cache.join("models--org--series/blobs"));
    let weight_bytes = first["model.safetensors"].len() as u64;
    assert!(
        blobs
            .iter()
            .all(|b| std::fs::metadata(b).map_or(0, |m| m.len()) < weight_bytes),
        "a weights blob survived eviction"
    );
}

/// A local series of model folders plus inits, for the resume test.
fn scan_command(
    manifest: &Path,
    out: &Path,
    units: &Path,
    extra: &[&str],
) -> std::process::Command {
    let mut command = std::process::Command::new(crate::common::bin());
    command
        .args(["--quiet", "scan", manifest.to_str().unwrap(), "--out"])
        .arg(out)
        .arg("--cache-dir")
        .arg(units)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

fn finished_units(units: &Path) -> usize {
    std::fs::read_dir(units).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

/// Issue 13: `scan` read `HOME` for its unit cache while the rest honoured `CKPT_SCAN_CACHE`, so
/// with the variable set the series and the units ended up in different trees.
#[test]
fn ckpt_scan_cache_decides_every_cache_path_and_nothing_is_written_under_home() {
    let work = tempfile::tempdir().unwrap();
    let manifest = crate::common::local_series(work.path());
    let (home, cache) = (work.path().join("home"), work.path().join("cache"));
    std::fs::create_dir_all(&home).unwrap();
    let out = work.path().join("report");
    let status = std::process::Command::new(crate::common::bin())
        .args(["--quiet", "scan", manifest.to_str().unwrap(), "--out"])
        .arg(&out)
        .env("HOME", &home)
        .env("CKPT_SCAN_CACHE", &cache)
        .env_remove("CKPT_SCAN_DATA")
        .env_remove("HF_HOME")
        .env_remove("XDG_CACHE_HOME")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(finished_units(&cache.join("units")), 5 * 4);
    assert_eq!(
        files_under(&home),
        Vec::<PathBuf>::new(),
        "written under HOME"
    );
    // The manifest's `${CKPT_SCAN_CACHE}` resolves to the same root when the variable is unset.
    let expanded = ckpt_scan::series::manifest::expand(
        "${CKPT_SCAN_CACHE}/series",
        &ckpt_scan::data::paths::manifest_var,
    )
    .unwrap();
    assert_eq!(
        PathBuf::from(expanded),
        ckpt_scan::data::paths::series_root()
    );
}

/// Issue 21: two scans with one `--out` — the second failed only at the very end, after all its work.
#[test]
fn a_second_scan_into_a_busy_report_folder_stops_before_any_work() {
    let work = tempfile::tempdir().unwrap();
    let manifest = crate::common::local_series(work.path());
    let (out, units) = (work.path().join("report"), work.path().join("units"));
    let mut first = scan_command(&manifest, &out, &units, &[]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join(".scan-in-progress").exists() {
        assert!(Instant::now() < deadline, "the first scan never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let second = scan_command(&manifest, &out, &work.path().join("units2"), &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(stderr.contains("another scan is writing"), "{stderr}");
    assert_eq!(
        finished_units(&work.path().join("units2")),
        0,
        "no work done"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_scan_killed_mid_run_resumes_to_identical_csvs_without_recomputing_finished_units() {
    let work = tempfile::tempdir().unwrap();
    let manifest = crate::common::local_series(work.path());
    // Reference: one uninterrupted scan.
    let (full_out, full_units) = (work.path().join("full"), work.path().join("full-units"));
    let status = scan_command(&manifest, &full_out, &full_units, &[])
        .status()
        .unwrap();
    assert!(status.success());
    let total = finished_units(&full_units);
    assert_eq!(total, 5 * 4, "5 checkpoints × 4 units");

    // Killed once a few units are done.
    let (out, units) = (work.path().join("killed"), work.path().join("killed-units"));
    let mut child = scan_command(&manifest, &out, &units, &[]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished_units(&units) < 6 {
        assert!(Instant::now() < deadline, "scan made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the scan finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before_resume = finished_units(&units);
    assert!(done_before_resume < total, "killed after the last unit");
    assert!(out.join(".scan-in-progress").exists());

    // Without --resume the unfinished folder is refused, with a hint.
    let refused = scan_command(&manifest, &out, &units, &[]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("did not finish") && stderr.contains("--resume"),
        "{stderr}"
    );

    let resumed = scan_command(&manifest, &out, &units, &["--resume"])
        .status()
        .unwrap();
    assert!(resumed.success());
    crate::common::assert_same_scan_csvs(&full_out, &out, "the uninterrupted and the resumed scan");
    let m = manifest_json(&out);
    let statuses: Vec<&str> = m["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["units"].as_array().unwrap())
        .map(|u| u["status"].as_str().unwrap())
        .collect();
    let cached = statuses.iter().filter(|s| **s == "cached").count();
    assert_eq!(
        cached, done_before_resume,
        "every finished unit is reused, none recomputed"
    );
    assert_eq!(statuses.len(), total);
    assert!(!out.join(".scan-in-progress").exists());
}

#[test]
fn bad_manifests_and_flags_give_one_line_errors() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[hub]\nrepo = \"a/b\"\n").unwrap();
    for (args, needle) in [
        (vec!["scan", bad.to_str().unwrap()], "needs revisions"),
        (vec!["scan", "no-such-series"], "no-such-series"),
        (vec!["scan", "/nope/x.toml"], "/nope/x.toml"),
    ] {
        let (ok, _, stderr) = crate::common::cli(&args);
        assert!(!ok);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") && first.contains(needle),
            "{stderr}"
        );
    }
    let manifest = crate::common::local_series(work.path());
    let (ok, _, stderr) =
        crate::common::cli(&["scan", manifest.to_str().unwrap(), "--max-refs", "8"]);
    assert!(!ok);
    assert!(
        stderr.contains("max-refs") || stderr.contains("max_refs"),
        "{stderr}"
    );
}

/// The sink statistics of a forward equal ACT's rule applied by hand to HF transformers' attention
/// maps of the same model (tests/fixtures/make_golden.py).
#[test]
fn sink_statistics_match_act_rule_on_hf_attention_maps() {
    use ckpt_scan::analysis::sinks::SinkStatisticsSink;
    use ckpt_scan::model::forward::{forward_streamed, OutputHead};
    let Some(dir) = crate::common::golden_dir() else {
        return;
    };
    let golden = crate::common::read_golden(&dir.join("olmo2-golden.safetensors"));
    let source = ckpt_scan::source::open_source(dir.join("olmo2").to_str().unwrap()).unwrap();
    let layers = source.config().num_hidden_layers;
    let (threshold, min_visible) = (0.1, 4usize);
    let mut sink = SinkStatisticsSink::new("golden", layers, threshold, min_visible as i64);
    forward_streamed(
        source.as_ref(),
        &[golden["input_ids"].shallow_clone()],
        &mut sink,
        &LoadOptions::cpu_f32(),
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )
    .unwrap();
    let rows = sink.rows().unwrap();
    for layer in 0..layers {
        let maps = &golden[&format!("layers.{layer}.attention")];
        let (batch, heads, n, _) = maps.size4().unwrap();
        let p: Vec<f32> = Vec::try_from(maps.contiguous().view(-1)).unwrap();
        for head in 0..heads as usize {
            let (mut first, mut all, mut evidenced) = (0.0f64, 0.0f64, 0.0f64);
            for b in 0..batch as usize {
                let n = n as usize;
                let at =
                    |i: usize, j: usize| p[((b * heads as usize + head) * n + i) * n + j] as f64;
                let scores: Vec<f64> = (0..n)
                    .map(|j| (j..n).map(|i| at(i, j)).sum::<f64>() / (n - j) as f64)
                    .collect();
                let candidates: Vec<usize> = (0..n).filter(|&j| scores[j] > threshold).collect();
                first += scores[0];
                all += candidates.len().saturating_sub(1) as f64;
                let seen = candidates.iter().filter(|&&j| n - j >= min_visible).count();
                evidenced += seen.saturating_sub(1) as f64;
            }
            let row = rows
                .iter()
                .find(|r| r.layer == layer && r.head == head)
                .unwrap();
            let b = batch as f64;
            assert!(
                (row.first_column_score - first / b).abs() < 1e-4,
                "layer {layer} head {head}"
            );
            assert_eq!(row.sinks_beyond_first, all / b, "layer {layer} head {head}");
            assert_eq!(
                row.sinks_beyond_first_evidenced,
                evidenced / b,
                "layer {layer} head {head}"
            );
        }
    }
}

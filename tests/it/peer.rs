//! ckpt-scan's `predict` against the Python peer it is benchmarked against (benches/peer): HF
//! transformers capture and one sklearn `LinearRegression` per edge and per refit, on exactly the
//! tokens `predict` wrote. Same references chosen, same in-sample and held-out R² to 1e-4, so the
//! timings in benches/README.md compare equal work.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::{bin, data_file, golden_dir};

/// f64 Gram solves against f64 lstsq on the same f32 captures.
const PEER_TOLERANCE: f64 = 1e-4;

/// The venv's interpreter (scripts/setup-venv.sh), under the fixtures' skip-or-require policy.
fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| ckpt_scan::data::paths::cache_root().join("venv"));
    data_file(venv.join("bin/python"))
}

/// Runs `command`, panicking with its stderr (labelled `what`) unless it succeeds.
fn succeed(command: &mut std::process::Command, what: &str) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_rows(path: &std::path::Path) -> Vec<HashMap<String, String>> {
    csv::Reader::from_path(path)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn predict_equals_the_sklearn_peer_on_the_same_tokens() {
    let (Some(dir), Some(python)) = (golden_dir(), venv_python()) else {
        return;
    };
    let peer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peer/predict_peer.py");
    // Post-norm with whole-vector QK-norm; GQA; sandwich norms, per-head QK-norm and windows.
    for model in ["olmo2", "llama", "gemma3"] {
        let out = tempfile::tempdir().unwrap();
        let model_dir = dir.join(model);
        succeed(
            std::process::Command::new(bin())
                .args(["--device", "cpu", "--quiet", "predict"])
                .arg(&model_dir)
                .args(["--text", "random", "--tokens", "2048", "--seq-len", "32"])
                .args(["--max-refs", "3", "--out"])
                .arg(out.path()),
            model,
        );
        let peer_csv = out.path().join("peer.csv");
        succeed(
            std::process::Command::new(&python)
                .arg(&peer)
                .arg(&model_dir)
                .arg(out.path().join("tokens.safetensors"))
                .args(["--max-refs", "3", "--out"])
                .arg(&peer_csv),
            &format!("{model} peer"),
        );
        let tool: HashMap<(String, String, String, String), HashMap<String, String>> =
            read_rows(&out.path().join("predictability.csv"))
                .into_iter()
                .map(|r| {
                    let key = (
                        r["kind"].clone(),
                        r["layer"].clone(),
                        r["target_head"].clone(),
                        r["k"].clone(),
                    );
                    (key, r)
                })
                .collect();
        let peer_rows = read_rows(&peer_csv);
        assert_eq!(peer_rows.len(), tool.len(), "{model}: rows");
        let mut worst: f64 = 0.0;
        for row in &peer_rows {
            let key = (
                row["kind"].clone(),
                row["layer"].clone(),
                row["target_head"].clone(),
                row["k"].clone(),
            );
            let ours = &tool[&key];
            assert_eq!(
                ours["reference_heads"], row["reference_heads"],
                "{model} {key:?}"
            );
            for column in ["r2_insample", "r2_heldout"] {
                let (a, b): (f64, f64) =
                    (ours[column].parse().unwrap(), row[column].parse().unwrap());
                assert!(
                    (a - b).abs() < PEER_TOLERANCE,
                    "{model} {key:?} {column}: ckpt-scan {a}, peer {b}"
                );
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{model}: {} rows, max |ΔR²| {worst:e}", peer_rows.len());
    }
}

//! Bad input gets one clear error naming the file, tensor or flag, and nothing half-written.

mod common;

use common::cli;

use std::path::Path;

use ckpt_scan::capture::NoCapture;
use ckpt_scan::commands::inspect::inspect_source;
use ckpt_scan::error::SourceResult;
use ckpt_scan::model::config::{Architecture, ModelConfig};
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::{open_source, Provenance, TensorInfo, WeightSource};
use common::{tiny_config, tiny_model_dir};
use tch::Tensor;

fn open_err(path: &Path) -> String {
    match open_source(path.to_str().unwrap()) {
        Ok(_) => panic!("{} opened without error", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tokens() -> Vec<Tensor> {
    vec![Tensor::from_slice(&[3i64, 5, 7, 9]).unsqueeze(0)]
}

fn forward_err(source: &dyn WeightSource, options: &LoadOptions) -> String {
    match forward_streamed(
        source,
        &tokens(),
        &mut NoCapture,
        options,
        OutputHead::Logits,
        &HiddenBudget::default(),
        None,
    ) {
        Ok(_) => panic!("forward succeeded"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_config_json_is_named() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");
}

#[test]
fn safetensors_header_longer_than_the_file() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let file = dir.path().join("model.safetensors");
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":1}");
    std::fs::write(&file, bytes).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated") && e.contains("header"),
        "{e}"
    );
}

#[test]
fn tensor_data_shorter_than_declared() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("more tensor data than the file holds"),
        "{e}"
    );
}

#[test]
fn missing_shard_of_an_index_is_named() {
    let dir = tiny_model_dir(Architecture::Olmo2, 20_000);
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-of-"))
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains(shard.file_name().unwrap().to_str().unwrap()) && e.contains("not found"),
        "{e}"
    );
}

#[test]
fn tensor_shape_disagreeing_with_the_config() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["intermediate_size"] = serde_json::json!(40);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let source = open_source(dir.path().to_str().unwrap()).unwrap();
    let e = forward_err(source.as_ref(), &LoadOptions::cpu_f32());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[48, 32]")
            && e.contains("[40, 32]"),
        "{e}"
    );
    let report = inspect_source(source.as_ref(), false).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("mlp.gate_proj.weight")),
        "{:?}",
        report.problems
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("MambaForCausalLM") && e.contains("config.json"),
        "{e}"
    );
}

/// Issue 20: a RoPE variant ckpt-scan does not implement used to run silently as plain RoPE.
#[test]
fn unknown_rope_type_is_refused_in_one_line_not_run_as_plain_rope() {
    let dir = tiny_model_dir(Architecture::Llama, u64::MAX);
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 4.0,
        "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0]});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("\"longrope\"") && e.contains("config.json") && !e.contains('\n'),
        "{e}"
    );
}

/// A source that returns NaN for one tensor and delegates the rest.
struct PoisonedSource {
    inner: InitSource,
    poisoned: &'static str,
}

impl WeightSource for PoisonedSource {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn provenance(&self) -> &Provenance {
        self.inner.provenance()
    }
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.inner.tensor_infos()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn read(&self, name: &str) -> SourceResult<Tensor> {
        let t = self.inner.read(name)?;
        if name == self.poisoned {
            let _ = t.view(-1).get(3).fill_(f64::NAN);
        }
        Ok(t)
    }
}

#[test]
fn nan_weights_are_reported_by_inspect_and_refused_by_forward_unless_allowed() {
    let poisoned = "model.layers.1.self_attn.k_proj.weight";
    let source = PoisonedSource {
        inner: InitSource::new(
            tiny_config(Architecture::Olmo2),
            1,
            InitScheme::Olmo,
            "init:tiny",
        ),
        poisoned,
    };
    // Through a real safetensors folder, as a user would meet it.
    let dir = tempfile::tempdir().unwrap();
    ckpt_scan::source::export::export_safetensors(&source, dir.path(), u64::MAX).unwrap();
    let source = open_source(dir.path().to_str().unwrap()).unwrap();
    let report = inspect_source(source.as_ref(), true).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(poisoned) && p.contains("1 NaN/Inf")),
        "{:?}",
        report.problems
    );
    let e = forward_err(source.as_ref(), &LoadOptions::cpu_f32());
    assert!(e.contains(poisoned) && e.contains("--allow-nan"), "{e}");
    let allowed = LoadOptions {
        allow_nan: true,
        ..LoadOptions::cpu_f32()
    };
    assert!(forward_streamed(
        source.as_ref(),
        &tokens(),
        &mut NoCapture,
        &allowed,
        OutputHead::Logits,
        &HiddenBudget::default(),
        None,
    )
    .is_ok());
}

#[test]
fn token_ids_outside_the_vocabulary() {
    let source = InitSource::new(
        tiny_config(Architecture::Llama),
        1,
        InitScheme::Hf,
        "init:tiny",
    );
    let batch = vec![Tensor::from_slice(&[3i64, 64]).unsqueeze(0)];
    let e = forward_streamed(
        &source,
        &batch,
        &mut NoCapture,
        &LoadOptions::cpu_f32(),
        OutputHead::Logits,
        &HiddenBudget::default(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("token id 64") && e.contains("0..64"), "{e}");
}

#[test]
fn cli_malformed_source_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (ok, _, stderr) = cli(&[
        "inspect",
        "hf:only-a-name",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: source \"hf:only-a-name\""),
        "{stderr}"
    );
    assert!(!json.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn cli_bad_flag_value_names_the_flag() {
    let (ok, _, stderr) = cli(&["--device", "tpu", "inspect", "init:olmo2-1b"]);
    assert!(!ok);
    assert!(stderr.contains("--device"), "{stderr}");
    let (ok, _, stderr) = cli(&[
        "--threads",
        "0",
        "inspect",
        "init:olmo2-1b",
        "--headers-only",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--threads"), "{stderr}");
}

#[test]
fn cli_inspect_writes_json_atomically() {
    let dir = tiny_model_dir(Architecture::Llama, 30_000);
    let json = dir.path().join("out/inspect.json");
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "inspect",
        dir.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("problems     none"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // 2 layers × 9 tensors + embedding + final norm (tied: no lm_head).
    assert_eq!(report["tensors"].as_array().unwrap().len(), 2 * 9 + 2);
}

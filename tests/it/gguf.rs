//! The GGUF source against independent references (tests/fixtures/make_gguf.py): gguf-py's
//! dequantisation of every supported type, a small Llama converted the way llama.cpp converts
//! (against that checkpoint's transformers logits), and SmolLM2-135M-Instruct Q4_1 against
//! transformers' own GGUF loader (tensors, logits, token ids, greedy text). Bad files are built
//! here in code.

use std::path::{Path, PathBuf};

use crate::common::{assert_close, assert_mentions, data_file, golden_dir, json_ids, read_golden};
use ckpt_scan::capture::NoCapture;
use ckpt_scan::config::ModelConfig;
use ckpt_scan::data::paths::smollm2_gguf;
use ckpt_scan::data::tokenizer::{decode, encode};
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::resident::ResidentModel;
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::gguf::GgufSource;
use ckpt_scan::source::gguf_file::GgufFile;
use ckpt_scan::source::names::{gguf_name, hf_name, permute_rope_rows, unpermute_rope_rows};
use ckpt_scan::source::{expected_tensors, open_source, WeightSource};
use tch::{Kind, Tensor};

/// Dequantisation repeats gguf-py's f32 operations in the same order: results must be identical.
const DEQUANT_TOLERANCE: f64 = 0.0;
/// An F32 GGUF of a safetensors checkpoint is the same weights: same bar as tests/golden.rs.
const GOLDEN_TOLERANCE: f64 = 1e-4;
/// ckpt-scan's and transformers' dequantised SmolLM2 tensors (different code, same f32 math).
const SMOLLM2_TENSOR_TOLERANCE: f64 = 1e-5;
/// SmolLM2 logits through 30 layers, ckpt-scan vs transformers, both f32 on the CPU.
const SMOLLM2_LOGIT_TOLERANCE: f64 = 1e-3;

/// Types ckpt-scan dequantises, each with a `gguf/quant-<TYPE>.gguf` fixture.
/// Qwen2/Qwen3/Gemma-3 GGUFs through ckpt-scan and through transformers' GGUF loader, both f32
/// on the CPU (attention peaked ×8, as the windowed golden fixtures).
const FAMILY_LOGIT_TOLERANCE: f64 = 5e-4;

const SUPPORTED: [&str; 11] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
];

/// One tensor by both read paths (in-place into a tensor, and into a `Vec`), which must agree.
fn gguf_tensor(file: &GgufFile, name: &str) -> Tensor {
    let info = file.tensor(name).unwrap();
    let tensor = file.read_tensor(info).unwrap();
    let values = file.read_f32(info).unwrap();
    assert!(tensor.equal(&Tensor::from_slice(&values).reshape(info.shape())));
    tensor
}

#[test]
fn every_supported_type_dequantises_exactly_as_gguf_py() {
    let Some(dir) = golden_dir() else { return };
    let Some(reference) = data_file(dir.join("gguf-quant-reference.safetensors")) else {
        return;
    };
    let reference = read_golden(&reference);
    for ty in SUPPORTED {
        let file = GgufFile::open(&dir.join(format!("gguf/quant-{ty}.gguf"))).unwrap();
        assert_eq!(file.tensor("weight").unwrap().ggml_type.name(), ty);
        let worst = assert_close(
            ty,
            &gguf_tensor(&file, "weight"),
            &reference[ty],
            DEQUANT_TOLERANCE,
        );
        eprintln!("{ty}: max |diff| {worst:e} over {:?}", reference[ty].size());
    }
    // An F32 tensor whose shape has no block structure (3 × 5 × 7).
    let file = GgufFile::open(&dir.join("gguf/quant-F32.gguf")).unwrap();
    let odd = gguf_tensor(&file, "odd");
    assert_eq!(odd.size(), [3, 5, 7]);
    assert_close("F32 odd", &odd, &reference["F32.odd"], DEQUANT_TOLERANCE);
}

#[test]
fn unsupported_type_names_tensor_type_and_file() {
    let Some(dir) = golden_dir() else { return };
    let Some(path) = data_file(dir.join("gguf/quant-Q3_K.gguf")) else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let error = file
        .read_f32(file.tensor("weight").unwrap())
        .unwrap_err()
        .to_string();
    assert_mentions(
        &error,
        &[
            "tensor weight",
            "Q3_K",
            "GGML type 11",
            &path.display().to_string(),
        ],
    );
}

#[test]
fn unsupported_type_through_the_source_names_both_tensor_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    let mut gguf = TinyLlama::new(256);
    // IQ2_XXS (type 16): 66 bytes per 256 weights.
    gguf.tensor("blk.0.attn_q.weight", &[256, 256], 16, vec![0; 256 * 66]);
    std::fs::write(&path, gguf.bytes()).unwrap();
    let source = GgufSource::open(&path, "gguf:iq.gguf").unwrap();
    let error = source
        .read("model.layers.0.self_attn.q_proj.weight")
        .unwrap_err()
        .to_string();
    assert_mentions(
        &error,
        &[
            "model.layers.0.self_attn.q_proj.weight (blk.0.attn_q.weight)",
            "unsupported dtype IQ2_XXS",
            "iq.gguf",
        ],
    );
}

#[test]
fn an_unsupported_family_is_refused_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("neox.gguf");
    let mut gguf = TinyLlama::new(64);
    gguf.architecture = "gptneox".into();
    std::fs::write(&path, gguf.bytes()).unwrap();
    let error = GgufSource::open(&path, "gguf:neox.gguf")
        .err()
        .expect("refused")
        .to_string();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert_mentions(
        &error,
        &["neox.gguf", "gptneox", "llama, qwen2, qwen3, gemma3"],
    );
}

#[test]
fn a_sentencepiece_tokenizer_outside_gemma_names_itself_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spm.gguf");
    let mut gguf = TinyLlama::new(64);
    gguf.string("tokenizer.ggml.model", "llama");
    std::fs::write(&path, gguf.bytes()).unwrap();
    let source = GgufSource::open(&path, "gguf:spm.gguf").unwrap();
    let error = source
        .embedded_tokenizer()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert_mentions(
        &error,
        &[
            "spm.gguf",
            "tokenizer.ggml.model \"llama\"",
            "\"llama\"",
            "--tokenizer",
        ],
    );
}

#[test]
fn absurd_tensor_count_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absurd.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend((1u64 << 61).to_le_bytes()); // tensor count
    bytes.extend(0u64.to_le_bytes()); // key/value count
    std::fs::write(&path, &bytes).unwrap();
    let spec = format!("gguf:{}", path.display());
    let error = open_source(&spec).err().unwrap().to_string();
    assert_mentions(
        &error,
        &[
            "declares 2305843009213693952 tensors",
            "bytes left in the file",
            "absurd.gguf",
        ],
    );
}

/// llama.cpp's form of Llama 3.1 RoPE scaling (a `rope_freqs.weight` divisor table, no scaling
/// type) is refused rather than run as plain RoPE (issue 20).
#[test]
fn rope_frequency_factors_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama31.gguf");
    let mut gguf = TinyLlama::new(64);
    gguf.tensor("rope_freqs.weight", &[8], 0, vec![0; 8 * 4]);
    std::fs::write(&path, gguf.bytes()).unwrap();
    let error = open_source(path.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &error,
        &["llama31.gguf", "rope_freqs.weight", "not supported"],
    );
}

#[test]
fn truncated_tensor_data_is_reported_with_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let mut gguf = TinyLlama::new(64);
    gguf.tensor(
        "blk.0.ffn_down.weight",
        &[128, 64],
        0,
        vec![0; 128 * 64 * 4],
    );
    let mut bytes = gguf.bytes();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&path, &bytes).unwrap();
    let error = open_source(path.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(
        &error,
        &[
            "cut.gguf: truncated",
            "tensor blk.0.ffn_down.weight (32768 bytes",
            "past the end of the file",
        ],
    );
}

#[test]
fn every_family_tensor_name_round_trips_and_unpermute_inverts_permute() {
    for (class, extra) in [
        ("LlamaForCausalLM", serde_json::json!({})),
        ("Qwen2ForCausalLM", serde_json::json!({})),
        ("Qwen3ForCausalLM", serde_json::json!({"head_dim": 8})),
        ("Gemma3ForCausalLM", serde_json::json!({"head_dim": 8})),
    ] {
        let mut json = serde_json::json!({
            "architectures": [class], "vocab_size": 32, "hidden_size": 48,
            "intermediate_size": 64, "num_hidden_layers": 12, "num_attention_heads": 6,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": false
        });
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let config = ModelConfig::from_json(&json, Path::new("config.json")).unwrap();
        let names = expected_tensors(&config);
        assert!(names.len() > 12 * 9, "{class}: {} tensors", names.len());
        for (hf, _) in names {
            let arch = config.architecture;
            let gguf =
                gguf_name(&hf, arch).unwrap_or_else(|| panic!("{class}: {hf} has no GGUF name"));
            assert_eq!(
                hf_name(&gguf, arch).as_deref(),
                Some(hf.as_str()),
                "{class}: {gguf}"
            );
        }
    }
    tch::manual_seed(0);
    for heads in [6, 2] {
        let w = Tensor::randn([heads * 8, 48], (Kind::Float, tch::Device::Cpu));
        let permuted = permute_rope_rows(&w, heads);
        assert!(!permuted.equal(&w));
        assert!(unpermute_rope_rows(&permuted, heads).equal(&w));
    }
}

fn golden_config(dir: &Path) -> ModelConfig {
    ModelConfig::from_file(&dir.join("llama/config.json")).unwrap()
}

#[test]
fn llama_converted_like_llama_cpp_equals_its_safetensors_and_transformers_logits() {
    let Some(dir) = golden_dir() else { return };
    let Some(path) = data_file(dir.join("gguf/llama-f32.gguf")) else {
        return;
    };
    let gguf = open_source(path.to_str().unwrap()).unwrap();
    let safetensors = open_source(dir.join("llama").to_str().unwrap()).unwrap();
    // GGUF metadata carries no pad token and stores epsilon as f32 (1e-6 reads back as
    // 9.99999997e-7, in llama.cpp and transformers alike); everything else equals config.json.
    let config = golden_config(&dir);
    let expected = ModelConfig {
        pad_token_id: None,
        rms_norm_eps: f64::from(config.rms_norm_eps as f32),
        ..config
    };
    assert_eq!(gguf.config(), &expected);
    for (name, _) in expected_tensors(gguf.config()) {
        let worst = assert_close(
            &name,
            &gguf.read(&name).unwrap(),
            &safetensors.read(&name).unwrap(),
            0.0,
        );
        assert_eq!(worst, 0.0);
    }
    let golden = read_golden(&dir.join("llama-golden.safetensors"));
    let logits = forward_streamed(
        gguf.as_ref(),
        &[golden["input_ids"].shallow_clone()],
        &mut NoCapture,
        &LoadOptions::cpu_f32(),
        OutputHead::Logits,
        &HiddenBudget::default(),
        None,
    )
    .unwrap()
    .remove(0);
    let worst = assert_close(
        "llama-f32.gguf logits",
        &logits,
        &golden["logits"],
        GOLDEN_TOLERANCE,
    );
    eprintln!("llama-f32.gguf: logits max |diff| {worst:e}");
}

#[test]
fn qwen2_qwen3_and_gemma3_ggufs_give_transformers_logits_from_the_same_file() {
    let Some(dir) = golden_dir() else { return };
    let Some(golden) = data_file(dir.join("gguf-families-golden.safetensors")) else {
        return;
    };
    let golden = read_golden(&golden);
    for arch in ["qwen2", "qwen3", "gemma3"] {
        let path = dir.join(format!("gguf/{arch}-f32.gguf"));
        let source = open_source(&format!("gguf:{}", path.display())).unwrap();
        let config = source.config();
        assert_eq!(
            config.architecture.model_type().trim_end_matches("_text"),
            arch
        );
        if arch == "gemma3" {
            // The window, its five-local-one-global pattern and the score scale come from the
            // family's defaults, as transformers' loader sets them.
            let window = config.sliding_window.as_ref().expect("Gemma-3 windows");
            assert_eq!(window.size, 4);
            assert_eq!(window.layers, [true, true, true, true, true, false, true]);
            assert_eq!(window.rope_theta, 10_000.0);
            assert_eq!(config.rope_theta, 1e6);
            assert_eq!(config.query_pre_attn_scalar, Some(256.0));
        }
        let ids = golden[&format!("{arch}.ids")].unsqueeze(0);
        let logits = forward_streamed(
            source.as_ref(),
            &[ids],
            &mut NoCapture,
            &LoadOptions::cpu_f32(),
            OutputHead::Logits,
            &HiddenBudget::default(),
            None,
        )
        .unwrap()
        .remove(0);
        let expected = &golden[&format!("{arch}.logits")];
        let worst = assert_close(
            arch,
            &logits.squeeze_dim(0),
            expected,
            FAMILY_LOGIT_TOLERANCE,
        );
        eprintln!("{arch}-f32.gguf: logits max |diff| {worst:e}");
    }
}

/// SmolLM2's GGUF and transformers' reading of it, or `None` (skip) when either is missing.
fn smollm2() -> Option<(Box<dyn WeightSource>, PathBuf)> {
    let dir = golden_dir()?;
    let model = data_file(smollm2_gguf())?;
    data_file(dir.join("smollm2-golden.safetensors"))?;
    Some((
        open_source(&format!("gguf:{}", model.display())).unwrap(),
        dir,
    ))
}

fn smollm2_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("smollm2-golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn smollm2_embedded_tokenizer_gives_transformers_ids() {
    let Some((source, dir)) = smollm2() else {
        return;
    };
    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let golden = smollm2_json(&dir);
    let prompts = golden["prompts"].as_array().unwrap();
    for (prompt, expected) in prompts.iter().zip(golden["ids"].as_array().unwrap()) {
        let prompt = prompt.as_str().unwrap();
        let actual = encode(&tokenizer, prompt).unwrap();
        assert_eq!(actual, json_ids(expected), "{prompt:?}");
        assert_eq!(decode(&tokenizer, &actual).unwrap(), prompt);
    }
    assert_eq!(
        encode(&tokenizer, "The capital of France is").unwrap(),
        [504, 3575, 282, 4649, 314]
    );
}

#[test]
fn smollm2_tensors_equal_transformers_dequantisation() {
    let Some((source, dir)) = smollm2() else {
        return;
    };
    let golden = read_golden(&dir.join("smollm2-golden.safetensors"));
    let mut checked = 0;
    for (name, expected) in &golden {
        let Some(hf) = name.strip_suffix("[:512]") else {
            if name.starts_with("logits.") {
                continue;
            }
            let worst = assert_close(
                name,
                &source.read(name).unwrap(),
                expected,
                SMOLLM2_TENSOR_TOLERANCE,
            );
            eprintln!("{name}: max |diff| {worst:e}");
            checked += 1;
            continue;
        };
        let rows = expected.size()[0];
        let actual = source.read(hf).unwrap().narrow(0, 0, rows);
        let worst = assert_close(name, &actual, expected, SMOLLM2_TENSOR_TOLERANCE);
        eprintln!("{name}: max |diff| {worst:e}");
        checked += 1;
    }
    assert_eq!(checked, 9, "tensors in smollm2-golden.safetensors");
}

#[test]
fn smollm2_logits_and_greedy_text_match_transformers() {
    let Some((source, dir)) = smollm2() else {
        return;
    };
    let golden = read_golden(&dir.join("smollm2-golden.safetensors"));
    let json = smollm2_json(&dir);

    let start = std::time::Instant::now();
    for info in source.tensor_infos() {
        assert_eq!(source.read(&info.name).unwrap().size(), info.shape);
    }
    eprintln!(
        "SmolLM2 whole-model dequantisation: {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let model = ResidentModel::load(source.as_ref(), &LoadOptions::cpu_f32()).unwrap();
    let mut overall: f64 = 0.0;
    for (i, prompt_ids) in json["ids"].as_array().unwrap().iter().enumerate() {
        let input = Tensor::from_slice(&json_ids(prompt_ids)).unsqueeze(0);
        let logits = model.logits(&input).unwrap().squeeze_dim(0);
        let name = format!("logits.{i}");
        let worst = assert_close(&name, &logits, &golden[&name], SMOLLM2_LOGIT_TOLERANCE);
        eprintln!("SmolLM2 {name}: max |diff| {worst:e}");
        overall = overall.max(worst);
    }
    eprintln!("SmolLM2 logits: max |diff| over all prompts {overall:e}");

    let tokenizer = source.embedded_tokenizer().unwrap().unwrap();
    let prompt = encode(&tokenizer, json["greedy_prompt"].as_str().unwrap()).unwrap();
    let expected = json_ids(&json["greedy_ids"]);
    let continuation = model
        .greedy(&prompt, expected.len(), source.config().eos_token_id)
        .unwrap();
    let text = decode(&tokenizer, &continuation).unwrap();
    eprintln!("SmolLM2 greedy: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(continuation, expected, "greedy ids vs transformers");
    assert_eq!(text, json["greedy_text"].as_str().unwrap());
}

/// A minimal Llama GGUF built in code: one layer, `hidden` wide, plus whatever tensors a test adds
/// (F32 embeddings of 16 tokens are always present).
struct TinyLlama {
    hidden: u64,
    /// `general.architecture`, and the prefix of the shape keys.
    architecture: String,
    strings: Vec<(String, String)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl TinyLlama {
    fn new(hidden: u64) -> Self {
        let mut gguf = TinyLlama {
            hidden,
            architecture: "llama".into(),
            strings: Vec::new(),
            tensors: Vec::new(),
        };
        gguf.tensor(
            "token_embd.weight",
            &[hidden, 16],
            0,
            vec![0; hidden as usize * 16 * 4],
        );
        gguf
    }

    fn string(&mut self, key: &str, value: &str) {
        self.strings.push((key.into(), value.into()));
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ggml_type, data));
    }

    fn bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        let arch = &self.architecture;
        let kv_u32 = [
            ("block_count", 1),
            ("embedding_length", self.hidden as u32),
            ("feed_forward_length", 2 * self.hidden as u32),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
        ];
        let strings: Vec<(String, String)> = [("general.architecture".into(), arch.clone())]
            .into_iter()
            .chain(self.strings.iter().cloned())
            .collect();
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(((kv_u32.len() + strings.len() + 1) as u64).to_le_bytes());
        for (key, value) in &strings {
            string(&mut out, key);
            out.extend(8u32.to_le_bytes());
            string(&mut out, value);
        }
        string(
            &mut out,
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
        );
        out.extend(6u32.to_le_bytes());
        out.extend(1e-5f32.to_le_bytes());
        for (key, value) in kv_u32 {
            string(&mut out, &format!("{arch}.{key}"));
            out.extend(4u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type, data) in &self.tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ggml_type.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).next_multiple_of(32);
        }
        for (_, _, _, data) in &self.tensors {
            out.resize(out.len().next_multiple_of(32), 0);
            out.extend(data);
        }
        out
    }
}

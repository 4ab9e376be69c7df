//! Linear predictability against independent references: every R² the Gram path reports equals a
//! direct least-squares solve on the token matrices; theory at init; overfitting made visible;
//! bad input flagged, never a silent number.

use crate::common::cli;

use ckpt_scan::analysis::predictability::{
    Candidates, PredictabilityOptions, PredictabilitySink, PredictionRow,
};
use ckpt_scan::capture::recorder::Recorder;
use ckpt_scan::capture::{token_rows, HeadKind};
use ckpt_scan::capture::{CapturePoint, CaptureSink, LayerCapture};
use ckpt_scan::config::{Architecture, ModelConfig};
use ckpt_scan::data::token_set::Split;
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::source::init::{InitScheme, InitSource};

use crate::common::tiny_config;
use ckpt_scan::stats::selection::Selection;
use tch::{Device, Kind, Tensor};

/// Agreement demanded between the Gram path and a direct solve (the bar).
const EXACTNESS: f64 = 1e-6;

/// Direct OLS with intercept on token rows: (in-sample uniform, in-sample pooled, held-out uniform, held-out pooled).
fn direct_r2(x_fit: &Tensor, y_fit: &Tensor, x_held: &Tensor, y_held: &Tensor) -> [f64; 4] {
    let with_ones = |x: &Tensor| {
        Tensor::cat(
            &[
                x,
                &Tensor::ones([x.size()[0], 1], (Kind::Double, Device::Cpu)),
            ],
            1,
        )
    };
    let (beta, _, _, _) = with_ones(x_fit).linalg_lstsq(y_fit, None, "gelsd");
    let r2 = |x: &Tensor, y: &Tensor| {
        let residual = y - with_ones(x).matmul(&beta);
        let sse = residual
            .pow_tensor_scalar(2)
            .sum_dim_intlist(0, false, Kind::Double);
        let sst = (y - y.mean_dim(0, true, Kind::Double))
            .pow_tensor_scalar(2)
            .sum_dim_intlist(0, false, Kind::Double);
        let uniform = ((&sse / &sst).neg() + 1.0)
            .mean(Kind::Double)
            .double_value(&[]);
        let pooled =
            1.0 - sse.sum(Kind::Double).double_value(&[]) / sst.sum(Kind::Double).double_value(&[]);
        (uniform, pooled)
    };
    let (iu, ip) = r2(x_fit, y_fit);
    let (hu, hp) = r2(x_held, y_held);
    [iu, ip, hu, hp]
}

fn head_block(rows: &Tensor, heads: &[usize], d: i64) -> Tensor {
    Tensor::cat(
        &heads
            .iter()
            .map(|&h| rows.narrow(1, h as i64 * d, d))
            .collect::<Vec<_>>(),
        1,
    )
}

fn parse_heads(list: &str) -> Vec<usize> {
    list.split(';').map(|h| h.parse().unwrap()).collect()
}

/// Runs the sink and a recorder over the same batches of a tiny model; checks every row and edge.
fn check_exactness(architecture: Architecture, selection: Selection) {
    check_exactness_of(tiny_config(architecture), selection);
}

fn check_exactness_of(config: ckpt_scan::config::ModelConfig, selection: Selection) {
    let architecture = config.architecture;
    let source = InitSource::new(config.clone(), 21, InitScheme::Hf, "init:tiny");
    tch::manual_seed(5);
    // 8 fit batches and 3 held-out batches of 2 × 16 tokens: 256 fit rows, 96 held-out rows.
    let splits: Vec<Split> = (0..11)
        .map(|i| if i < 8 { Split::Fit } else { Split::Heldout })
        .collect();
    let batches: Vec<Tensor> = splits
        .iter()
        .map(|_| Tensor::randint(config.vocab_size, [2, 16], (Kind::Int64, Device::Cpu)))
        .collect();
    let options = PredictabilityOptions {
        kinds: vec![HeadKind::Q, HeadKind::K, HeadKind::V],
        max_refs: 1, // set below per kind
        selection,
        capture_point: CapturePoint::Rope,
        layers: None,
        candidates: Candidates::SameLayer,
        store_budget_bytes: u64::MAX,
    };
    // Llama's 2 KV heads allow one reference, so its K and V are capped at k = 1 while its
    // 4 query heads reach three (issue 20: capped per kind, not refused).
    let max_refs = 3;
    let options = PredictabilityOptions {
        max_refs,
        ..options
    };
    let mut sink = PredictabilitySink::new(options, "init:tiny", &config, splits.clone());
    let load = LoadOptions::cpu_f32();
    forward_streamed(
        &source,
        &batches,
        &mut sink,
        &load,
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )
    .unwrap();
    let mut recorder = Recorder::new(&[CapturePoint::Rope], false);
    forward_streamed(
        &source,
        &batches,
        &mut recorder,
        &load,
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )
    .unwrap();

    let d = config.head_dim;
    let mut checked = 0;
    let mut worst = 0.0f64;
    for row in &sink.rows {
        let layer = &recorder.layers[&(row.layer, CapturePoint::Rope)];
        let pick = |i: usize| match row.kind {
            HeadKind::Q => &layer.queries[i],
            HeadKind::K => &layer.keys[i],
            HeadKind::V => &layer.values[i],
        };
        let rows_of = |split: Split| {
            let parts: Vec<Tensor> = (0..batches.len())
                .filter(|&i| splits[i] == split)
                .map(|i| token_rows(pick(i)))
                .collect();
            Tensor::cat(&parts, 0).to_kind(Kind::Double)
        };
        let (fit_rows, held_rows) = (rows_of(Split::Fit), rows_of(Split::Heldout));
        let refs = parse_heads(&row.reference_heads);
        let want = direct_r2(
            &head_block(&fit_rows, &refs, d),
            &head_block(&fit_rows, &[row.target_head], d),
            &head_block(&held_rows, &refs, d),
            &head_block(&held_rows, &[row.target_head], d),
        );
        let got = [
            row.r2_insample,
            row.r2_pooled_insample,
            row.r2_heldout,
            row.r2_pooled_heldout,
        ];
        for (g, w) in got.iter().zip(want) {
            worst = worst.max((g - w).abs());
            assert!(
                (g - w).abs() < EXACTNESS,
                "{row:?}: {got:?} vs direct {want:?}"
            );
        }
        assert!(row.status.is_empty(), "{row:?}");
        assert_eq!((row.n_fit, row.n_heldout), (256, 96));
        let heads = match row.kind {
            HeadKind::Q => config.num_attention_heads,
            _ => config.num_key_value_heads,
        } as usize;
        assert_eq!(row.max_k, max_refs.min(heads - 1), "{row:?}");
        assert!(row.k <= row.max_k, "{row:?}");
        checked += 1;
    }
    let kinds = [
        config.num_attention_heads,
        config.num_key_value_heads,
        config.num_key_value_heads,
    ];
    assert_eq!(
        checked as i64,
        config.num_hidden_layers
            * kinds
                .iter()
                .map(|&h| h * (max_refs as i64).min(h - 1))
                .sum::<i64>()
    );
    // Every ordered pair of distinct heads has an edge.
    let pairs: i64 = kinds.iter().map(|h| h * (h - 1)).sum();
    assert_eq!(sink.edges.len() as i64, config.num_hidden_layers * pairs);
    eprintln!("{architecture:?} {selection:?}: {checked} rows, worst |Gram − lstsq| = {worst:e}");
}

#[test]
fn every_r2_equals_a_direct_least_squares_solve_olmo2_topn() {
    check_exactness(Architecture::Olmo2, Selection::Topn);
}

#[test]
fn every_r2_equals_a_direct_least_squares_solve_olmo2_greedy() {
    check_exactness(Architecture::Olmo2, Selection::Greedy);
}

#[test]
fn every_r2_equals_a_direct_least_squares_solve_llama_gqa() {
    check_exactness(Architecture::Llama, Selection::Topn);
}

/// Issue 14: the Qwen blocks (biases, per-head QK-norm) through the same capture and fits.
#[test]
fn every_r2_equals_a_direct_least_squares_solve_qwen2_and_qwen3() {
    check_exactness(Architecture::Qwen2, Selection::Topn);
    check_exactness(Architecture::Qwen3, Selection::Topn);
}

/// GPT-NeoX: the fused QKV read per head, biases, partial rotary, parallel residual.
#[test]
fn every_r2_equals_a_direct_least_squares_solve_gpt_neox() {
    check_exactness(Architecture::GptNeox, Selection::Topn);
}

/// Sliding windows (4 tokens over 16-token batches) in the capture the fits read.
#[test]
fn every_r2_equals_a_direct_least_squares_solve_mistral_and_olmo3_windowed() {
    check_exactness_of(
        crate::common::tiny_windowed_config(Architecture::Mistral),
        Selection::Topn,
    );
    check_exactness_of(
        crate::common::tiny_windowed_config(Architecture::Olmo3),
        Selection::Topn,
    );
}

/// Gemma-3: sandwich norms storing gain − 1, per-head QK-norm, its own score scale, a window on
/// layer 0 with its own RoPE base.
#[test]
fn every_r2_equals_a_direct_least_squares_solve_gemma3() {
    check_exactness_of(
        crate::common::tiny_windowed_config(Architecture::Gemma3),
        Selection::Topn,
    );
}

/// Feeds one synthetic layer straight into the sink: `[batch, heads, seq, d]` per batch.
fn feed(sink: &mut PredictabilitySink, batches: &[Tensor]) -> Vec<PredictionRow> {
    for (i, b) in batches.iter().enumerate() {
        sink.capture(&LayerCapture {
            layer: 0,
            batch_index: i,
            point: CapturePoint::Rope,
            queries: b,
            keys: b,
            values: b,
            attention: None,
        })
        .unwrap();
    }
    sink.finish_layer(0).unwrap();
    sink.rows.clone()
}

#[test]
fn pure_noise_gives_in_sample_r2_near_p_over_n_and_held_out_near_zero() {
    let mut config = tiny_config(Architecture::Olmo2);
    config.num_attention_heads = 6;
    config.num_key_value_heads = 6;
    config.head_dim = 16;
    // 20 fit batches and 20 held-out batches of 50 rows: n_fit = 1000.
    let splits: Vec<Split> = (0..40)
        .map(|i| if i < 20 { Split::Fit } else { Split::Heldout })
        .collect();
    tch::manual_seed(11);
    let batches: Vec<Tensor> = (0..40)
        .map(|_| Tensor::randn([1, 6, 50, 16], (Kind::Float, Device::Cpu)))
        .collect();
    let options = PredictabilityOptions {
        kinds: vec![HeadKind::K],
        max_refs: 5,
        selection: Selection::Topn,
        capture_point: CapturePoint::Rope,
        layers: None,
        candidates: Candidates::SameLayer,
        store_budget_bytes: u64::MAX,
    };
    let mut sink = PredictabilitySink::new(options, "noise", &config, splits);
    let rows = feed(&mut sink, &batches);
    for k in 1..=5 {
        let sel: Vec<&PredictionRow> = rows.iter().filter(|r| r.k == k).collect();
        let insample = sel.iter().map(|r| r.r2_insample).sum::<f64>() / sel.len() as f64;
        let heldout = sel.iter().map(|r| r.r2_heldout).sum::<f64>() / sel.len() as f64;
        let p_over_n = (k * 16) as f64 / 1000.0;
        // In-sample R² of noise is Beta(p/2, (n−p−1)/2): mean p/(n−1), sd ≈ 0.01 here (plus a little
        // from picking the best of five candidates).
        assert!(
            (insample - p_over_n).abs() < 0.25 * p_over_n + 0.01,
            "k={k}: in-sample {insample} vs p/n {p_over_n}"
        );
        // Held out, the fitted noise costs about p/n: never a real positive R².
        assert!(
            heldout < 0.01 && heldout > -2.5 * p_over_n - 0.02,
            "k={k}: held-out {heldout}"
        );
    }
}

#[test]
fn too_few_held_out_rows_is_a_flagged_nan_not_a_number() {
    let config = tiny_config(Architecture::Olmo2);
    let splits = vec![Split::Fit; 6]
        .into_iter()
        .chain([Split::Heldout])
        .collect::<Vec<_>>();
    tch::manual_seed(2);
    let batches: Vec<Tensor> = (0..7)
        .map(|_| Tensor::randn([1, 4, 20, 8], (Kind::Float, Device::Cpu)))
        .collect();
    let options = PredictabilityOptions {
        kinds: vec![HeadKind::K],
        max_refs: 3,
        selection: Selection::Topn,
        capture_point: CapturePoint::Rope,
        layers: None,
        candidates: Candidates::SameLayer,
        store_budget_bytes: u64::MAX,
    };
    let mut sink = PredictabilitySink::new(options, "few", &config, splits);
    let rows = feed(&mut sink, &batches);
    // 20 held-out rows: k = 1 (9 parameters) is scored, k = 3 (25 parameters) is not.
    let k1 = rows.iter().find(|r| r.k == 1).unwrap();
    assert!(k1.r2_heldout.is_finite() && k1.status.is_empty(), "{k1:?}");
    let k3 = rows.iter().find(|r| r.k == 3).unwrap();
    assert!(
        k3.r2_heldout.is_nan() && k3.r2_insample.is_finite(),
        "{k3:?}"
    );
    assert!(
        k3.status
            .contains("too few held-out rows: 20 for 25 parameters"),
        "{k3:?}"
    );
}

/// Issue 20: on a GQA model `--max-refs` above the K/V candidates used to refuse the whole run;
/// now k is capped per kind (and, for earlier-layers candidates, per layer), and only a kind
/// with no candidate anywhere is refused.
#[test]
fn max_refs_above_the_kv_heads_is_capped_per_kind_not_refused() {
    let config = tiny_config(Architecture::Llama); // 4 query heads, 2 KV heads, 2 layers
    let options = |kinds: Vec<HeadKind>, max_refs| PredictabilityOptions {
        kinds,
        max_refs,
        selection: Selection::Topn,
        capture_point: CapturePoint::Rope,
        layers: None,
        candidates: Candidates::SameLayer,
        store_budget_bytes: u64::MAX,
    };
    let same_layer = options(vec![HeadKind::Q, HeadKind::K, HeadKind::V], 5);
    assert!(same_layer.check(&config).is_ok());
    assert_eq!(same_layer.max_k(HeadKind::Q, 0, &config), 3);
    assert_eq!(same_layer.max_k(HeadKind::K, 1, &config), 1);
    assert_eq!(
        same_layer.capped_layers(HeadKind::V, &config),
        [(0, 1), (1, 1)]
    );
    let earlier = PredictabilityOptions {
        candidates: Candidates::EarlierLayers,
        ..options(vec![HeadKind::K], 5)
    };
    assert!(earlier.check(&config).is_ok());
    // Layer 0 offers 1 other K head, layer 1 offers 3 (its own other one and layer 0's two).
    assert_eq!(
        earlier.capped_layers(HeadKind::K, &config),
        [(0, 1), (1, 3)]
    );
    assert!(options(vec![HeadKind::Q], 3)
        .capped_layers(HeadKind::Q, &config)
        .is_empty());
    // One KV head per layer (MQA): no K head has another to be predicted from.
    let mqa = ModelConfig {
        num_key_value_heads: 1,
        ..config.clone()
    };
    let e = options(vec![HeadKind::Q, HeadKind::K], 2)
        .check(&mqa)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--kinds k") && e.contains("one K head") && e.contains("hint:"),
        "{e}"
    );
    assert!(options(vec![HeadKind::Q], 2).check(&mqa).is_ok());
    let e = PredictabilityOptions {
        layers: Some(vec![2]),
        ..options(vec![HeadKind::Q], 1)
    }
    .check(&config)
    .unwrap_err()
    .to_string();
    assert!(e.contains("--layers") && e.contains("layer 2"), "{e}");
}

/// The init-time theory at layer 0 of OLMo-2-1B: with structure-free input (uniform random token
/// ids) and Q/K taken before RoPE, the pooled held-out R² of a K head from k others is
/// k·head_dim/d_model (theory/), up to finite-sample deflation.
#[test]
fn init_olmo2_1b_layer0_matches_the_isotropic_theory() {
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "predict",
        "init:olmo2-1b?seed=0",
        "--text",
        "random",
        "--tokens",
        "32768",
        "--seq-len",
        "256",
        "--kinds",
        "k",
        "--layers",
        "0",
        "--capture",
        "normed",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let rows = read_csv(&out.path().join("predictability.csv"));
    for k in 1..=5usize {
        let sel: Vec<_> = rows.iter().filter(|r| r["k"] == k.to_string()).collect();
        assert_eq!(sel.len(), 16);
        let pooled = sel
            .iter()
            .map(|r| r["r2_pooled_heldout"].parse::<f64>().unwrap())
            .sum::<f64>()
            / 16.0;
        let theory = k as f64 * 128.0 / 2048.0;
        assert!(
            (pooled - theory).abs() < 0.03,
            "k={k}: held-out pooled {pooled} vs theory {theory}\n{stdout}"
        );
    }
}

fn read_csv(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.deserialize().map(|r| r.unwrap()).collect()
}

#[test]
fn cli_predict_writes_tables_summary_and_provenance() {
    let model = crate::common::tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("result");
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "2048",
        "--seq-len",
        "32",
        "--max-refs",
        "2",
        "--seed",
        "7",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| K | 2 |"), "{stdout}");
    let rows = read_csv(&out_dir.join("predictability.csv"));
    // 2 layers × 3 kinds × 4 heads × k ∈ {1, 2}.
    assert_eq!(rows.len(), 2 * 3 * 4 * 2);
    for column in [
        "checkpoint",
        "kind",
        "layer",
        "target_head",
        "k",
        "reference_heads",
        "r2_heldout",
        "r2_insample",
        "r2_pooled_heldout",
        "n_fit",
        "n_heldout",
        "status",
    ] {
        assert!(rows[0].contains_key(column), "missing column {column}");
    }
    assert_eq!(read_csv(&out_dir.join("edges.csv")).len(), 2 * 3 * 4 * 3);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["options"]["capture_point"], "rope");
    assert_eq!(manifest["token_set"]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["n_sequences"], 64);
    assert!(manifest["tool"]["git_sha"].as_str().is_some());
    assert!(std::fs::read_to_string(out_dir.join("summary.md"))
        .unwrap()
        .contains("Held-out"));
    // Same inputs, same token-set hash.
    let again = out.path().join("again");
    let (ok, _, _) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "2048",
        "--seq-len",
        "32",
        "--max-refs",
        "2",
        "--seed",
        "7",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(ok);
    let m2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["token_set"]["hash"], m2["token_set"]["hash"]);
}

#[test]
fn cli_predict_bad_input_is_one_clear_line() {
    let model = crate::common::tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n  \n").unwrap();
    let tok = dir.path().join("missing-tokenizer.json");
    for (args, needle) in [
        // Checked by clap since issue 21, which names the flag and the rule.
        (vec!["--max-refs", "0"], "must be at least 1"),
        (
            vec![
                "--text",
                empty.to_str().unwrap(),
                "--tokenizer",
                tok.to_str().unwrap(),
            ],
            "missing-tokenizer.json",
        ),
        (vec!["--tokens", "16", "--seq-len", "32"], "--tokens 16"),
        (vec!["--split", "1.5"], "--split"),
    ] {
        let mut full = vec![
            "predict",
            model.path().to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ];
        if !args.contains(&"--text") {
            full.extend(["--text", "random"]);
        }
        if !args.contains(&"--max-refs") {
            full.extend(["--max-refs", "2"]);
        }
        full.extend(args);
        let (ok, _, stderr) = cli(&full);
        assert!(!ok, "{full:?} succeeded");
        assert!(stderr.contains(needle), "{full:?}: {stderr}");
        assert!(crate::common::error_lines(&stderr) <= 2, "{stderr}");
    }
    assert!(!dir.path().join("predictability.csv").exists());
}

/// `predict --max-refs 3` on a GQA model (4 query heads, 2 KV heads): Q reaches k = 3, K and V
/// are capped at k = 1; the cap is the `max_k` column (after the existing columns) and a
/// summary line.
#[test]
fn cli_predict_on_gqa_caps_k_per_kind_and_records_the_cap() {
    let model = crate::common::tiny_model_dir(Architecture::Llama, u64::MAX);
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "2048",
        "--seq-len",
        "32",
        "--max-refs",
        "3",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let header = std::fs::read_to_string(out.path().join("predictability.csv")).unwrap();
    assert_eq!(
        header.lines().next().unwrap(),
        "checkpoint,kind,layer,target_head,k,reference_heads,reference_layers,r2_heldout,\
         r2_insample,r2_pooled_heldout,r2_pooled_insample,n_fit,n_heldout,status,max_k"
    );
    let rows = read_csv(&out.path().join("predictability.csv"));
    // 2 layers × (4 Q heads × k 1..3 + 2 × 2 KV heads × k 1).
    assert_eq!(rows.len(), 2 * (4 * 3 + 2 * 2));
    for row in &rows {
        let expected = if row["kind"] == "q" { "3" } else { "1" };
        assert_eq!(row["max_k"], expected, "{row:?}");
    }
    for needle in [
        "| Q | 3 |",
        "| K | 1 |",
        "k capped",
        "K: k ≤ 1 in every layer (2 K heads per layer)",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("| K | 2 |"), "{stdout}");
}

#[test]
fn empty_text_is_an_error_not_an_empty_result() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let e = ckpt_scan::data::corpora::load_documents(&ckpt_scan::data::corpora::TextSource::File(
        empty,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no text found") && e.contains("empty.txt"),
        "{e}"
    );
}

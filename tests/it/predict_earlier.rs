//! `predict --candidates earlier-layers`: every R² it writes equals a direct least-squares solve on
//! the token matrices, layer 0 equals `same-layer` bit for bit, and bad input names its flag.

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{tiny_config, tiny_model_dir};
use ckpt_scan::analysis::predictability::{
    Candidates, EdgeRow, PredictabilityOptions, PredictionRow,
};
use ckpt_scan::analysis::predictability_pass::{
    run_predictability, PredictOutput, TOKENS_PER_BATCH,
};
use ckpt_scan::capture::recorder::Recorder;
use ckpt_scan::capture::{token_rows, CapturePoint, HeadKind};
use ckpt_scan::config::{Architecture, ModelConfig};
use ckpt_scan::data::token_set::{TokenSet, TokenSetOptions};
use ckpt_scan::model::forward::{forward_streamed, HiddenBudget, OutputHead};
use ckpt_scan::model::weights::LoadOptions;
use ckpt_scan::printer::Printer;
use ckpt_scan::settings::Settings;
use ckpt_scan::source::hub::HubSettings;
use ckpt_scan::source::init::{InitScheme, InitSource};
use ckpt_scan::source::{open_source, WeightSource};
use ckpt_scan::stats::selection::Selection;
use tch::{Device, Kind, Tensor};

/// Gram-based OLS against LAPACK's least squares, both in f64: rounding only.
const EXACT_TOLERANCE: f64 = 1e-6;

const KINDS: [HeadKind; 3] = [HeadKind::Q, HeadKind::K, HeadKind::V];

fn three_layers(architecture: Architecture) -> ModelConfig {
    ModelConfig {
        num_hidden_layers: 3,
        ..tiny_config(architecture)
    }
}

fn settings() -> Settings {
    Settings {
        load: LoadOptions::cpu_f32(),
        hidden_budget: HiddenBudget::default(),
        quiet: true,
        hub: HubSettings::from_env(),
        seed: None,
    }
}

fn token_set(config: &ModelConfig) -> TokenSet {
    TokenSet::uniform_random(
        config.vocab_size,
        &TokenSetOptions {
            tokens: 48 * 16,
            seq_len: 16,
            fit_fraction: 0.75,
            seed: 3,
            separator: None,
        },
    )
    .unwrap()
}

fn options(
    candidates: Candidates,
    max_refs: usize,
    layers: Option<Vec<i64>>,
) -> PredictabilityOptions {
    PredictabilityOptions {
        kinds: KINDS.to_vec(),
        max_refs,
        selection: Selection::Topn,
        candidates,
        capture_point: CapturePoint::Rope,
        layers,
        store_budget_bytes: 1 << 30,
    }
}

fn predict(source: &dyn WeightSource, options: &PredictabilityOptions) -> PredictOutput {
    run_predictability(
        source,
        token_set(source.config()),
        options,
        &settings().forward(),
        &Printer { quiet: true },
        &mut |_, _| {},
    )
    .unwrap()
}

/// Every layer's token rows `[N, heads·head_dim]` f64 per kind, in token order, and the fit rows.
fn token_matrices(source: &dyn WeightSource) -> (BTreeMap<(HeadKind, i64), Tensor>, i64) {
    let set = token_set(source.config());
    let batches: Vec<Tensor> = set
        .batches(TOKENS_PER_BATCH)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let mut recorder = Recorder::new(&[CapturePoint::Rope], false);
    forward_streamed(
        source,
        &batches,
        &mut recorder,
        &LoadOptions::cpu_f32(),
        OutputHead::None,
        &HiddenBudget::default(),
        None,
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for layer in 0..source.config().num_hidden_layers {
        let (q, k, v) = recorder.get(layer, CapturePoint::Rope).unwrap();
        for (kind, x) in KINDS.into_iter().zip([q, k, v]) {
            out.insert((kind, layer), token_rows(&x).to_kind(Kind::Double));
        }
    }
    (out, (set.fit_sequences * set.seq_len) as i64)
}

/// R² of `y` from `x` by OLS with an intercept (gelsd) fitted on the first `n_fit` rows:
/// (in-sample uniform, held-out uniform, in-sample pooled, held-out pooled).
fn direct_r2(x: &Tensor, y: &Tensor, n_fit: i64) -> [f64; 4] {
    let n = x.size()[0];
    let with_ones = |m: &Tensor| {
        let ones = Tensor::ones([m.size()[0], 1], (Kind::Double, Device::Cpu));
        Tensor::cat(&[m, &ones], 1)
    };
    let (xf, yf) = (x.narrow(0, 0, n_fit), y.narrow(0, 0, n_fit));
    let (xh, yh) = (x.narrow(0, n_fit, n - n_fit), y.narrow(0, n_fit, n - n_fit));
    let (solution, _, _, _) = with_ones(&xf).linalg_lstsq(&yf, None, "gelsd");
    let r2 = |xx: &Tensor, yy: &Tensor| {
        let residual = yy - with_ones(xx).matmul(&solution);
        let sse = residual
            .pow_tensor_scalar(2)
            .sum_dim_intlist(0, false, Kind::Double);
        let sst = (yy - yy.mean_dim(0, true, Kind::Double))
            .pow_tensor_scalar(2)
            .sum_dim_intlist(0, false, Kind::Double);
        let uniform = f64::try_from(((&sse / &sst).neg() + 1.0).mean(Kind::Double)).unwrap();
        let pooled = 1.0
            - f64::try_from(sse.sum(Kind::Double)).unwrap()
                / f64::try_from(sst.sum(Kind::Double)).unwrap();
        (uniform, pooled)
    };
    let (iu, ip) = r2(&xf, &yf);
    let (hu, hp) = r2(&xh, &yh);
    [iu, hu, ip, hp]
}

/// Head `h`'s columns of a token matrix.
fn columns_of_head(matrix: &Tensor, h: usize, head_dim: i64) -> Tensor {
    matrix.narrow(1, h as i64 * head_dim, head_dim)
}

fn parse_list(s: &str) -> Vec<i64> {
    s.split(';').map(|x| x.parse().unwrap()).collect()
}

/// Compares every edge and every refit of `output` with direct solves; returns the max |diff|.
fn check_against_lstsq(source: &dyn WeightSource, output: &PredictOutput) -> f64 {
    let config = source.config();
    let (matrices, n_fit) = token_matrices(source);
    let head = |kind: HeadKind, layer: i64, h: usize| {
        columns_of_head(&matrices[&(kind, layer)], h, config.head_dim)
    };
    let mut max_diff: f64 = 0.0;
    let mut compare = |what: String, got: &[f64], want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            let diff = (g - w).abs();
            assert!(
                diff <= EXACT_TOLERANCE,
                "{what}: got {got:?}, lstsq {want:?}"
            );
            max_diff = max_diff.max(diff);
        }
    };
    // Edges: every source in the same or an earlier layer, every target but the source itself.
    let mut single: BTreeMap<(HeadKind, i64, usize, i64, usize), f64> = BTreeMap::new();
    for e in &output.edges {
        assert!(e.source_layer <= e.layer && e.status.is_empty(), "{e:?}");
        let want = direct_r2(
            &head(e.kind, e.source_layer, e.source_head),
            &head(e.kind, e.layer, e.target_head),
            n_fit,
        );
        compare(
            format!("edge {e:?}"),
            &[e.r2_insample, e.r2_heldout],
            &want[..2],
        );
        single.insert(
            (
                e.kind,
                e.layer,
                e.target_head,
                e.source_layer,
                e.source_head,
            ),
            want[0],
        );
    }
    let analysed: Vec<i64> = {
        let mut l: Vec<i64> = output.rows.iter().map(|r| r.layer).collect();
        l.sort();
        l.dedup();
        l
    };
    for kind in KINDS {
        let heads = kind.heads(config) as usize;
        for &layer in &analysed {
            let n = output
                .edges
                .iter()
                .filter(|e| e.kind == kind && e.layer == layer)
                .count();
            assert_eq!(
                n,
                heads * ((layer as usize + 1) * heads - 1),
                "{kind:?} layer {layer}"
            );
        }
    }
    // Refits: the top k by single in-sample R², refitted jointly.
    for r in &output.rows {
        let layers = parse_list(&r.reference_layers);
        let refs = parse_list(&r.reference_heads);
        assert_eq!(layers.len(), r.k);
        let features: Vec<Tensor> = layers
            .iter()
            .zip(&refs)
            .map(|(&l, &h)| head(r.kind, l, h as usize))
            .collect();
        let want = direct_r2(
            &Tensor::cat(&features, 1),
            &head(r.kind, r.layer, r.target_head),
            n_fit,
        );
        compare(
            format!("refit {r:?}"),
            &[
                r.r2_insample,
                r.r2_heldout,
                r.r2_pooled_insample,
                r.r2_pooled_heldout,
            ],
            &want,
        );
        // The chosen references outrank every candidate left out (up to rounding).
        let chosen: Vec<f64> = layers
            .iter()
            .zip(&refs)
            .map(|(&l, &h)| single[&(r.kind, r.layer, r.target_head, l, h as usize)])
            .collect();
        let weakest = chosen.iter().copied().fold(f64::INFINITY, f64::min);
        for (&(kind, layer, target, sl, sh), &r2) in &single {
            let is_chosen = layers
                .iter()
                .zip(&refs)
                .any(|(&l, &h)| l == sl && h as usize == sh);
            if kind == r.kind && layer == r.layer && target == r.target_head && !is_chosen {
                assert!(
                    r2 <= weakest + EXACT_TOLERANCE,
                    "{r:?}: ({sl},{sh}) has {r2}"
                );
            }
        }
    }
    max_diff
}

#[test]
fn earlier_layers_r2_equals_direct_least_squares() {
    // OLMo-2 (4 heads of each kind), layer 2 only, with eight references: at most three from its
    // own layer and four from each earlier one, so every k = 8 refit draws on layers 0 and 1.
    let config = three_layers(Architecture::Olmo2);
    let source = InitSource::new(config, 11, InitScheme::Olmo, "init:tiny3");
    let output = predict(
        &source,
        &options(Candidates::EarlierLayers, 8, Some(vec![2])),
    );
    let cross_pairs = output.rows.iter().any(|r| {
        let layers = parse_list(&r.reference_layers);
        r.layer == 2 && layers.contains(&0) && layers.contains(&1)
    });
    assert!(
        cross_pairs,
        "no refit draws on two earlier layers: the test would not test them"
    );
    let max_diff = check_against_lstsq(&source, &output);
    eprintln!("olmo2: max |R² − lstsq R²| = {max_diff:e}");

    // Llama with GQA (2 KV heads), every layer.
    let config = three_layers(Architecture::Llama);
    let source = InitSource::new(config, 12, InitScheme::Hf, "init:tiny3-llama");
    let output = predict(&source, &options(Candidates::EarlierLayers, 1, None));
    let max_diff = check_against_lstsq(&source, &output);
    eprintln!("llama: max |R² − lstsq R²| = {max_diff:e}");
}

/// The same on the golden models (3 layers, head_dim 16, written by HF transformers' init).
#[test]
fn golden_models_earlier_layers_r2_equals_direct_least_squares() {
    let Some(dir) = crate::common::golden_dir() else {
        return;
    };
    // OLMo-2's layer 2 with eight references draws on both earlier layers; Llama: every layer.
    for (name, max_refs, layers) in [("olmo2", 8, Some(vec![2])), ("llama", 1, None)] {
        let source = open_source(dir.join(name).to_str().unwrap()).unwrap();
        let output = predict(
            source.as_ref(),
            &options(Candidates::EarlierLayers, max_refs, layers),
        );
        let max_diff = check_against_lstsq(source.as_ref(), &output);
        eprintln!("golden {name}: max |R² − lstsq R²| = {max_diff:e}");
    }
}

fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits()
}

fn rows_equal(a: &PredictionRow, b: &PredictionRow) -> bool {
    (a.kind, a.layer, a.target_head, a.k) == (b.kind, b.layer, b.target_head, b.k)
        && a.reference_heads == b.reference_heads
        && a.reference_layers == b.reference_layers
        && same_bits(a.r2_heldout, b.r2_heldout)
        && same_bits(a.r2_insample, b.r2_insample)
        && same_bits(a.r2_pooled_heldout, b.r2_pooled_heldout)
        && same_bits(a.r2_pooled_insample, b.r2_pooled_insample)
        && (a.n_fit, a.n_heldout, &a.status) == (b.n_fit, b.n_heldout, &b.status)
}

fn edges_equal(a: &EdgeRow, b: &EdgeRow) -> bool {
    (
        a.kind,
        a.layer,
        a.source_layer,
        a.source_head,
        a.target_head,
    ) == (
        b.kind,
        b.layer,
        b.source_layer,
        b.source_head,
        b.target_head,
    ) && same_bits(a.r2_insample, b.r2_insample)
        && same_bits(a.r2_heldout, b.r2_heldout)
        && a.status == b.status
}

#[test]
fn layer_zero_equals_same_layer_exactly() {
    let config = three_layers(Architecture::Olmo2);
    let source = InitSource::new(config, 7, InitScheme::Olmo, "init:tiny3");
    let same = predict(&source, &options(Candidates::SameLayer, 3, None));
    let earlier = predict(&source, &options(Candidates::EarlierLayers, 3, None));
    let layer0 = |rows: &[PredictionRow]| -> Vec<PredictionRow> {
        rows.iter().filter(|r| r.layer == 0).cloned().collect()
    };
    let (a, b) = (layer0(&same.rows), layer0(&earlier.rows));
    assert_eq!(a.len(), 3 * 4 * 3);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(rows_equal(x, y), "same-layer {x:?}\nearlier-layers {y:?}");
    }
    // In every layer, the same-layer edges are the same-layer run's edges.
    let within: Vec<&EdgeRow> = earlier
        .edges
        .iter()
        .filter(|e| e.source_layer == e.layer)
        .collect();
    assert_eq!(within.len(), same.edges.len());
    for (x, y) in same.edges.iter().zip(within) {
        assert!(edges_equal(x, y), "same-layer {x:?}\nearlier-layers {y:?}");
    }
    assert!(earlier.edges.iter().any(|e| e.source_layer < e.layer));
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt-scan"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_store_over_its_budget_is_one_line_naming_the_flag_and_writes_nothing() {
    let model = tiny_model_dir(Architecture::Olmo2, u64::MAX);
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report");
    let (ok, stderr) = cli(&[
        "--quiet",
        "predict",
        model.path().to_str().unwrap(),
        "--text",
        "random",
        "--tokens",
        "2048",
        "--seq-len",
        "8",
        "--max-refs",
        "2",
        "--candidates",
        "earlier-layers",
        "--store-budget-gb",
        "0.00001",
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: --store-budget-gb") && stderr.contains("GiB"),
        "{stderr}"
    );
    assert!(!report.exists());
}

#[test]
fn greedy_with_earlier_layers_is_refused_naming_the_flags() {
    let config = three_layers(Architecture::Olmo2);
    let mut o = options(Candidates::EarlierLayers, 2, None);
    o.selection = Selection::Greedy;
    let e = o.check(&config).unwrap_err().to_string();
    assert!(
        e.contains("--select greedy") && e.contains("--candidates"),
        "{e}"
    );
}

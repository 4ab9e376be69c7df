//! The regression stage alone on one 7B-shaped layer: ckpt-scan's Gram engine against one least
//! squares solve per fit, on the same captured vectors.
//! `cargo bench --bench regression_stage -- [--tokens N] [--heads H] [--head-dim D] [--max-refs K]
//! [--repeats R] [--lstsq-repeats R]`.
//!
//! The vectors are one kind's heads of one layer, `[tokens, heads·head_dim]` f32: random
//! projections of correlated input (so R² is neither 0 nor 1). The split is 75/25 by row. Both
//! routes do the same work: every single-reference fit (H·(H−1)), top-k references by in-sample R²,
//! and k = 1..K refits per target, each scored in-sample and held-out. The Gram route is what
//! `predict` runs (`stats::selection`); the per-fit route solves each fit with LAPACK `gelsd` on the
//! rows (libtorch `linalg_lstsq`, f32 as captured, intercept column appended), as the paper's
//! scripts do per edge. Medians of the repeats, and their ratio.

use std::time::Instant;

use ckpt_scan::stats::gram::Gram;
use ckpt_scan::stats::selection::{
    fit_and_score, select_references, single_reference_scores, HeadLayout, Selection,
};
use tch::{Device, Kind, Tensor};

#[path = "support/mod.rs"]
mod support;
use support::{flag, median};

/// The Gram route: moments of both splits, single-reference scores, top-k, refits. Returns the
/// held-out R² sum and the seconds of each phase, [`PHASES`] in order.
fn gram_route(
    fit: &Tensor,
    held: &Tensor,
    layout: &HeadLayout,
    max_refs: usize,
) -> (f64, Vec<f64>) {
    let mut clock = Instant::now();
    let mut phases = Vec::new();
    let mut lap = |phases: &mut Vec<f64>| {
        phases.push(clock.elapsed().as_secs_f64());
        clock = Instant::now();
    };
    let mut g_fit = Gram::new(fit.size()[1], Device::Cpu);
    g_fit.add(fit);
    let mut g_held = Gram::new(held.size()[1], Device::Cpu);
    g_held.add(held);
    lap(&mut phases);
    let (m_fit, m_held) = (g_fit.into_moments(), g_held.into_moments());
    lap(&mut phases);
    let single = single_reference_scores(&m_fit, &m_held, layout);
    lap(&mut phases);
    let mut total = 0.0;
    for &target in layout.heads() {
        let refs = select_references(
            Selection::Topn,
            &single,
            layout.heads(),
            target,
            None,
            max_refs,
        );
        for k in 1..=refs.len() {
            total += fit_and_score(&m_fit, &m_held, layout, &refs[..k], target).r2_heldout;
        }
    }
    lap(&mut phases);
    (total, phases)
}

/// What [`gram_route`] times.
const PHASES: [&str; 4] = [
    "gram accumulation",
    "moments",
    "single-reference fits",
    "top-k refits",
];

/// Uniform-average R² of `prediction` against `y`.
fn r2(y: &Tensor, prediction: &Tensor) -> f64 {
    let sse = (y - prediction)
        .square()
        .sum_dim_intlist(0, false, Kind::Double);
    let sst = (y - y.mean_dim(0, true, Kind::Float))
        .square()
        .sum_dim_intlist(0, false, Kind::Double);
    f64::try_from((sse / sst).neg().mean(Kind::Double) + 1.0).unwrap()
}

fn with_intercept(x: &Tensor) -> Tensor {
    Tensor::cat(&[x, &x.ones_like().narrow(1, 0, 1)], 1)
}

/// One lstsq fit of `y` from `x` on the fit rows, scored in-sample and held-out.
fn lstsq_fit(x_fit: &Tensor, y_fit: &Tensor, x_held: &Tensor, y_held: &Tensor) -> (f64, f64) {
    let (solution, _, _, _) = with_intercept(x_fit).linalg_lstsq(y_fit, None, "gelsd");
    let inside = r2(y_fit, &with_intercept(x_fit).matmul(&solution));
    let outside = r2(y_held, &with_intercept(x_held).matmul(&solution));
    (inside, outside)
}

/// The per-fit route: the same fits, each a least-squares solve on the rows.
fn lstsq_route(fit: &Tensor, held: &Tensor, heads: usize, d: i64, max_refs: usize) -> f64 {
    let head = |t: &Tensor, h: usize| t.narrow(1, h as i64 * d, d);
    let concat = |t: &Tensor, hs: &[usize]| {
        Tensor::cat(&hs.iter().map(|&h| head(t, h)).collect::<Vec<_>>(), 1)
    };
    let mut total = 0.0;
    for target in 0..heads {
        let mut ranked: Vec<(usize, f64)> = (0..heads)
            .filter(|&s| s != target)
            .map(|s| {
                let (inside, _) = lstsq_fit(
                    &head(fit, s),
                    &head(fit, target),
                    &head(held, s),
                    &head(held, target),
                );
                (s, inside)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for k in 1..=max_refs.min(heads - 1) {
            let refs: Vec<usize> = ranked[..k].iter().map(|r| r.0).collect();
            let (_, outside) = lstsq_fit(
                &concat(fit, &refs),
                &head(fit, target),
                &concat(held, &refs),
                &head(held, target),
            );
            total += outside;
        }
    }
    total
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: measure only when asked.
    if !std::env::args().any(|a| a == "--bench") {
        println!("regression_stage: skipped (run it with `cargo bench --bench regression_stage`)");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let tokens: i64 = flag(&args, "--tokens", 32_768);
    let heads: usize = flag(&args, "--heads", 32);
    let d: i64 = flag(&args, "--head-dim", 128);
    let max_refs: usize = flag(&args, "--max-refs", 5);
    let repeats: usize = flag(&args, "--repeats", 3);
    let lstsq_repeats = flag(&args, "--lstsq-repeats", repeats);
    let d_model = heads as i64 * d;
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    // Correlated input (a random mixing of d_model dims), projected by random head weights.
    let input = Tensor::randn([tokens, d_model], opts)
        .matmul(&(Tensor::randn([d_model, d_model], opts) / (d_model as f64).sqrt()));
    let vectors =
        input.matmul(&(Tensor::randn([d_model, d_model], opts) / (d_model as f64).sqrt()));
    let fit_rows = tokens * 3 / 4;
    let fit = vectors.narrow(0, 0, fit_rows).contiguous();
    let held = vectors.narrow(0, fit_rows, tokens - fit_rows).contiguous();
    let layout = HeadLayout::layer(0, heads, d as usize);
    println!(
        "regression stage: {tokens} tokens ({fit_rows} fit), {heads} heads × {d}, k = 1..={max_refs}, \
         one kind; {} threads; load {}",
        tch::get_num_threads(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let (mut gram_s, mut lstsq_s) = (Vec::new(), Vec::new());
    let (mut gram_total, mut lstsq_total) = (0.0, 0.0);
    for run in 0..repeats.max(lstsq_repeats) {
        if run < repeats {
            let start = Instant::now();
            let phases;
            (gram_total, phases) = gram_route(&fit, &held, &layout, max_refs);
            gram_s.push(start.elapsed().as_secs_f64());
            let named: Vec<String> = PHASES
                .iter()
                .zip(&phases)
                .map(|(name, s)| format!("{name} {s:.2} s"))
                .collect();
            println!("  gram phases: {}", named.join(", "));
        }
        if run < lstsq_repeats {
            let start = Instant::now();
            lstsq_total = lstsq_route(&fit, &held, heads, d, max_refs);
            lstsq_s.push(start.elapsed().as_secs_f64());
        }
        println!(
            "run {}: gram {:?} s, per-fit lstsq {:?} s",
            run + 1,
            gram_s.last(),
            lstsq_s.last()
        );
    }
    let fits = heads * (heads - 1) + heads * max_refs.min(heads - 1);
    let (g, l) = (median(gram_s), median(lstsq_s));
    println!(
        "{fits} fits per kind; median gram {g:.2} s, per-fit lstsq {l:.2} s: {:.1}×; \
         Σ held-out R² gram {gram_total:.6}, lstsq {lstsq_total:.6} (same fits: these agree to rounding)",
        l / g
    );
}

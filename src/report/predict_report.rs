//! The `predict` report: the run manifest and the markdown summary, rendered from plain rows.

use serde::Serialize;

use crate::analysis::predictability::{
    finite_mean, isotropic_r2, Candidates, PredictabilityOptions, PredictionRow,
};
use crate::config::ModelConfig;
use crate::data::token_set::TokenSet;
use crate::output::manifest::ToolVersion;
use crate::source::Provenance;

#[derive(Serialize)]
pub struct PredictManifest<'a> {
    pub tool: ToolVersion,
    pub source: &'a Provenance,
    pub config: &'a ModelConfig,
    pub text: String,
    pub tokenizer: String,
    pub token_set: &'a TokenSet,
    pub n_sequences: usize,
    pub seed: u64,
    pub options: &'a PredictabilityOptions,
    pub device: String,
    pub seconds: f64,
    pub activation_store_bytes: u64,
}

/// The manifest's provenance in one line, for the summary's head.
pub fn manifest_line(m: &PredictManifest) -> String {
    format!(
        "source `{}`{}; text `{}`; {} sequences × {} tokens ({} fit); token-set sha256 `{}`; seed {}; capture `{}`; RoPE `{}` (theta {}); {} {}",
        m.source.spec,
        m.source.revision_sha.as_deref().map(|s| format!(" @ `{s}`")).unwrap_or_default(),
        m.text,
        m.n_sequences,
        m.token_set.seq_len,
        m.token_set.fit_sequences,
        &m.token_set.hash[..16],
        m.seed,
        m.options.capture_point.name(),
        m.config.rope_scaling.describe(),
        m.config.rope_theta,
        m.tool.name,
        m.tool.version,
    )
}

/// Mean R² per kind and k (held-out headline, in-sample beside it), then a per-layer table.
pub fn summary_markdown(
    rows: &[PredictionRow],
    options: &PredictabilityOptions,
    config: &ModelConfig,
    provenance: &str,
) -> String {
    let mut md = String::from("# Linear predictability\n\n");
    md.push_str(&format!("{provenance}.\n\n"));
    md.push_str("R² per output dimension averaged uniformly (sklearn default, as the paper); pooled = 1 − ΣSSE/ΣSST. ");
    md.push_str(
        "**Held-out** R² (fit on the fit sequences, scored on unseen sequences) is the headline; ",
    );
    md.push_str("*in-sample* R² is what the paper's figures report. `isotropic` is k·head_dim/d_model, the value for independent random projections of isotropic input.\n\n");
    md.push_str("| kind | k | held-out R² | in-sample R² | pooled held-out | isotropic | NaN |\n|---|---|---|---|---|---|---|\n");
    for &kind in &options.kinds {
        for k in 1..=options.max_refs {
            let sel: Vec<&PredictionRow> =
                rows.iter().filter(|r| r.kind == kind && r.k == k).collect();
            if sel.is_empty() {
                continue;
            }
            let (held, bad) = finite_mean(sel.iter().map(|r| r.r2_heldout));
            let (ins, _) = finite_mean(sel.iter().map(|r| r.r2_insample));
            let (pooled, _) = finite_mean(sel.iter().map(|r| r.r2_pooled_heldout));
            md.push_str(&format!(
                "| {} | {k} | {held:.4} | {ins:.4} | {pooled:.4} | {:.4} | {bad} |\n",
                kind.name().to_uppercase(),
                isotropic_r2(k, config.head_dim, config.hidden_size)
            ));
        }
    }
    let caps = k_cap_lines(options, config);
    let capped = !caps.is_empty();
    if capped {
        md.push_str(&format!(
            "\n**k capped** below --max-refs {} at the candidate heads (`max_k` in predictability.csv); a mean over k above a layer's cap leaves that layer out, and the per-layer table shows each layer's largest k:\n\n",
            options.max_refs
        ));
        for line in caps {
            md.push_str(&format!("- {line}\n"));
        }
    }
    let max_k = options.max_refs;
    md.push_str("\n## Per layer (held-out R², mean over target heads)\n\n| layer |");
    for &kind in &options.kinds {
        let largest = (0..config.num_hidden_layers)
            .filter(|&l| options.analyses(l))
            .map(|l| options.max_k(kind, l, config))
            .max()
            .unwrap_or(max_k);
        md.push_str(&format!(
            " {} k=1 | {} k={largest} |",
            kind.name().to_uppercase(),
            kind.name().to_uppercase()
        ));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(2 * options.kinds.len()));
    md.push('\n');
    for layer in 0..config.num_hidden_layers {
        md.push_str(&format!("| {layer} |"));
        for &kind in &options.kinds {
            // The second column is the layer's largest k: --max-refs unless capped there.
            for largest in [false, true] {
                let (m, _) = finite_mean(
                    rows.iter()
                        .filter(|r| r.kind == kind && r.layer == layer)
                        .filter(|r| r.k == if largest { r.max_k } else { 1 })
                        .map(|r| r.r2_heldout),
                );
                md.push_str(&format!(" {m:.4} |"));
            }
        }
        md.push('\n');
    }
    if options.candidates == Candidates::EarlierLayers {
        md.push_str(&format!(
            "\n## Where references come from (k={max_k}{})\n\n",
            if capped { ", or the layer's cap" } else { "" }
        ));
        md.push_str("Share of the chosen references that lie in an earlier layer than their target, and how many layers back they lie on average.\n\n| kind | earlier-layer share | mean layers back |\n|---|---|---|\n");
        for &kind in &options.kinds {
            let distances: Vec<f64> = rows
                .iter()
                .filter(|r| r.kind == kind && r.k == r.max_k)
                .flat_map(|r| {
                    r.reference_layers
                        .split(';')
                        .filter_map(|l| l.parse::<i64>().ok())
                        .map(|l| (r.layer - l) as f64)
                        .collect::<Vec<_>>()
                })
                .collect();
            let (back, _) = finite_mean(distances.iter().copied());
            let (share, _) =
                finite_mean(distances.iter().map(|&d| if d > 0.0 { 1.0 } else { 0.0 }));
            md.push_str(&format!(
                "| {} | {share:.4} | {back:.2} |\n",
                kind.name().to_uppercase()
            ));
        }
    }
    md
}

/// One line per kind whose k is capped below `--max-refs` in some analysed layer.
fn k_cap_lines(options: &PredictabilityOptions, config: &ModelConfig) -> Vec<String> {
    let analysed = (0..config.num_hidden_layers)
        .filter(|&l| options.analyses(l))
        .count();
    let mut lines = Vec::new();
    for &kind in &options.kinds {
        let capped = options.capped_layers(kind, config);
        let Some(&(_, first_k)) = capped.first() else {
            continue;
        };
        let name = kind.name().to_uppercase();
        let heads = kind.heads(config);
        let where_capped = if capped.len() == analysed && capped.iter().all(|&(_, k)| k == first_k)
        {
            format!("k ≤ {first_k} in every layer")
        } else {
            capped
                .iter()
                .map(|(layer, k)| format!("k ≤ {k} in layer {layer}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(format!(
            "{name}: {where_capped} ({heads} {name} heads per layer)"
        ));
    }
    lines
}

//! The `align` report: the run manifest and the markdown summary, rendered from plain rows.

use serde::Serialize;

use crate::analysis::alignment::{AlignmentOptions, LayerRow, WeightR2Row};
use crate::analysis::alignment_pass::WeightVsMeasuredRow;
use crate::analysis::predictability::finite_mean;
use crate::capture::HeadKind;
use crate::config::ModelConfig;
use crate::output::manifest::ToolVersion;
use crate::source::Provenance;

#[derive(Serialize)]
pub struct AlignManifest<'a> {
    pub tool: ToolVersion,
    pub source: &'a Provenance,
    pub config: &'a ModelConfig,
    pub options: &'a AlignmentOptions,
    pub predictions: Option<String>,
    pub spearman: Vec<(HeadKind, f64, usize)>,
    pub seconds: f64,
}

/// The summary a reader opens first: per layer and kind, alignment against its null and
/// weight-only R²; then, when measured rows were given, their rank agreement.
pub fn summary_markdown(
    layers: &[LayerRow],
    weight_rows: &[WeightR2Row],
    versus: &[WeightVsMeasuredRow],
    spearman_by_kind: &[(HeadKind, f64, usize)],
    options: &AlignmentOptions,
    config: &ModelConfig,
    spec: &str,
) -> String {
    let mut md = format!(
        "# Subspace alignment\n\nsource `{spec}`; QK-norm gains folded: {}.\n\n",
        options.fold_norm
    );
    md.push_str("Mean cos² of the principal angles between two heads' projection subspaces: 1 for equal subspaces; ");
    md.push_str(&format!(
        "for independent random subspaces its expectation is head_dim/d_model = {:.4}. ",
        config.head_dim as f64 / config.hidden_size as f64
    ));
    md.push_str("Overlap = Σ rank(W_h) − rank([W_1 … W_H]). Weight-only R² = ‖P_R W_t‖²/‖W_t‖², the R² the weights alone give for isotropic input.\n\n");
    md.push_str("| kind | layer | mean pairwise cos² | null (sampled ± sd) | overlap dim | weight-only R² k=1 | weight-only R² k=max |\n|---|---|---|---|---|---|---|\n");
    for l in layers {
        let (w1, _) = finite_mean(
            weight_rows
                .iter()
                .filter(|r| r.kind == l.kind && r.layer == l.layer && r.k == 1)
                .map(|r| r.weight_r2),
        );
        let kmax = weight_rows
            .iter()
            .filter(|r| r.kind == l.kind && r.layer == l.layer)
            .map(|r| r.k)
            .max()
            .unwrap_or(1);
        let (wk, _) = finite_mean(
            weight_rows
                .iter()
                .filter(|r| r.kind == l.kind && r.layer == l.layer && r.k == kmax)
                .map(|r| r.weight_r2),
        );
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} ± {:.4} | {} | {w1:.4} | {wk:.4} |\n",
            l.kind.name().to_uppercase(),
            l.layer,
            l.mean_pairwise_cos2,
            l.null_sampled_mean,
            l.null_sampled_std,
            l.overlap_dimension
        ));
    }
    if !versus.is_empty() {
        md.push_str("\n## Weight-only vs measured held-out R² (same reference sets)\n\n| kind | Spearman ρ | rows | mean measured | mean weight-only |\n|---|---|---|---|---|\n");
        for (kind, rho, n) in spearman_by_kind {
            let (m, _) = finite_mean(
                versus
                    .iter()
                    .filter(|r| r.kind == *kind)
                    .map(|r| r.r2_heldout),
            );
            let (w, _) = finite_mean(
                versus
                    .iter()
                    .filter(|r| r.kind == *kind)
                    .map(|r| r.weight_r2),
            );
            md.push_str(&format!(
                "| {} | {rho:.4} | {n} | {m:.4} | {w:.4} |\n",
                kind.name().to_uppercase()
            ));
        }
        md.push_str("\nMeasured minus weight-only is what the input's anisotropy (and, held out, sampling) adds or removes.\n");
    }
    md
}

//! `ckpt-scan align SOURCE`: Key-subspace principal angles and weight-only R², from weights alone
//! (each layer's projection read, analysed and dropped in turn; no forward pass).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::analysis::alignment::{
    align_layer, head_blocks, null_spread, spearman, AlignmentOptions, LayerRow, PairRow,
    WeightR2Row,
};
use crate::analysis::predictability::finite_mean;
use crate::analysis::predictability::PredictionRow;
use crate::capture::HeadKind;
use crate::cli::AlignArgs;
use crate::model::config::ModelConfig;
use crate::printer::Printer;
use crate::report::atomic::{check_output_dir, write_atomic};
use crate::report::csv::write_csv;
use crate::report::default_out_dir;
use crate::report::manifest::{tool_version, ToolVersion};
use crate::settings::Settings;
use crate::source::{open_source_with, Provenance, WeightSource};
use crate::stats::principal_angles::weight_only_r2;

/// A measured held-out R² beside the weights' prediction of it, for the same reference set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WeightVsMeasuredRow {
    pub checkpoint: String,
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    pub reference_heads: String,
    pub r2_heldout: f64,
    pub weight_r2: f64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    tool: ToolVersion,
    source: &'a Provenance,
    config: &'a ModelConfig,
    options: &'a AlignmentOptions,
    predictions: Option<String>,
    spearman: Vec<(HeadKind, f64, usize)>,
    seconds: f64,
}

fn read_measured(path: &Path) -> Result<Vec<MeasuredReferenceSet>> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("--predictions {}", path.display()))?;
    let rows: Vec<MeasuredReferenceSet> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "--predictions {}: not a predictability.csv written by `ckpt-scan predict`",
                path.display()
            )
        })?;
    if rows.is_empty() {
        bail!("--predictions {}: no rows", path.display());
    }
    Ok(rows)
}

/// A measured held-out R² and its reference set, to set beside the weights' prediction (a row of
/// `predict`'s predictability.csv).
#[derive(Clone, Debug, Deserialize)]
pub struct MeasuredReferenceSet {
    pub kind: HeadKind,
    pub layer: i64,
    pub target_head: usize,
    pub k: usize,
    /// `;`-separated head indices, as predict writes them.
    pub reference_heads: String,
    /// The layer of each reference head; absent in files that predate cross-layer candidates.
    pub reference_layers: Option<String>,
    pub r2_heldout: f64,
}

impl MeasuredReferenceSet {
    /// Whether every reference head is in the target's layer (only those have weights to compare).
    fn is_same_layer(&self) -> bool {
        self.reference_layers
            .as_deref()
            .is_none_or(|l| l.split(';').all(|x| x == self.layer.to_string()))
    }
}

impl From<&PredictionRow> for MeasuredReferenceSet {
    fn from(row: &PredictionRow) -> Self {
        MeasuredReferenceSet {
            kind: row.kind,
            layer: row.layer,
            target_head: row.target_head,
            k: row.k,
            reference_heads: row.reference_heads.clone(),
            reference_layers: Some(row.reference_layers.clone()),
            r2_heldout: row.r2_heldout,
        }
    }
}

/// Everything `align` produced for one checkpoint, before it is written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AlignOutput {
    pub layers: Vec<LayerRow>,
    pub pairs: Vec<PairRow>,
    pub weight_rows: Vec<WeightR2Row>,
    /// Measured vs weight-only R², for the measured reference sets given.
    pub versus: Vec<WeightVsMeasuredRow>,
}

impl AlignOutput {
    /// Spearman ρ between weight-only and measured R², per kind with rows: (kind, ρ, rows).
    pub fn spearman_by_kind(&self, kinds: &[HeadKind]) -> Vec<(HeadKind, f64, usize)> {
        kinds
            .iter()
            .filter_map(|&kind| {
                let sel: Vec<&WeightVsMeasuredRow> =
                    self.versus.iter().filter(|r| r.kind == kind).collect();
                (!sel.is_empty()).then(|| {
                    let x: Vec<f64> = sel.iter().map(|r| r.weight_r2).collect();
                    let y: Vec<f64> = sel.iter().map(|r| r.r2_heldout).collect();
                    (kind, spearman(&x, &y), sel.len())
                })
            })
            .collect()
    }
}

/// Runs the weight-only analysis on an open source, one layer's projections at a time.
///
/// Measured reference sets that span several layers are skipped: their weights live in other layers.
pub fn run_alignment(
    source: &dyn WeightSource,
    options: &AlignmentOptions,
    max_refs: usize,
    measured: &[MeasuredReferenceSet],
    progress: &mut dyn FnMut(i64, i64),
) -> Result<AlignOutput> {
    let config = source.config();
    let mut by_layer: HashMap<(HeadKind, i64), Vec<&MeasuredReferenceSet>> = HashMap::new();
    for row in measured.iter().filter(|r| r.is_same_layer()) {
        by_layer.entry((row.kind, row.layer)).or_default().push(row);
    }
    let nulls: HashMap<HeadKind, (f64, f64)> = options
        .kinds
        .iter()
        .map(|&k| {
            (
                k,
                null_spread(
                    config.hidden_size,
                    config.head_dim,
                    options.null_samples,
                    options.seed,
                ),
            )
        })
        .collect();
    let mut output = AlignOutput::default();
    for layer in 0..config.num_hidden_layers {
        for &kind in &options.kinds {
            let blocks = head_blocks(source, layer, kind, options.fold_norm)?;
            let result = align_layer(
                &source.provenance().spec,
                kind,
                layer,
                &blocks,
                max_refs,
                options,
                nulls[&kind],
            );
            for m in by_layer.get(&(kind, layer)).into_iter().flatten() {
                let refs: Vec<usize> = m
                    .reference_heads
                    .split(';')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!(
                            "reference heads {:?} are not head indices",
                            m.reference_heads
                        )
                    })?;
                if let Some(&bad) = refs.iter().find(|&&r| r >= blocks.len()) {
                    bail!(
                        "measured reference head {bad} of layer {layer} does not exist ({} {} heads)",
                        blocks.len(),
                        kind.name().to_uppercase()
                    );
                }
                let w_refs = Tensor::cat(
                    &refs
                        .iter()
                        .map(|&r| blocks[r].shallow_clone())
                        .collect::<Vec<_>>(),
                    1,
                );
                output.versus.push(WeightVsMeasuredRow {
                    checkpoint: source.provenance().spec.clone(),
                    kind,
                    layer,
                    target_head: m.target_head,
                    k: m.k,
                    reference_heads: m.reference_heads.clone(),
                    r2_heldout: m.r2_heldout,
                    weight_r2: weight_only_r2(&blocks[m.target_head], &w_refs),
                });
            }
            output.layers.push(result.layer);
            output.pairs.extend(result.pairs);
            output.weight_rows.extend(result.weight_r2);
        }
        progress(layer + 1, config.num_hidden_layers);
    }
    Ok(output)
}

pub fn run(args: &AlignArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir("align", &args.source));
    // Written only after the computation: a file or read-only folder in the way is found now.
    check_output_dir(&out_dir, "--out")?;
    let start = Instant::now();
    let source = open_source_with(&args.source, &settings.hub)?;
    let config = source.config().clone();
    let options = AlignmentOptions {
        kinds: args.kinds.clone(),
        fold_norm: args.fold_norm,
        partners: args.partners,
        null_samples: args.null_samples,
        seed: args.seed,
    };
    let measured = args
        .predictions
        .as_deref()
        .map(read_measured)
        .transpose()?
        .unwrap_or_default();
    let mut progress = |layer: i64, layers: i64| {
        printer.note(format!(
            "  layer {layer}/{layers} ({:.1} s)",
            start.elapsed().as_secs_f64()
        ))
    };
    let output = run_alignment(
        source.as_ref(),
        &options,
        args.max_refs,
        &measured,
        &mut progress,
    )?;
    let AlignOutput {
        layers,
        pairs,
        weight_rows,
        versus,
    } = &output;
    write_csv(&out_dir.join("alignment_layers.csv"), layers)?;
    write_csv(&out_dir.join("alignment_pairs.csv"), pairs)?;
    write_csv(&out_dir.join("weight_r2.csv"), weight_rows)?;
    let spearman_by_kind = output.spearman_by_kind(&options.kinds);
    if args.predictions.is_some() {
        write_csv(&out_dir.join("weight_vs_measured.csv"), versus)?;
    }
    let manifest = Manifest {
        tool: tool_version(),
        source: source.provenance(),
        config: &config,
        options: &options,
        predictions: args.predictions.as_ref().map(|p| p.display().to_string()),
        spearman: spearman_by_kind.clone(),
        seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let summary = summary_markdown(
        layers,
        weight_rows,
        versus,
        &spearman_by_kind,
        &options,
        &config,
        &source.provenance().spec,
    );
    write_atomic(&out_dir.join("summary.md"), summary.as_bytes())?;
    printer.result(summary);
    printer.note(format!("wrote {}", out_dir.display()));
    Ok(())
}

fn summary_markdown(
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

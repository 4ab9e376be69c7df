//! The scan report's figures, built from the summary rows (no statistics here): R² vs step with
//! the random-init band, per-layer R² heatmaps, alignment vs step, weight-only vs measured R²,
//! and sink counts vs step.
//!
//! Steps are drawn on a log axis, which has no 0: step-0 checkpoints and random initialisations
//! are drawn as the shaded init band (min to max over them) across the whole axis.

use std::path::Path;

use anyhow::Result;

use crate::analysis::predictability::finite_mean;
use crate::capture::HeadKind;
use crate::report::plot::{
    palette, write_heatmap, write_line_chart, write_scatter, write_small_multiples, Heatmap,
    LegendPosition, LineChart, ScatterChart, ScatterPoint, Series, SmallMultiples,
};
use crate::series::scan_tables::{ScanTables, SummaryRow};

/// A figure written, for embedding: file stem and caption.
pub struct Figure {
    pub stem: String,
    pub caption: String,
}

/// Checkpoints that count as "at initialisation": random inits and step 0.
fn at_init(row: &SummaryRow) -> bool {
    row.is_init || row.step == Some(0)
}

/// `(step, value)` of trained checkpoints, and `(min, max)` over init ones.
type Trajectory = (Vec<(f64, f64)>, Option<(f64, f64)>);

/// One metric's [`Trajectory`].
fn trajectory(summary: &[SummaryRow], kind: &str, k: usize, metric: &str) -> Trajectory {
    let rows = summary
        .iter()
        .filter(|r| r.kind == kind && r.k == k && r.metric == metric && r.value.is_finite());
    let mut trained: Vec<(f64, f64)> = rows
        .clone()
        .filter(|r| !at_init(r))
        .filter_map(|r| Some((r.step? as f64, r.value)))
        .collect();
    trained.sort_by(|a, b| a.0.total_cmp(&b.0));
    let init: Vec<f64> = rows.filter(|r| at_init(r)).map(|r| r.value).collect();
    let band = (!init.is_empty()).then(|| {
        (
            init.iter().copied().fold(f64::INFINITY, f64::min),
            init.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    });
    (trained, band)
}

/// The x span of trained steps (for drawing init bands across it).
fn step_span(summary: &[SummaryRow]) -> Option<(f64, f64)> {
    let steps: Vec<f64> = summary
        .iter()
        .filter(|r| !at_init(r))
        .filter_map(|r| r.step.map(|s| s as f64))
        .filter(|&s| s > 0.0)
        .collect();
    let lo = steps.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = steps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    lo.is_finite().then_some((lo, hi.max(lo * 1.0001)))
}

/// A line (trained checkpoints) and its init band, in one colour.
fn line_with_init_band(
    summary: &[SummaryRow],
    name: &str,
    (kind, k, metric): (&str, usize, &str),
    color: usize,
    dashed: bool,
) -> Vec<Series> {
    let (points, band) = trajectory(summary, kind, k, metric);
    let mut out = vec![Series {
        name: name.to_string(),
        points,
        markers: !dashed,
        dashed,
        color: Some(palette(color)),
        ..Series::default()
    }];
    if let (Some((lo, hi)), Some((x0, x1))) = (band, step_span(summary)) {
        if !dashed {
            out.push(Series {
                name: format!("{name}: init range"),
                band: Some(vec![(x0, lo, hi), (x1, lo, hi)]),
                color: Some(palette(color)),
                ..Series::default()
            });
        }
    }
    out
}

/// Writes every figure into `out_dir`; returns them in report order.
pub fn write_figures(
    out_dir: &Path,
    tables: &ScanTables,
    summary: &[SummaryRow],
    kinds: &[HeadKind],
    max_refs: usize,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let ks: Vec<usize> = if max_refs > 1 {
        vec![1, max_refs]
    } else {
        vec![1]
    };

    // Figures over steps need at least one trained checkpoint with a known step.
    if step_span(summary).is_some() {
        // R² vs step, one panel per kind.
        let panels: Vec<LineChart> = kinds
            .iter()
            .map(|kind| {
                let mut chart = LineChart::new(
                    format!("{} heads", kind.name().to_uppercase()),
                    "training step (log)",
                    "mean R²",
                );
                chart.log_x = true;
                chart.legend = LegendPosition::UpperLeft;
                for (i, &k) in ks.iter().enumerate() {
                    chart.series.extend(line_with_init_band(
                        summary,
                        &format!("held-out k={k}"),
                        (kind.name(), k, "r2_heldout"),
                        i,
                        false,
                    ));
                    chart.series.extend(line_with_init_band(
                        summary,
                        &format!("in-sample k={k}"),
                        (kind.name(), k, "r2_insample"),
                        i,
                        true,
                    ));
                    let bound_value = summary
                        .iter()
                        .find(|r| {
                            r.kind == kind.name() && r.k == k && r.metric == "isotropic_bound"
                        })
                        .map(|r| r.value);
                    if let (Some(b), Some((x0, x1))) = (bound_value, step_span(summary)) {
                        chart.series.push(Series {
                            name: format!("isotropic init bound k={k}"),
                            points: vec![(x0, b), (x1, b)],
                            dashed: true,
                            color: Some(palette(7)),
                            ..Series::default()
                        });
                    }
                }
                chart
            })
            .collect();
        write_small_multiples(
            &SmallMultiples {
                title: "Linear predictability vs training step".into(),
                panels,
                columns: kinds.len().min(3),
                panel_size: (560, 420),
            },
            &out_dir.join("r2_vs_step"),
        )?;
        figures.push(Figure {
            stem: "r2_vs_step".into(),
            caption: format!(
                "Mean R² of predicting a head from its k best same-layer peers vs step (held-out solid, in-sample dashed). \
    Shaded: the range over step 0 and random initialisations; grey dashed: the isotropic init bound k·d_head/d_model (k = {}).",
                ks.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            ),
        });

        // Alignment vs step.
        let mut chart = LineChart::new(
            "Key-subspace alignment vs training step",
            "training step (log)",
            "mean pairwise cos² of principal angles",
        );
        chart.log_x = true;
        for (i, kind) in kinds.iter().enumerate() {
            chart.series.extend(line_with_init_band(
                summary,
                &format!("{} heads", kind.name().to_uppercase()),
                (kind.name(), 0, "mean_cos2"),
                i,
                false,
            ));
        }
        if let (Some(null), Some((x0, x1))) = (
            summary
                .iter()
                .find(|r| r.metric == "null_cos2" && r.value.is_finite())
                .map(|r| r.value),
            step_span(summary),
        ) {
            chart.series.push(Series {
                name: "random subspaces (head_dim/d_model)".into(),
                points: vec![(x0, null), (x1, null)],
                dashed: true,
                color: Some(palette(7)),
                ..Series::default()
            });
        }
        write_line_chart(&chart, &out_dir.join("alignment_vs_step"))?;
        figures.push(Figure {
            stem: "alignment_vs_step".into(),
            caption: "Mean cos² of the principal angles between heads' projection subspaces (averaged over head pairs and layers) vs step; shaded: init range; dashed: the random-subspace expectation.".into(),
        });

        // Sinks vs step.
        let mut chart = LineChart::new(
            "Attention sinks vs training step",
            "training step (log)",
            "per head",
        );
        chart.log_x = true;
        for (i, (metric, name)) in [
            ("first_column_score", "first-position column score"),
            ("sinks_beyond_first", "extra sinks per sequence"),
            ("heads_with_extra_sink", "share of heads with an extra sink"),
        ]
        .iter()
        .enumerate()
        {
            chart.series.extend(line_with_init_band(
                summary,
                name,
                ("attention", 0, metric),
                i,
                false,
            ));
        }
        write_line_chart(&chart, &out_dir.join("sinks_vs_step"))?;
        figures.push(Figure {
            stem: "sinks_vs_step".into(),
            caption: "ACT's sink rule per head (column mean over visible queries > 0.1, first candidate exempt, ≥ 16 visible queries): the first position's column score, the mean count of further sinks, and the share of heads that have one in most sequences; shaded: init range.".into(),
        });
    }
    // Per-layer held-out R² (k = 1) over checkpoints, one heatmap per kind.
    let labels = &tables.labels;
    for kind in kinds {
        let layers = tables
            .predictions
            .iter()
            .map(|r| r.layer)
            .max()
            .map_or(0, |l| l + 1);
        let values: Vec<Vec<f64>> = (0..layers)
            .map(|layer| {
                labels
                    .iter()
                    .map(|label| {
                        finite_mean(
                            tables
                                .predictions
                                .iter()
                                .filter(|r| {
                                    r.checkpoint == *label
                                        && r.kind == *kind
                                        && r.layer == layer
                                        && r.k == 1
                                })
                                .map(|r| r.r2_heldout),
                        )
                        .0
                    })
                    .collect()
            })
            .collect();
        let stem = format!("r2_heatmap_{}", kind.name());
        write_heatmap(
            &Heatmap {
                title: format!(
                    "{} heads: held-out R² from the best single peer, per layer",
                    kind.name().to_uppercase()
                ),
                x_label: "checkpoint".into(),
                y_label: "layer".into(),
                row_labels: (0..layers).map(|l| l.to_string()).collect(),
                column_labels: labels.iter().map(|l| short_label(l)).collect(),
                values,
                value_label: "mean held-out R² (k=1)".into(),
                value_range: Some((0.0, 1.0)),
                size: (1000, 560),
            },
            &out_dir.join(&stem),
        )?;
        figures.push(Figure {
            stem,
            caption: format!(
                "{} heads: mean held-out R² at k = 1 for each layer (rows) and checkpoint (columns, in scan order).",
                kind.name().to_uppercase()
            ),
        });
    }

    // Weight-only vs measured, for the init and the last trained checkpoint.
    let last_trained = tables
        .checkpoints
        .iter()
        .filter(|c| !c.is_init && c.step != Some(0))
        .max_by_key(|c| c.step.unwrap_or(0))
        .map(|c| c.checkpoint.clone());
    let first_init = tables
        .checkpoints
        .iter()
        .find(|c| c.is_init || c.step == Some(0))
        .map(|c| c.checkpoint.clone());
    let mut scatter = ScatterChart::new(
        "Measured held-out R² vs the weights' prediction",
        "weight-only R² (isotropic input)",
        "measured held-out R²",
    );
    scatter.identity_line = true;
    for label in [first_init, last_trained].into_iter().flatten() {
        scatter.points.extend(
            tables
                .weight_vs_measured
                .iter()
                .filter(|r| r.checkpoint == label)
                .map(|r| ScatterPoint {
                    x: r.weight_r2,
                    y: r.r2_heldout,
                    group: Some(format!(
                        "{} ({})",
                        short_label(&label),
                        r.kind.name().to_uppercase()
                    )),
                    label: None,
                }),
        );
    }
    write_scatter(&scatter, &out_dir.join("weight_vs_measured"))?;
    figures.push(Figure {
        stem: "weight_vs_measured".into(),
        caption: "Each point is one (target head, reference set): its measured held-out R² against ‖P_R W_t‖²/‖W_t‖², the R² its weights give for isotropic input, at initialisation and at the last checkpoint. Above the line: the input's structure adds predictability.".into(),
    });

    Ok(figures)
}

/// A compact column label: `stage1-step1000-tokens5B` → `step1000`,
/// `init-series-seed1-olmo` → `init s1 olmo`; other labels unchanged.
fn short_label(label: &str) -> String {
    let parts: Vec<&str> = label.split('-').collect();
    if parts.first() == Some(&"init") {
        let seed = parts.iter().find(|p| p.starts_with("seed"));
        let scheme = parts.last().filter(|p| !p.starts_with("seed"));
        return format!(
            "init s{}{}",
            seed.map_or("", |s| &s[4..]),
            scheme.map_or(String::new(), |s| format!(" {s}"))
        );
    }
    parts
        .iter()
        .find(|p| p.starts_with("step"))
        .map_or(label.to_string(), |p| p.to_string())
}

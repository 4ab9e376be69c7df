//! The KV-cache Pareto section of the validate report and its figures (one per task: quality
//! against KV bytes per token), rendered from [`ParetoRow`]s.

use std::path::Path;

use anyhow::Result;

use crate::infer::kv_pareto::{ParetoRow, BPB_METRIC, DEPLOYED_ELEMENT_BYTES};
use crate::report::markdown::{table, NOT_MEASURED};
use crate::report::plot::{write_scatter, LegendPosition, ScatterChart, ScatterPoint};
use crate::report::validate_report::{interval_or_dash, signed_or_dash};

/// The metric a task's figure plots (multiple choice has two; `acc` is the one plotted).
fn plotted(row: &ParetoRow) -> bool {
    !matches!(row.metric.as_str(), "acc_per_char")
}

/// The method family a mode belongs to, for the figures' colours.
fn family(mode: &str) -> &'static str {
    match mode.split(':').next().unwrap_or(mode) {
        "baseline" => "plain cache",
        "quant" => "quantized (KIVI layout)",
        "lowrank" => "low rank (PCA)",
        "evict" => "sink + window eviction",
        _ if mode.starts_with("refs") || mode.starts_with("kv-") => "reference heads",
        _ => "other",
    }
}

/// The markdown section: how bytes are counted, then one table per task and metric.
pub fn pareto_section(rows: &[ParetoRow], figures: &[String]) -> String {
    let mut md = format!(
        "\n## KV cache variants at equal items\n\n\
         Every variant runs on the same items as the baseline; Δ is against the baseline with a \
         paired 95% interval (accuracy: Agresti–Min over items; bits per byte: documents as units, \
         ratio estimator with a t quantile). KV bytes per token are the cache layout's closed form \
         averaged over the task's own sequences, full-precision entries counted at {DEPLOYED_ELEMENT_BYTES} \
         bytes (16-bit, as deployed); codes, f16 scales and minimums, the full-precision residual of \
         incomplete key groups, and the positions of keys rebuilt before RoPE count what they are. \
         Eviction holds at most sinks + window positions, so its bytes fall with sequence length. \
         Maps (low-rank bases, reference-head coefficients) are per model and listed apart. \
         Decode tokens/s is the short generation run of speed.csv, against the plain cache in the \
         same run. ★ marks the Pareto frontier of the task and metric.\n"
    );
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        if !keys.contains(&(row.task.as_str(), row.metric.as_str())) {
            keys.push((&row.task, &row.metric));
        }
    }
    for (task, metric) in keys {
        let mut these: Vec<&ParetoRow> = rows
            .iter()
            .filter(|r| r.task == task && r.metric == metric)
            .collect();
        these.sort_by(|a, b| b.kv_bytes_per_token.total_cmp(&a.kv_bytes_per_token));
        let direction = if metric == BPB_METRIC {
            "lower is better"
        } else {
            "higher is better"
        };
        md.push_str(&format!("\n### {task} · {metric} ({direction})\n\n"));
        md.push_str(&table(
            &[
                "mode",
                "compresses",
                "KV bytes per token",
                "× plain",
                "maps (KiB)",
                metric,
                "95% interval",
                "Δ vs baseline",
                "paired 95% interval of Δ",
                "decode tokens/s",
                "× plain decode",
                "frontier",
            ],
            these.iter().map(|r| {
                vec![
                    r.mode.clone(),
                    r.compresses.clone(),
                    format!("{:.0}", r.kv_bytes_per_token),
                    format!("{:.3}", r.kv_fraction_of_plain),
                    format!("{:.0}", r.kv_map_bytes as f64 / 1024.0),
                    format!("{:.4}", r.value),
                    if r.low_95.is_finite() {
                        format!("[{:.4}, {:.4}]", r.low_95, r.high_95)
                    } else {
                        NOT_MEASURED.into()
                    },
                    signed_or_dash(r.delta_vs_baseline),
                    interval_or_dash(r.delta_low_95, r.delta_high_95),
                    if r.decode_tokens_per_second.is_finite() {
                        format!("{:.1}", r.decode_tokens_per_second)
                    } else {
                        NOT_MEASURED.into()
                    },
                    if r.decode_speed_vs_plain.is_finite() {
                        format!("{:.2}", r.decode_speed_vs_plain)
                    } else {
                        NOT_MEASURED.into()
                    },
                    if r.on_frontier { "★" } else { "" }.into(),
                ]
            }),
        ));
    }
    if !figures.is_empty() {
        md.push_str("\nFigures (quality against KV bytes per token, one per task): ");
        md.push_str(
            &figures
                .iter()
                .map(|f| format!("[{f}]({f})"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        md.push('\n');
    }
    md
}

/// One scatter per task (its plotted metric): x the fraction of the plain cache's bytes, y the
/// value, each point labelled with its mode and coloured by method family.
pub fn pareto_charts(rows: &[ParetoRow]) -> Vec<(String, ScatterChart)> {
    let mut tasks: Vec<&str> = Vec::new();
    for row in rows.iter().filter(|r| plotted(r)) {
        if !tasks.contains(&row.task.as_str()) {
            tasks.push(&row.task);
        }
    }
    tasks
        .into_iter()
        .map(|task| {
            let these: Vec<&ParetoRow> = rows
                .iter()
                .filter(|r| r.task == task && plotted(r))
                .collect();
            let metric = these.first().map_or("", |r| r.metric.as_str());
            let mut chart = ScatterChart::new(
                format!("{task}: {metric} against KV cache size"),
                "KV bytes per token, fraction of the plain 16-bit cache",
                metric,
            );
            chart.legend = if metric == BPB_METRIC {
                LegendPosition::UpperRight
            } else {
                LegendPosition::LowerRight
            };
            chart.points = these
                .iter()
                .map(|r| ScatterPoint {
                    x: r.kv_fraction_of_plain,
                    y: r.value,
                    group: Some(family(&r.mode).into()),
                    label: Some(r.mode.clone()),
                })
                .collect();
            (format!("pareto-{task}"), chart)
        })
        .collect()
}

/// Writes every task's figure under `out_dir`; returns the PNG names, for the report.
pub fn write_pareto_charts(rows: &[ParetoRow], out_dir: &Path) -> Result<Vec<String>> {
    pareto_charts(rows)
        .into_iter()
        .map(|(stem, chart)| {
            write_scatter(&chart, &out_dir.join(&stem))?;
            Ok(format!("{stem}.png"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_fall_into_their_method_families() {
        assert_eq!(family("baseline"), "plain cache");
        assert_eq!(family("quant:int4@k"), "quantized (KIVI layout)");
        assert_eq!(family("lowrank:96+int8"), "low rank (PCA)");
        assert_eq!(family("refs:0.5@k"), "reference heads");
        assert_eq!(family("kv-kv"), "reference heads");
        assert_eq!(family("evict:4+64"), "sink + window eviction");
    }
}

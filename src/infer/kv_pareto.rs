//! The KV-cache Pareto table: for every task and mode, the quality it scored (accuracy, or bits per
//! byte) against the KV bytes it held per token on that task's sequences, with the paired interval
//! of its difference from the baseline and its decode speed. Pure: rows in, rows out.
//!
//! Bytes are the layouts' closed form ([`KvLayout::bytes`]) summed over the task's sequences at
//! their own lengths and divided by their tokens, with full-precision entries counted at
//! [`DEPLOYED_ELEMENT_BYTES`] (bf16/f16, as caches are deployed): codes, scales and positions
//! count what they are. Eviction holds at most `sinks + window` positions, so its bytes per token
//! fall with the task's sequence lengths. Map parameters are per model, listed apart.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::infer::accuracy_row::AccuracyRow;
use crate::infer::bpb_task::{BpbRow, BPB_TASK};
use crate::infer::kv_variant::KvLayout;
use crate::infer::mode_speed::SpeedRow;

/// Bytes of a full-precision cache entry as deployed (16-bit).
pub const DEPLOYED_ELEMENT_BYTES: i64 = 2;

/// The metric bits per byte is reported under.
pub const BPB_METRIC: &str = "bits_per_byte";

#[derive(Clone, Debug, Serialize)]
pub struct ParetoRow {
    pub task: String,
    pub metric: String,
    pub mode: String,
    /// What the mode compresses: `none`, `keys`, `values`, `keys and values`.
    pub compresses: String,
    /// Mean KV bytes per cached token over the task's sequences (16-bit full precision).
    pub kv_bytes_per_token: f64,
    /// That, over the plain cache's on the same sequences.
    pub kv_fraction_of_plain: f64,
    /// Map parameters (low-rank bases, reference-head maps), once per model.
    pub kv_map_bytes: i64,
    /// Accuracy, or bits per byte (lower is better).
    pub value: f64,
    /// 95% interval of the value (Wilson; NaN for bits per byte).
    pub low_95: f64,
    pub high_95: f64,
    /// Value minus the baseline's on the same items or documents, with its paired 95% interval.
    pub delta_vs_baseline: f64,
    pub delta_low_95: f64,
    pub delta_high_95: f64,
    pub decode_tokens_per_second: f64,
    /// Decode tokens/s over the baseline's in the same run.
    pub decode_speed_vs_plain: f64,
    /// No other mode on this task and metric holds fewer or equal bytes with an equal or better
    /// value, one of them strictly.
    pub on_frontier: bool,
}

/// What the table is built from: every mode's rows and layout, and the sequences each task ran.
pub struct ParetoInputs<'a> {
    pub accuracy: &'a [AccuracyRow],
    pub bpb: &'a [BpbRow],
    pub speed: &'a [SpeedRow],
    /// Each mode's layout by name (`None`: the plain cache).
    pub layouts: &'a [(&'a str, Option<&'a KvLayout>)],
    /// Sequence lengths per (task, mode).
    pub sequence_lengths: &'a BTreeMap<(String, String), Vec<i64>>,
    pub config: &'a ModelConfig,
}

/// Mean bytes per token of `layout` over `lengths` (NaN without tokens).
fn bytes_per_token(layout: &KvLayout, lengths: &[i64], config: &ModelConfig) -> f64 {
    let tokens: i64 = lengths.iter().sum();
    let bytes: i64 = lengths
        .iter()
        .map(|&n| layout.bytes(n, config, DEPLOYED_ELEMENT_BYTES))
        .sum();
    if tokens == 0 {
        f64::NAN
    } else {
        bytes as f64 / tokens as f64
    }
}

/// Which kinds a layout compresses.
fn compresses(layout: Option<&KvLayout>) -> &'static str {
    let Some(layout) = layout else {
        return "none";
    };
    let changed = |keys: bool| {
        layout.layers.iter().any(|l| {
            let kind = if keys { &l.keys } else { &l.values };
            kind.map.is_some() || kind.quant.is_some() || l.eviction.is_some()
        })
    };
    match (changed(true), changed(false)) {
        (true, true) => "keys and values",
        (true, false) => "keys",
        (false, true) => "values",
        (false, false) => "none",
    }
}

/// Every (task, metric, mode) row, in accuracy-then-bpb order, frontiers marked.
pub fn pareto_rows(inputs: &ParetoInputs) -> Vec<ParetoRow> {
    let plain = KvLayout::plain(inputs.config.num_hidden_layers);
    let baseline_speed = inputs
        .speed
        .first()
        .map_or(f64::NAN, |s| s.decode_tokens_per_second);
    let row = |task: &str, metric: &str, mode: &str| {
        let layout = inputs
            .layouts
            .iter()
            .find(|(name, _)| *name == mode)
            .and_then(|(_, l)| *l);
        let lengths = inputs
            .sequence_lengths
            .get(&(task.to_string(), mode.to_string()))
            .map_or(&[][..], Vec::as_slice);
        let held = bytes_per_token(layout.unwrap_or(&plain), lengths, inputs.config);
        let decode = inputs
            .speed
            .iter()
            .find(|s| s.mode == mode)
            .map_or(f64::NAN, |s| s.decode_tokens_per_second);
        ParetoRow {
            task: task.into(),
            metric: metric.into(),
            mode: mode.into(),
            compresses: compresses(layout).into(),
            kv_bytes_per_token: held,
            kv_fraction_of_plain: held / bytes_per_token(&plain, lengths, inputs.config),
            kv_map_bytes: layout.map_or(0, KvLayout::map_bytes),
            value: f64::NAN,
            low_95: f64::NAN,
            high_95: f64::NAN,
            delta_vs_baseline: f64::NAN,
            delta_low_95: f64::NAN,
            delta_high_95: f64::NAN,
            decode_tokens_per_second: decode,
            decode_speed_vs_plain: decode / baseline_speed,
            on_frontier: false,
        }
    };
    let mut rows: Vec<ParetoRow> = inputs
        .accuracy
        .iter()
        .map(|a| ParetoRow {
            value: a.accuracy,
            low_95: a.low_95,
            high_95: a.high_95,
            delta_vs_baseline: a.delta_vs_baseline,
            delta_low_95: a.delta_low_95,
            delta_high_95: a.delta_high_95,
            ..row(&a.task, &a.metric, &a.mode)
        })
        .collect();
    rows.extend(inputs.bpb.iter().map(|b| ParetoRow {
        value: b.bits_per_byte,
        delta_vs_baseline: b.delta_vs_baseline,
        delta_low_95: b.delta_low_95,
        delta_high_95: b.delta_high_95,
        ..row(BPB_TASK, BPB_METRIC, &b.mode)
    }));
    mark_frontier(&mut rows);
    rows
}

/// Sets `on_frontier` within each (task, metric): higher is better except bits per byte.
fn mark_frontier(rows: &mut [ParetoRow]) {
    let better = |metric: &str, a: f64, b: f64| {
        if metric == BPB_METRIC {
            a < b
        } else {
            a > b
        }
    };
    let flags: Vec<bool> = rows
        .iter()
        .map(|r| {
            r.value.is_finite()
                && !rows.iter().any(|o| {
                    o.task == r.task
                        && o.metric == r.metric
                        && o.value.is_finite()
                        && o.kv_bytes_per_token <= r.kv_bytes_per_token
                        && !better(&r.metric, r.value, o.value)
                        && (o.kv_bytes_per_token < r.kv_bytes_per_token
                            || better(&r.metric, o.value, r.value))
                })
        })
        .collect();
    for (row, flag) in rows.iter_mut().zip(flags) {
        row.on_frontier = flag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, mode: &str, bytes: f64, value: f64) -> ParetoRow {
        ParetoRow {
            task: "t".into(),
            metric: metric.into(),
            mode: mode.into(),
            compresses: String::new(),
            kv_bytes_per_token: bytes,
            kv_fraction_of_plain: f64::NAN,
            kv_map_bytes: 0,
            value,
            low_95: f64::NAN,
            high_95: f64::NAN,
            delta_vs_baseline: f64::NAN,
            delta_low_95: f64::NAN,
            delta_high_95: f64::NAN,
            decode_tokens_per_second: f64::NAN,
            decode_speed_vs_plain: f64::NAN,
            on_frontier: false,
        }
    }

    /// By hand: (bytes, accuracy) a (100, .6), b (50, .55), c (50, .5), d (25, .5), e (60, .55).
    /// c is beaten by b (same bytes, better), e by b (fewer bytes, same), so a, b, d remain; for
    /// bits per byte, lower wins.
    #[test]
    fn the_frontier_keeps_what_nothing_beats_on_both_axes() {
        let mut rows = vec![
            row("acc", "a", 100.0, 0.6),
            row("acc", "b", 50.0, 0.55),
            row("acc", "c", 50.0, 0.5),
            row("acc", "d", 25.0, 0.5),
            row("acc", "e", 60.0, 0.55),
            row(BPB_METRIC, "a", 100.0, 1.0),
            row(BPB_METRIC, "b", 50.0, 1.2),
            row(BPB_METRIC, "c", 50.0, 1.1),
        ];
        mark_frontier(&mut rows);
        let on: Vec<(&str, &str)> = rows
            .iter()
            .filter(|r| r.on_frontier)
            .map(|r| (r.metric.as_str(), r.mode.as_str()))
            .collect();
        assert_eq!(
            on,
            [
                ("acc", "a"),
                ("acc", "b"),
                ("acc", "d"),
                (BPB_METRIC, "a"),
                (BPB_METRIC, "c")
            ]
        );
    }
}

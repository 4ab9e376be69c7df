//! One row of validate's accuracy.csv: a task's accuracy under one mode and metric, with its Δ
//! against the baseline on the same items.

use serde::Serialize;

use crate::infer::harness::Accuracy;
use crate::stats::interval::{paired_interval_of, Z_95};

#[derive(Serialize)]
pub struct AccuracyRow {
    pub task: String,
    pub variant: String,
    pub mode: String,
    pub metric: String,
    pub items: u64,
    pub correct: u64,
    pub accuracy: f64,
    pub low_95: f64,
    pub high_95: f64,
    /// Accuracy minus the baseline's on the same items (NaN for the baseline itself).
    pub delta_vs_baseline: f64,
    /// Paired 95% interval of that difference (Agresti–Min; see `stats::interval`).
    pub delta_low_95: f64,
    pub delta_high_95: f64,
}

impl AccuracyRow {
    /// A row for `summary`; `paired` is `None` for the baseline, else the (correct now, correct in
    /// the baseline) outcome of every item, for the Δ and its paired interval.
    pub fn new(
        [task, variant, mode, metric]: [&str; 4],
        summary: &Accuracy,
        paired: Option<Vec<(bool, bool)>>,
    ) -> Self {
        let (delta_vs_baseline, (delta_low_95, delta_high_95)) = match paired {
            None => (f64::NAN, (f64::NAN, f64::NAN)),
            Some(pairs) => {
                let before = pairs.iter().filter(|(_, b)| *b).count() as f64;
                (
                    summary.accuracy - before / pairs.len().max(1) as f64,
                    paired_interval_of(pairs, Z_95),
                )
            }
        };
        AccuracyRow {
            task: task.into(),
            variant: variant.into(),
            mode: mode.into(),
            metric: metric.into(),
            items: summary.items,
            correct: summary.correct,
            accuracy: summary.accuracy,
            low_95: summary.low_95,
            high_95: summary.high_95,
            delta_vs_baseline,
            delta_low_95,
            delta_high_95,
        }
    }
}

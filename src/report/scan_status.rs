//! `scan --status`: one line per checkpoint with each unit's state, then the totals.

use std::collections::BTreeMap;

use crate::series::checkpoint_scan::{CheckpointRecord, IncompleteRow};
use crate::series::units::UnitStatus;

/// `--status`: one line per checkpoint with each unit's state, then the totals.
pub fn status_table(records: &[CheckpointRecord], incomplete: &[IncompleteRow]) -> String {
    let mut lines = Vec::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records {
        let states: Vec<String> = record
            .units
            .iter()
            .map(|u| {
                let state = match u.status {
                    UnitStatus::Cached => "done",
                    other => other.name(),
                };
                *totals.entry(state).or_default() += 1;
                format!("{} {state}", u.analysis)
            })
            .collect();
        lines.push(format!("{:<40} {}", record.label, states.join(", ")));
    }
    for row in incomplete {
        *totals.entry("failed").or_default() += 1;
        lines.push(format!("{:<40} failed: {}", row.checkpoint, row.error));
    }
    let summary: Vec<String> = totals.iter().map(|(k, v)| format!("{v} {k}")).collect();
    lines.push(format!("units: {}", summary.join(", ")));
    lines.join("\n")
}

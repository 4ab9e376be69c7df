//! The scan report's init-time check: the two-sided comparison that `ckpt-scan theory` made for
//! the series (theory/init_bound.md §7), read back from `<out>/theory/verification_layers.csv`
//! and summarised beside the scan's own tables, so both say the same about the init rows.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::analysis::layer_check::Verdict;
use crate::report::markdown::NOT_MEASURED;

/// The columns of verification_layers.csv this section shows (the file has more).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TheoryRow {
    pub role: String,
    pub source: String,
    pub layer: i64,
    pub kind: String,
    pub k: usize,
    pub target_heads: usize,
    pub r2_pooled_heldout: f64,
    pub predicted_r2_pooled: f64,
    pub prediction_tolerance_pooled: f64,
    pub monte_carlo_r2_pooled: f64,
    pub verdict: Verdict,
    pub failed_checks: String,
    pub heads_above_prediction: usize,
    #[serde(default)]
    pub heads_above_prediction_bootstrap: usize,
    #[serde(default)]
    pub heldout_resamples: usize,
}

/// Where `theory --out <scan out>/theory` writes the rows.
pub fn theory_rows_path(out_dir: &Path) -> std::path::PathBuf {
    out_dir.join("theory").join("verification_layers.csv")
}

/// The rows of `<out_dir>/theory/verification_layers.csv`; `None` when theory has not run there.
pub fn read_theory_rows(out_dir: &Path) -> Result<Option<Vec<TheoryRow>>> {
    let path = theory_rows_path(out_dir);
    if !path.exists() {
        return Ok(None);
    }
    let mut reader = csv::Reader::from_path(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let rows = reader
        .deserialize()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("{}: row {}", path.display(), i + 2)))
        .collect::<Result<Vec<TheoryRow>>>()?;
    Ok(Some(rows))
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        NOT_MEASURED.into()
    }
}

/// The report section: per init source the verdicts and the k = 1 layer table (K heads, or the
/// first kind), per trained source the heads above the prediction per layer. Without rows, how
/// to make them.
pub fn theory_markdown(rows: Option<&[TheoryRow]>, series: &str, out_dir: &Path) -> String {
    let mut md = String::from("## Init-time check (two-sided)\n\n");
    let Some(rows) = rows.filter(|r| !r.is_empty()) else {
        md.push_str(&format!(
            "Not run for this report. `ckpt-scan theory --no-default-sources --init SPEC --trained SPEC --out {}` compares every init layer's held-out R² with its prediction (random projections of the layer's own input, replicated through the same fit and score) and writes the rows this section reads; `make demo` does it for the `{series}` series.\n\n",
            out_dir.join("theory").display()
        ));
        return md;
    };
    md.push_str("From `theory/verification.md` (its rows: `theory/verification_layers.csv`). The isotropic bound above is the population R² of random projections of *isotropic* input; the prediction here is the held-out R² that random projections of *this layer's measured input* give under the same sequence split, fit and score, replicated over weight draws. An init row passes when its measured value lies within the replication tolerance of that prediction (two-sided, family-wise α = 0.05), and is at most the population value and the theorem's bound, each plus the gain that choosing the best references from many allows (the selection slack). *Population* is the Monte Carlo E R² of random projections of the layer's input covariance: at init predictability is present in the population; what the held-out R² at init shows is prediction across held-out sequences, which the design deflates.\n\n");
    let mut sources: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !sources.contains(&(r.source.as_str(), r.role.as_str())) {
            sources.push((r.source.as_str(), r.role.as_str()));
        }
    }
    for (source, role) in sources {
        let of: Vec<&TheoryRow> = rows.iter().filter(|r| r.source == source).collect();
        let kind = if of.iter().any(|r| r.kind == "k") {
            "k"
        } else {
            of[0].kind.as_str()
        };
        let table: Vec<&&TheoryRow> = of.iter().filter(|r| r.kind == kind && r.k == 1).collect();
        if role == "init" {
            let passed = of.iter().filter(|r| r.verdict == Verdict::Pass).count();
            md.push_str(&format!(
                "**`{source}` (init)**: {passed} of {} rows pass. Per layer, {} heads, k = 1:\n\n| layer | measured | predicted | tolerance | population | verdict |\n|---|---|---|---|---|---|\n",
                of.len(),
                kind.to_uppercase()
            ));
            for r in table {
                md.push_str(&format!(
                    "| {} | {} | {} | ±{} | {} | {}{} |\n",
                    r.layer,
                    fmt(r.r2_pooled_heldout),
                    fmt(r.predicted_r2_pooled),
                    fmt(r.prediction_tolerance_pooled),
                    fmt(r.monte_carlo_r2_pooled),
                    r.verdict,
                    if r.failed_checks.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.failed_checks)
                    }
                ));
            }
        } else {
            let heads: usize = of.iter().map(|r| r.target_heads).sum();
            let above: usize = of.iter().map(|r| r.heads_above_prediction).sum();
            let confirmed: usize = of.iter().map(|r| r.heads_above_prediction_bootstrap).sum();
            md.push_str(&format!(
                "**`{source}` (trained)**: {above} of {heads} (layer, kind, k, head) cases are above the per-head prediction limit, {confirmed} of them on 95% of bootstrap redraws of the held-out sequences. Per layer, {} heads, k = 1:\n\n| layer | measured | predicted | heads above | on the bootstrap |\n|---|---|---|---|---|\n",
                kind.to_uppercase()
            ));
            for r in table {
                md.push_str(&format!(
                    "| {} | {} | {} | {}/{} | {} |\n",
                    r.layer,
                    fmt(r.r2_pooled_heldout),
                    fmt(r.predicted_r2_pooled),
                    r.heads_above_prediction,
                    r.target_heads,
                    if r.heldout_resamples > 0 {
                        format!("{}/{}", r.heads_above_prediction_bootstrap, r.target_heads)
                    } else {
                        NOT_MEASURED.into()
                    }
                ));
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "role,source,layer,kind,k,target_heads,r2_pooled_heldout,predicted_r2_pooled,prediction_tolerance_pooled,monte_carlo_r2_pooled,verdict,failed_checks,heads_above_prediction,heads_above_prediction_bootstrap,heldout_resamples,extra\n\
init,hf:a@step0,0,k,1,32,0.010,0.012,0.004,0.35,pass,,0,0,0,x\n\
init,hf:a@step0,1,k,1,32,0.050,0.011,0.004,0.30,FAIL,prediction pooled,3,0,0,x\n\
trained,hf:a@main,0,k,1,32,0.600,0.013,0.004,0.33,above bound,,30,28,200,x\n";

    #[test]
    fn the_section_reads_the_theory_rows_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("theory")).unwrap();
        std::fs::write(theory_rows_path(dir.path()), CSV).unwrap();
        let rows = read_theory_rows(dir.path()).unwrap().unwrap();
        assert_eq!(rows.len(), 3);
        let md = theory_markdown(Some(&rows), "tiny", dir.path());
        assert!(
            md.contains("**`hf:a@step0` (init)**: 1 of 2 rows pass"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 0.050 | 0.011 | ±0.004 | 0.300 | FAIL (prediction pooled) |"),
            "{md}"
        );
        assert!(md.contains("30 of 32 (layer, kind, k, head) cases are above the per-head prediction limit, 28 of them"), "{md}");
        assert!(md.contains("| 0 | 0.600 | 0.013 | 30/32 | 28/32 |"), "{md}");
    }

    #[test]
    fn without_a_theory_run_the_section_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_theory_rows(dir.path()).unwrap().is_none());
        let md = theory_markdown(None, "tiny", dir.path());
        assert!(
            md.contains("Not run for this report") && md.contains("make demo"),
            "{md}"
        );
    }

    #[test]
    fn a_damaged_theory_file_is_named_with_its_row() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("theory")).unwrap();
        std::fs::write(
            theory_rows_path(dir.path()),
            CSV.replace("0.050", "zero point"),
        )
        .unwrap();
        let err = format!("{:#}", read_theory_rows(dir.path()).unwrap_err());
        assert!(err.contains("verification_layers.csv: row 3"), "{err}");
    }
}

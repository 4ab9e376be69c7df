//! The scan report: tidy CSV tables of every unit's rows, a per-checkpoint summary table, and
//! report.md. Rows arrive computed; this module only aggregates means and renders.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::analysis::predictability::isotropic_r2;
use crate::analysis::sinks::{MIN_VISIBLE_QUERIES, SINK_THRESHOLD};
use crate::config::rope_scaling::RopeScaling;
use crate::config::ModelConfig;
use crate::data::token_set::TokenSet;
use crate::output::atomic::write_atomic;
use crate::output::csv::write_csv;
use crate::output::manifest::ToolVersion;
use crate::report::markdown::NOT_MEASURED;
use crate::report::scan_figures::{write_figures, Figure};
use crate::report::theory_section::{read_theory_rows, theory_markdown};
use crate::series::checkpoint_scan::{CheckpointRecord, IncompleteRow};
use crate::series::manifest::SeriesManifest;
use crate::series::scan_options::ScanOptions;
use crate::series::scan_tables::{CheckpointRow, ScanTables, SummaryRow};

/// A scan's manifest.json: what produced the report, checkpoint by checkpoint.
#[derive(Serialize)]
pub struct ScanManifest<'a> {
    pub tool: ToolVersion,
    pub series: &'a SeriesManifest,
    pub manifest_path: String,
    pub options: &'a ScanOptions,
    pub token_set: &'a TokenSet,
    pub tokenizer: String,
    pub device: String,
    pub missing_revisions: &'a [String],
    pub duplicates: &'a [(String, String)],
    pub checkpoints: &'a [CheckpointRecord],
    /// Checkpoints `--report` found missing or failed (empty for a complete report).
    pub incomplete: &'a [IncompleteRow],
    pub seconds: f64,
}

impl ScanManifest<'_> {
    /// Writes manifest.json and incomplete.csv into `out_dir`.
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        write_atomic(&out_dir.join("manifest.json"), json.as_bytes())?;
        write_csv(&out_dir.join("incomplete.csv"), self.incomplete)
    }
}

/// Looks up one summary value.
fn value(rows: &[SummaryRow], checkpoint: &str, kind: &str, k: usize, metric: &str) -> f64 {
    rows.iter()
        .find(|r| r.checkpoint == checkpoint && r.kind == kind && r.k == k && r.metric == metric)
        .map_or(f64::NAN, |r| r.value)
}

/// Writes every CSV and report.md into `out_dir`.
pub fn write_report(
    out_dir: &Path,
    manifest: &SeriesManifest,
    options: &ScanOptions,
    config: &ModelConfig,
    tables: &ScanTables,
) -> Result<Vec<SummaryRow>> {
    let kinds = &options.predictability.kinds;
    let summary = tables.summary(kinds, options.max_refs, config);
    write_csv(&out_dir.join("checkpoints.csv"), &tables.checkpoints)?;
    write_csv(&out_dir.join("summary.csv"), &summary)?;
    write_csv(&out_dir.join("predictability.csv"), &tables.predictions)?;
    write_csv(
        &out_dir.join("alignment_layers.csv"),
        &tables.alignment_layers,
    )?;
    write_csv(
        &out_dir.join("alignment_pairs.csv"),
        &tables.alignment_pairs,
    )?;
    write_csv(&out_dir.join("weight_r2.csv"), &tables.weight_r2)?;
    write_csv(
        &out_dir.join("weight_vs_measured.csv"),
        &tables.weight_vs_measured,
    )?;
    write_csv(&out_dir.join("sinks.csv"), &tables.sinks)?;
    let figures = write_figures(out_dir, tables, &summary, kinds, options.max_refs)?;
    let theory = read_theory_rows(out_dir)?;
    let theory_section = theory_markdown(theory.as_deref(), &manifest.name, out_dir);
    let markdown = render_markdown(
        manifest,
        options,
        config,
        tables,
        &summary,
        &figures,
        &theory_section,
    );
    write_atomic(&out_dir.join("report.md"), markdown.as_bytes())?;
    Ok(summary)
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        NOT_MEASURED.into()
    }
}

fn render_markdown(
    manifest: &SeriesManifest,
    options: &ScanOptions,
    config: &ModelConfig,
    tables: &ScanTables,
    summary: &[SummaryRow],
    figures: &[Figure],
    theory_section: &str,
) -> String {
    let k_max = options.max_refs;
    let mut md = format!("# Scan: {}\n\n", manifest.name);
    if !manifest.description.is_empty() {
        md.push_str(&format!("{}\n\n", manifest.description.trim()));
    }
    let inits = tables.checkpoints.iter().filter(|c| c.is_init).count();
    md.push_str(&format!(
        "{} checkpoints and {} random initialisations; model: {} layers, d_model {}, {} query / {} KV heads of dimension {}. \
Token set: `{}` text, {} tokens in sequences of {} ({:.0}% of sequences fit the maps, {:.0}% held out), seed {}. \
Q and K captured at `{}`{}; V is the raw projection. Provenance of every number is in manifest.json.\n\n",
        tables.checkpoints.len() - inits,
        inits,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        options.text,
        options.tokens,
        options.seq_len,
        100.0 * options.fit_fraction(),
        100.0 * (1.0 - options.fit_fraction()),
        options.seed,
        options.predictability.capture_point.name(),
        match config.rope_scaling {
            RopeScaling::Default => String::new(),
            ref scaled => format!(" (RoPE {})", scaled.describe()),
        },
    ));
    md.push_str("## How to read this\n\n");
    md.push_str(&format!(
        "- **R²** is how much of a head's {{Q, K, V}} vectors a least-squares map from k other heads of the same layer explains, \
averaged over heads and layers. *Held-out* R² is scored on sequences the map never saw; *in-sample* on the fit sequences \
(it is always higher, by about (1 − R²)·p/n). References are the k heads that best predict the target on the fit split.\n\
- **Isotropic bound** k·d_head/d_model is the population R² of random projections at initialisation for isotropic input \
(theory/init_bound.md): {} at k = 1 and {} at k = {k_max} here. Real input is anisotropic, and for it the population R² at init \
is larger (the theorem caps it by the input's top-eigenvalue share); the held-out R² of an init is smaller, because it predicts \
across held-out sequences. The init-time check at the end compares each init layer with its own prediction.\n\
- **Weight-only R²** ‖P_R W_t‖²/‖W_t‖² is the same prediction from the projection weights alone, for isotropic input: \
the gap to the measured R² is what the input's structure adds.\n\
- **mean cos²** averages cos² of the principal angles between two heads' projection subspaces over pairs; \
independent random subspaces give head_dim/d_model = {}.\n\
- **Sinks** follow ACT's rule: a key position is a sink when its mean attention over the queries that see it exceeds {SINK_THRESHOLD}; \
the first such position is exempt, and only positions seen by ≥ {MIN_VISIBLE_QUERIES} queries count. \
*first col* is the mean attention score of the first position; *extra sinks* the mean count per head and sequence.\n\n",
        fmt(isotropic_r2(1, config.head_dim, config.hidden_size)),
        fmt(isotropic_r2(k_max, config.head_dim, config.hidden_size)),
        fmt(config.head_dim as f64 / config.hidden_size as f64),
    ));
    md.push_str("## Figures\n\n");
    for figure in figures {
        md.push_str(&format!(
            "![{0}]({0}.png)\n\n*{1}* ([SVG]({0}.svg))\n\n",
            figure.stem, figure.caption
        ));
    }
    for &kind in &options.predictability.kinds {
        let name = kind.name();
        md.push_str(&format!("## {} heads\n\n", name.to_uppercase()));
        md.push_str(&format!(
            "| checkpoint | step | tokens | held-out k=1 | held-out k={k_max} | in-sample k=1 | in-sample k={k_max} | weight-only k=1 | weight-only k={k_max} | mean cos² |\n|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        for c in &tables.checkpoints {
            let v = |k: usize, metric: &str| fmt(value(summary, &c.checkpoint, name, k, metric));
            md.push_str(&format!(
                "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.checkpoint,
                if c.is_init { " (init)" } else { "" },
                c.step.map_or(NOT_MEASURED.into(), |s| s.to_string()),
                if c.tokens.is_empty() {
                    NOT_MEASURED
                } else {
                    &c.tokens
                },
                v(1, "r2_heldout"),
                v(k_max, "r2_heldout"),
                v(1, "r2_insample"),
                v(k_max, "r2_insample"),
                v(1, "weight_r2"),
                v(k_max, "weight_r2"),
                v(0, "mean_cos2"),
            ));
        }
        md.push('\n');
    }
    md.push_str("## Attention sinks\n\n| checkpoint | step | first col | extra sinks per head | heads with an extra sink |\n|---|---|---|---|---|\n");
    for c in &tables.checkpoints {
        let v = |metric: &str| fmt(value(summary, &c.checkpoint, "attention", 0, metric));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.checkpoint,
            c.step.map_or(NOT_MEASURED.into(), |s| s.to_string()),
            v("first_column_score"),
            v("sinks_beyond_first"),
            v("heads_with_extra_sink"),
        ));
    }
    let duplicates: Vec<&CheckpointRow> = tables
        .checkpoints
        .iter()
        .filter(|c| !c.duplicate_of.is_empty())
        .collect();
    md.push('\n');
    md.push_str(theory_section);
    md.push_str("## Integrity\n\n");
    if duplicates.is_empty() {
        md.push_str("No two checkpoints have identical weights.\n");
    }
    for c in duplicates {
        md.push_str(&format!(
            "- **{}** has the same weights as **{}** (duplicate branch?).\n",
            c.checkpoint, c.duplicate_of
        ));
    }
    md.push_str("\n## Files\n\n`summary.csv` (these tables in long form), `predictability.csv`, `alignment_layers.csv`, `alignment_pairs.csv`, \
`weight_r2.csv`, `weight_vs_measured.csv`, `sinks.csv`, `checkpoints.csv`, `manifest.json` (sources, commit shas, fingerprints, \
token-set hash, options, tool version, unit timings).\n");
    md
}

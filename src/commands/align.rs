//! `ckpt-scan align SOURCE`: Key-subspace principal angles and weight-only R², from weights alone
//! (each layer's projection read, analysed and dropped in turn; no forward pass).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::analysis::alignment::AlignmentOptions;
use crate::analysis::alignment_pass::{run_alignment, AlignOutput, MeasuredReferenceSet};
use crate::cli::AlignArgs;
use crate::output::atomic::{check_output_dir, write_atomic};
use crate::output::csv::write_csv;
use crate::output::default_out_dir;
use crate::output::manifest::tool_version;
use crate::printer::Printer;
use crate::report::align_report::{summary_markdown, AlignManifest};
use crate::settings::Settings;
use crate::source::open_source_with;

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
        seed: settings.master_seed(),
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
    let manifest = AlignManifest {
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

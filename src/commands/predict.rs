//! `ckpt-scan predict SOURCE`: linear predictability of every head of one checkpoint.

use anyhow::Result;

use crate::analysis::predictability_pass::run_predictability;
use crate::cli::PredictArgs;
use crate::data::token_set::{token_set_for, TOKEN_SET_FILE};
use crate::output::atomic::write_atomic;
use crate::output::csv::write_csv;
use crate::output::manifest::tool_version;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::predict_report::{manifest_line, summary_markdown, PredictManifest};
use crate::settings::predict::{out_dir, PredictSettings};
use crate::settings::{describe, Settings};
use crate::source::open_source_with;

pub fn run(args: &PredictArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let out_dir = out_dir(args)?;
    let source = open_source_with(&args.source, &settings.hub)?;
    let config = source.config().clone();
    let PredictSettings {
        out_dir,
        options,
        text,
        token_set: token_options,
        seed,
    } = PredictSettings::resolve(args, settings.master_seed(), out_dir, &config)?;
    let seq_len = token_options.seq_len;
    let (token_set, tokenizer_name) = token_set_for(
        source.as_ref(),
        &text,
        &token_options,
        args.tokenizer.as_deref(),
    )?;
    let n_sequences = token_set.sequences.len();
    if n_sequences < 128 {
        printer.warn(format!(
            "{n_sequences} sequences of {seq_len} tokens: held-out R² rests on {} sequences; consider a smaller --seq-len (research/linear_predictability.md §5b)",
            n_sequences - token_set.fit_sequences
        ));
    }
    printer.note(format!(
        "predict {}: {} tokens in {n_sequences} sequences ({} fit), text {}, capture {}, {}",
        args.source,
        n_sequences * seq_len,
        token_set.fit_sequences,
        text.name(),
        options.capture_point.name(),
        describe(&settings.load)
    ));
    let layers = source.config().num_hidden_layers;
    let mut progress = Progress::new(&printer, "predict", "layer", layers as u64);
    let output = run_predictability(
        source.as_ref(),
        token_set,
        &options,
        &settings.forward(),
        &printer,
        &mut |done, _| progress.set_position(done as f64),
    )?;
    progress.finish();
    write_csv(&out_dir.join("predictability.csv"), &output.rows)?;
    write_csv(&out_dir.join("edges.csv"), &output.edges)?;
    let manifest = PredictManifest {
        tool: tool_version(),
        source: source.provenance(),
        config: &config,
        text: text.name(),
        tokenizer: tokenizer_name,
        token_set: &output.token_set,
        n_sequences,
        seed,
        options: &options,
        device: describe(&settings.load),
        seconds: output.seconds,
        activation_store_bytes: output.store_bytes,
    };
    write_atomic(
        &out_dir.join(TOKEN_SET_FILE),
        &output.token_set.to_safetensors()?,
    )?;
    write_atomic(
        &out_dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    let summary = summary_markdown(&output.rows, &options, &config, &manifest_line(&manifest));
    write_atomic(&out_dir.join("summary.md"), summary.as_bytes())?;
    printer.result(summary);
    printer.note(format!("wrote {}", out_dir.display()));
    Ok(())
}

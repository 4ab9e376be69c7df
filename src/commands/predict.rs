//! `ckpt-scan predict SOURCE`: linear predictability of every head of one checkpoint.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::analysis::cross_layer::CrossLayerSink;
use crate::analysis::predictability::{
    finite_mean, isotropic_r2, Candidates, EdgeRow, PredictabilityOptions, PredictabilitySink,
    PredictionRow,
};
use crate::capture::activation_store::{ActivationStore, StorePlan};
use crate::capture::CaptureSink;
use crate::cli::PredictArgs;
use crate::data::corpora::{load_documents, TextSource};
use crate::data::token_set::{Split, TokenSet, TokenSetOptions};
use crate::data::tokenizer::tokenizer_for;
use crate::model::config::ModelConfig;
use crate::model::forward::{forward_streamed, OutputHead};
use crate::printer::Printer;
use crate::progress::Progress;
use crate::report::atomic::{check_output_dir, write_atomic};
use crate::report::csv::write_csv;
use crate::report::default_out_dir;
use crate::report::manifest::{tool_version, ToolVersion};
use crate::settings::{describe, Settings};
use crate::source::{open_source_with, Provenance, WeightSource};

/// Tokens per forward batch: bounds activation memory, not results.
pub const TOKENS_PER_BATCH: usize = 8192;

/// Everything `predict` produced, before it is written.
pub struct PredictOutput {
    pub rows: Vec<PredictionRow>,
    pub edges: Vec<EdgeRow>,
    pub token_set: TokenSet,
    pub seconds: f64,
    /// Disk the earlier-layers activation store took (0 for same-layer).
    pub store_bytes: u64,
}

/// Runs the analysis on an open source with a ready token set; `on_layer(done, layers)` is called
/// as the layer-streamed forward finishes each layer.
pub fn run_predictability(
    source: &dyn WeightSource,
    token_set: TokenSet,
    options: &PredictabilityOptions,
    settings: &Settings,
    on_layer: &mut dyn FnMut(i64, i64),
) -> Result<PredictOutput> {
    options.check(source.config())?;
    let config = source.config();
    let batches = token_set.batches(TOKENS_PER_BATCH);
    let splits: Vec<Split> = batches.iter().map(|(_, s)| *s).collect();
    let tokens: Vec<_> = batches.into_iter().map(|(t, _)| t).collect();
    let checkpoint = &source.provenance().spec;
    let printer = Printer {
        quiet: settings.quiet,
    };
    let start = Instant::now();
    let mut forward = |sink: &mut dyn CaptureSink| {
        forward_streamed(
            source,
            &tokens,
            sink,
            &settings.load,
            OutputHead::None,
            &settings.hidden_budget,
            Some(&mut *on_layer),
        )
    };
    let (rows, edges, store_bytes) = match options.candidates {
        Candidates::SameLayer => {
            let mut sink = PredictabilitySink::new(options.clone(), checkpoint, config, splits);
            forward(&mut sink)?;
            (sink.rows, sink.edges, 0)
        }
        Candidates::EarlierLayers => {
            // Every layer up to the deepest analysed is a source of some target.
            let layers = options.last_layer().unwrap_or(config.num_hidden_layers - 1) + 1;
            let plan = StorePlan {
                point: options.capture_point,
                layers,
                kinds: options
                    .kinds
                    .iter()
                    .map(|&k| (k, k.heads(config) * config.head_dim))
                    .collect(),
                batch_rows: tokens.iter().map(|t| t.numel() as i64).collect(),
                batch_splits: splits.clone(),
            };
            let spill_dir = &settings.hidden_budget.spill_dir;
            printer.note(format!(
                "activation store for earlier-layers candidates: {} in {}",
                plan.describe(),
                spill_dir.display()
            ));
            let store_bytes = plan.bytes();
            let store = ActivationStore::create(plan, spill_dir, options.store_budget_bytes)?;
            let mut sink = CrossLayerSink::new(options.clone(), checkpoint, config, splits, store);
            forward(&mut sink)?;
            (sink.rows, sink.edges, store_bytes)
        }
    };
    Ok(PredictOutput {
        rows,
        edges,
        token_set,
        seconds: start.elapsed().as_secs_f64(),
        store_bytes,
    })
}

/// The token set `text` gives for `source` (uniform ids for `random`, else its tokenizer or
/// `tokenizer`), and the tokenizer's name for the manifest.
pub fn build_token_set(
    source: &dyn WeightSource,
    text: &TextSource,
    options: &TokenSetOptions,
    tokenizer: Option<&Path>,
) -> Result<(TokenSet, String)> {
    if *text == TextSource::Random {
        return Ok((
            TokenSet::uniform_random(source.config().vocab_size, options)?,
            "none (random ids)".to_string(),
        ));
    }
    let (tokenizer, tokenizer_name) = tokenizer_for(source, tokenizer)?;
    let documents = load_documents(text)?;
    Ok((
        TokenSet::build(&documents, &tokenizer, options)?,
        tokenizer_name,
    ))
}

#[derive(Serialize)]
struct Manifest<'a> {
    tool: ToolVersion,
    source: &'a Provenance,
    config: &'a ModelConfig,
    text: String,
    tokenizer: String,
    token_set: &'a TokenSet,
    n_sequences: usize,
    seed: u64,
    options: &'a PredictabilityOptions,
    device: String,
    seconds: f64,
    activation_store_bytes: u64,
}

pub fn run(args: &PredictArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir("predict", &args.source));
    // Written only after the computation: a file or read-only folder in the way is found now.
    check_output_dir(&out_dir, "--out")?;
    if args.store_budget_gb.is_nan() || args.store_budget_gb < 0.0 {
        bail!(
            "--store-budget-gb must be a non-negative number, got {}",
            args.store_budget_gb
        );
    }
    let source = open_source_with(&args.source, &settings.hub)?;
    let config = source.config().clone();
    let options = PredictabilityOptions {
        kinds: args.kinds.clone(),
        max_refs: args.max_refs,
        selection: args.select,
        candidates: args.candidates,
        capture_point: args.capture,
        layers: args.layers.clone(),
        store_budget_bytes: (args.store_budget_gb * (1u64 << 30) as f64) as u64,
    };
    options.check(&config)?;
    let text = TextSource::parse(&args.text);
    let seq_len = args
        .seq_len
        .unwrap_or_else(|| (config.max_position_embeddings as usize).min(2048));
    if seq_len as i64 > config.max_position_embeddings {
        bail!(
            "--seq-len {seq_len}: longer than the model's max_position_embeddings ({})\nhint: use --seq-len {} or less",
            config.max_position_embeddings,
            config.max_position_embeddings
        );
    }
    let token_options = TokenSetOptions {
        tokens: args.tokens,
        seq_len,
        fit_fraction: args.split,
        seed: args.seed,
        separator: config.eos_token_id,
    };
    let (token_set, tokenizer_name) = build_token_set(
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
        settings,
        &mut |done, _| progress.set_position(done as f64),
    )?;
    progress.finish();
    write_csv(&out_dir.join("predictability.csv"), &output.rows)?;
    write_csv(&out_dir.join("edges.csv"), &output.edges)?;
    let manifest = Manifest {
        tool: tool_version(),
        source: source.provenance(),
        config: &config,
        text: text.name(),
        tokenizer: tokenizer_name,
        token_set: &output.token_set,
        n_sequences,
        seed: args.seed,
        options: &options,
        device: describe(&settings.load),
        seconds: output.seconds,
        activation_store_bytes: output.store_bytes,
    };
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

fn manifest_line(m: &Manifest) -> String {
    format!(
        "source `{}`{}; text `{}`; {} sequences × {} tokens ({} fit); token-set sha256 `{}`; seed {}; capture `{}`; RoPE `{}` (theta {}); {} {}",
        m.source.spec,
        m.source.revision_sha.as_deref().map(|s| format!(" @ `{s}`")).unwrap_or_default(),
        m.text,
        m.n_sequences,
        m.token_set.seq_len,
        m.token_set.fit_sequences,
        &m.token_set.hash[..16],
        m.seed,
        m.options.capture_point.name(),
        m.config.rope_scaling.describe(),
        m.config.rope_theta,
        m.tool.name,
        m.tool.version,
    )
}

/// Mean R² per kind and k (held-out headline, in-sample beside it), then a per-layer table.
pub fn summary_markdown(
    rows: &[PredictionRow],
    options: &PredictabilityOptions,
    config: &ModelConfig,
    provenance: &str,
) -> String {
    let mut md = String::from("# Linear predictability\n\n");
    md.push_str(&format!("{provenance}.\n\n"));
    md.push_str("R² per output dimension averaged uniformly (sklearn default, as the paper); pooled = 1 − ΣSSE/ΣSST. ");
    md.push_str(
        "**Held-out** R² (fit on the fit sequences, scored on unseen sequences) is the headline; ",
    );
    md.push_str("*in-sample* R² is what the paper's figures report. `isotropic` is k·head_dim/d_model, the value for independent random projections of isotropic input.\n\n");
    md.push_str("| kind | k | held-out R² | in-sample R² | pooled held-out | isotropic | NaN |\n|---|---|---|---|---|---|---|\n");
    for &kind in &options.kinds {
        for k in 1..=options.max_refs {
            let sel: Vec<&PredictionRow> =
                rows.iter().filter(|r| r.kind == kind && r.k == k).collect();
            if sel.is_empty() {
                continue;
            }
            let (held, bad) = finite_mean(sel.iter().map(|r| r.r2_heldout));
            let (ins, _) = finite_mean(sel.iter().map(|r| r.r2_insample));
            let (pooled, _) = finite_mean(sel.iter().map(|r| r.r2_pooled_heldout));
            md.push_str(&format!(
                "| {} | {k} | {held:.4} | {ins:.4} | {pooled:.4} | {:.4} | {bad} |\n",
                kind.name().to_uppercase(),
                isotropic_r2(k, config.head_dim, config.hidden_size)
            ));
        }
    }
    let caps = k_cap_lines(options, config);
    let capped = !caps.is_empty();
    if capped {
        md.push_str(&format!(
            "\n**k capped** below --max-refs {} at the candidate heads (`max_k` in predictability.csv); a mean over k above a layer's cap leaves that layer out, and the per-layer table shows each layer's largest k:\n\n",
            options.max_refs
        ));
        for line in caps {
            md.push_str(&format!("- {line}\n"));
        }
    }
    let max_k = options.max_refs;
    md.push_str("\n## Per layer (held-out R², mean over target heads)\n\n| layer |");
    for &kind in &options.kinds {
        let largest = (0..config.num_hidden_layers)
            .filter(|&l| options.analyses(l))
            .map(|l| options.max_k(kind, l, config))
            .max()
            .unwrap_or(max_k);
        md.push_str(&format!(
            " {} k=1 | {} k={largest} |",
            kind.name().to_uppercase(),
            kind.name().to_uppercase()
        ));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(2 * options.kinds.len()));
    md.push('\n');
    for layer in 0..config.num_hidden_layers {
        md.push_str(&format!("| {layer} |"));
        for &kind in &options.kinds {
            // The second column is the layer's largest k: --max-refs unless capped there.
            for largest in [false, true] {
                let (m, _) = finite_mean(
                    rows.iter()
                        .filter(|r| r.kind == kind && r.layer == layer)
                        .filter(|r| r.k == if largest { r.max_k } else { 1 })
                        .map(|r| r.r2_heldout),
                );
                md.push_str(&format!(" {m:.4} |"));
            }
        }
        md.push('\n');
    }
    if options.candidates == Candidates::EarlierLayers {
        md.push_str(&format!(
            "\n## Where references come from (k={max_k}{})\n\n",
            if capped { ", or the layer's cap" } else { "" }
        ));
        md.push_str("Share of the chosen references that lie in an earlier layer than their target, and how many layers back they lie on average.\n\n| kind | earlier-layer share | mean layers back |\n|---|---|---|\n");
        for &kind in &options.kinds {
            let distances: Vec<f64> = rows
                .iter()
                .filter(|r| r.kind == kind && r.k == r.max_k)
                .flat_map(|r| {
                    r.reference_layers
                        .split(';')
                        .filter_map(|l| l.parse::<i64>().ok())
                        .map(|l| (r.layer - l) as f64)
                        .collect::<Vec<_>>()
                })
                .collect();
            let (back, _) = finite_mean(distances.iter().copied());
            let (share, _) =
                finite_mean(distances.iter().map(|&d| if d > 0.0 { 1.0 } else { 0.0 }));
            md.push_str(&format!(
                "| {} | {share:.4} | {back:.2} |\n",
                kind.name().to_uppercase()
            ));
        }
    }
    md
}

/// Reads an existing output folder's rows back (used by tests and later reports).
pub fn read_rows(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let mut reader = csv::Reader::from_path(dir.join("predictability.csv"))
        .with_context(|| format!("{}: no predictability.csv", dir.display()))?;
    reader
        .deserialize::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .context("predictability.csv")
}

/// One line per kind whose k is capped below `--max-refs` in some analysed layer.
fn k_cap_lines(options: &PredictabilityOptions, config: &ModelConfig) -> Vec<String> {
    let analysed = (0..config.num_hidden_layers)
        .filter(|&l| options.analyses(l))
        .count();
    let mut lines = Vec::new();
    for &kind in &options.kinds {
        let capped = options.capped_layers(kind, config);
        let Some(&(_, first_k)) = capped.first() else {
            continue;
        };
        let name = kind.name().to_uppercase();
        let heads = kind.heads(config);
        let where_capped = if capped.len() == analysed && capped.iter().all(|&(_, k)| k == first_k)
        {
            format!("k ≤ {first_k} in every layer")
        } else {
            capped
                .iter()
                .map(|(layer, k)| format!("k ≤ {k} in layer {layer}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(format!(
            "{name}: {where_capped} ({heads} {name} heads per layer)"
        ));
    }
    lines
}

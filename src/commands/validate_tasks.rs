//! `validate`'s tasks beside multiple choice: `gsm8k` (8-shot chain of thought, generated) and
//! `bpb` (bits per byte of held-out text) — what they read, one mode's run, their rows
//! (generations.csv, bpb.csv, gsm8k rows in accuracy.csv) and their report sections.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::cli::ValidateArgs;
use crate::commands::validate::{signed_or_dash, AccuracyRow, Mode};
use crate::config::ModelConfig;
use crate::data::corpora::{load_documents, TextSource};
use crate::data::gsm8k::{
    gsm8k_request_file, read_gsm8k_items, Gsm8kItem, GSM8K_TASK, GSM8K_VARIANT,
};
use crate::data::tasks::select_subset;
use crate::infer::bits_per_byte::{
    bits_per_byte, select_documents, separator_token, BpbOptions, TextDocument,
};
use crate::infer::generate::StopReason;
use crate::infer::gsm8k::{evaluate_gsm8k, Gsm8kOptions, Gsm8kRun};
use crate::model::resident::ResidentModel;
use crate::output::csv::write_csv;
use crate::output::digest::{hex, sha256_file};
use crate::printer::Printer;

/// The task name that runs bits per byte on --bpb-text.
pub const BPB_TASK: &str = "bpb";
/// GSM8K prompts generated as one left-padded batch (the 8-shot prompts have similar lengths; on
/// a CPU a decode step of 16 rows costs little more than one of 4).
const GSM8K_PROMPTS_PER_BATCH: usize = 16;
/// Default bits-per-byte window, capped by the model's positions.
const DEFAULT_BPB_WINDOW: usize = 1024;

/// What the gsm8k and bpb tasks read, fixed once for every mode.
pub struct ExtraTasks {
    gsm8k_items: Vec<Gsm8kItem>,
    max_new_tokens: Option<usize>,
    bpb: Option<BpbPlan>,
    manifest: ExtraManifest,
}

/// The tasks' provenance, flattened into validate's manifest.json.
#[derive(Clone, Default, Serialize)]
pub struct ExtraManifest {
    #[serde(skip_serializing_if = "Option::is_none")]
    gsm8k: Option<Gsm8kManifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bpb: Option<BpbManifest>,
}

#[derive(Clone, Serialize)]
struct Gsm8kManifest {
    variant: String,
    request_file: std::path::PathBuf,
    request_file_sha256: String,
    items_available: usize,
    items_used: usize,
    /// sha256 of the chosen doc ids, comma-separated in order.
    items_sha256: String,
    /// `--max-new-tokens` (None: the request file's `max_gen_toks`).
    max_new_tokens: Option<usize>,
    prompts_per_batch: usize,
}

#[derive(Clone, Serialize)]
struct BpbManifest {
    text: String,
    documents_available: usize,
    documents_used: usize,
    /// sha256 of the used documents' token ids (comma-separated, one line per document).
    documents_sha256: String,
    max_tokens: usize,
    seed: u64,
    window: usize,
    stride: usize,
    separator: i64,
}

struct BpbPlan {
    text: String,
    documents: Vec<TextDocument>,
    separator: i64,
    options: BpbOptions,
}

/// Rows of every mode's run.
#[derive(Default)]
pub struct ExtraResults {
    generations: Vec<GenerationRow>,
    gsm8k: Vec<Gsm8kSummary>,
    bpb: Vec<BpbRow>,
}

#[derive(Serialize)]
pub struct BpbRow {
    pub text: String,
    pub mode: String,
    pub documents: usize,
    pub bytes: u64,
    pub scored_tokens: u64,
    pub windows: usize,
    pub window: usize,
    pub stride: usize,
    pub separator: i64,
    /// Σ −log₂ p over the scored tokens.
    pub bits: f64,
    pub bits_per_byte: f64,
    /// Bits per byte minus the baseline's on the same text (0 for the baseline).
    pub delta_vs_baseline: f64,
    pub forward_tokens_per_second: f64,
}

#[derive(Serialize)]
pub struct GenerationRow {
    pub task: String,
    pub mode: String,
    pub doc_id: i64,
    pub gold: String,
    /// The last number of the output (empty when none).
    pub answer: String,
    pub correct: bool,
    pub prompt_tokens: usize,
    pub prompt_tokens_cut: usize,
    pub new_tokens: usize,
    pub stop_reason: String,
    pub output: String,
}

/// One mode's GSM8K run, for the report.
pub struct Gsm8kSummary {
    pub mode: String,
    pub items: u64,
    pub correct: u64,
    pub low_95: f64,
    pub high_95: f64,
    pub no_answer: usize,
    pub stopped_by_length: usize,
    pub mean_new_tokens: f64,
    pub seconds: f64,
    pub decode_tokens_per_second: f64,
}

impl ExtraTasks {
    /// Whether `task` is one of these (not a multiple-choice request file).
    /// The tasks `plan` handles, for listings.
    pub const NAMES: [&'static str; 2] = [GSM8K_TASK, BPB_TASK];

    pub fn handles(task: &str) -> bool {
        task == GSM8K_TASK || task == BPB_TASK
    }

    pub fn plan(args: &ValidateArgs, tokenizer: &Tokenizer, config: &ModelConfig) -> Result<Self> {
        let mut manifest = ExtraManifest::default();
        let gsm8k_items = if args.tasks.iter().any(|t| t == GSM8K_TASK) {
            let path = gsm8k_request_file();
            let all = read_gsm8k_items(&path).with_context(|| format!("--tasks {GSM8K_TASK}"))?;
            let available = all.len();
            let items = select_subset(all, args.limit, args.seed, GSM8K_TASK);
            let ids: Vec<String> = items.iter().map(|i| i.doc_id.to_string()).collect();
            manifest.gsm8k = Some(Gsm8kManifest {
                variant: GSM8K_VARIANT.into(),
                request_file_sha256: sha256_file(&path)?,
                request_file: path,
                items_available: available,
                items_used: items.len(),
                items_sha256: hex(&Sha256::digest(ids.join(",").as_bytes())),
                max_new_tokens: args.max_new_tokens,
                prompts_per_batch: GSM8K_PROMPTS_PER_BATCH,
            });
            items
        } else {
            Vec::new()
        };
        let bpb = if args.tasks.iter().any(|t| t == BPB_TASK) {
            let (plan, bpb_manifest) = plan_bits_per_byte(args, tokenizer, config)?;
            manifest.bpb = Some(bpb_manifest);
            Some(plan)
        } else {
            None
        };
        Ok(ExtraTasks {
            gsm8k_items,
            max_new_tokens: args.max_new_tokens,
            bpb,
            manifest,
        })
    }

    /// "gsm8k N items", "bpb N documents" for the opening note.
    pub fn describe(&self) -> Vec<String> {
        let gsm8k = (!self.gsm8k_items.is_empty())
            .then(|| format!("{GSM8K_TASK} {} items", self.gsm8k_items.len()));
        let bpb = self
            .bpb
            .as_ref()
            .map(|b| format!("{BPB_TASK} {} documents", b.documents.len()));
        gsm8k.into_iter().chain(bpb).collect()
    }

    pub fn manifest(&self) -> ExtraManifest {
        self.manifest.clone()
    }

    /// Runs the tasks under one mode; the gsm8k accuracy goes to `accuracy_rows` (Δ against the
    /// baseline row already there).
    pub fn run_mode(
        &self,
        model: &ResidentModel,
        tokenizer: &Tokenizer,
        mode: &Mode,
        printer: &Printer,
        accuracy_rows: &mut Vec<AccuracyRow>,
        results: &mut ExtraResults,
    ) -> Result<()> {
        if !self.gsm8k_items.is_empty() {
            let options = Gsm8kOptions {
                max_new_tokens: self.max_new_tokens,
                prompts_per_batch: GSM8K_PROMPTS_PER_BATCH,
            };
            let run = evaluate_gsm8k(
                model,
                tokenizer,
                &self.gsm8k_items,
                &options,
                mode.edit,
                mode.kv,
            )?;
            let summary = run.accuracy;
            // Paired against the baseline's answers to the same questions (none: this is it).
            let baseline_correct: std::collections::BTreeMap<i64, bool> = results
                .generations
                .iter()
                .filter(|g| g.mode == "baseline")
                .map(|g| (g.doc_id, g.correct))
                .collect();
            let paired = (mode.name != "baseline").then(|| {
                run.results
                    .iter()
                    .map(|r| {
                        let before = baseline_correct.get(&r.doc_id).copied();
                        (r.correct, before.unwrap_or(r.correct))
                    })
                    .collect()
            });
            printer.note(format!(
                "{GSM8K_TASK} {} exact_match: {:.4} [{:.4}, {:.4}] ({}/{}) in {:.0} s",
                mode.name,
                summary.accuracy,
                summary.low_95,
                summary.high_95,
                summary.correct,
                summary.items,
                run.seconds
            ));
            accuracy_rows.push(AccuracyRow::new(
                [GSM8K_TASK, GSM8K_VARIANT, &mode.name, "exact_match"],
                &summary,
                paired,
            ));
            results
                .generations
                .extend(generation_rows_of(&mode.name, &run));
            results.gsm8k.push(Gsm8kSummary::of(&mode.name, &run));
        }
        if let Some(plan) = &self.bpb {
            let result = bits_per_byte(
                model,
                &plan.documents,
                plan.separator,
                &plan.options,
                mode.edit,
                mode.kv,
            )?;
            let baseline = results
                .bpb
                .iter()
                .find(|r| r.mode == "baseline")
                .map_or(result.bits_per_byte, |r| r.bits_per_byte);
            printer.note(format!(
                "{BPB_TASK} {} {}: {:.4} bits per byte ({} tokens, {} bytes) in {:.0} s",
                plan.text,
                mode.name,
                result.bits_per_byte,
                result.scored_tokens,
                result.bytes,
                result.seconds
            ));
            results.bpb.push(BpbRow {
                text: plan.text.clone(),
                mode: mode.name.clone(),
                documents: result.documents,
                bytes: result.bytes,
                scored_tokens: result.scored_tokens,
                windows: result.windows,
                window: plan.options.window,
                stride: plan.options.stride,
                separator: plan.separator,
                bits: result.bits,
                bits_per_byte: result.bits_per_byte,
                delta_vs_baseline: if mode.name == "baseline" {
                    f64::NAN
                } else {
                    result.bits_per_byte - baseline
                },
                forward_tokens_per_second: result.forward_tokens as f64 / result.seconds.max(1e-9),
            });
        }
        Ok(())
    }
}

impl ExtraResults {
    /// generations.csv and bpb.csv, when those tasks ran.
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        if !self.generations.is_empty() {
            write_csv(&out_dir.join("generations.csv"), &self.generations)?;
        }
        if !self.bpb.is_empty() {
            write_csv(&out_dir.join("bpb.csv"), &self.bpb)?;
        }
        Ok(())
    }

    /// The report sections of the tasks that ran.
    pub fn markdown(&self) -> String {
        generation_markdown(&self.gsm8k) + &bpb_markdown(&self.bpb)
    }
}

impl Gsm8kSummary {
    fn of(mode: &str, run: &Gsm8kRun) -> Self {
        let results = &run.results;
        Gsm8kSummary {
            mode: mode.into(),
            items: run.accuracy.items,
            correct: run.accuracy.correct,
            low_95: run.accuracy.low_95,
            high_95: run.accuracy.high_95,
            no_answer: results.iter().filter(|r| r.answer.is_none()).count(),
            stopped_by_length: results
                .iter()
                .filter(|r| r.stop_reason == StopReason::Length)
                .count(),
            mean_new_tokens: results.iter().map(|r| r.new_tokens as f64).sum::<f64>()
                / results.len().max(1) as f64,
            seconds: run.seconds,
            decode_tokens_per_second: run.generation.decode_tokens as f64
                / run.generation.decode_seconds.max(1e-9),
        }
    }
}

fn plan_bits_per_byte(
    args: &ValidateArgs,
    tokenizer: &Tokenizer,
    config: &ModelConfig,
) -> Result<(BpbPlan, BpbManifest)> {
    let source = TextSource::parse(&args.bpb_text);
    let texts = load_documents(&source).with_context(|| format!("--bpb-text {}", args.bpb_text))?;
    let available = texts.len();
    let max_positions = config.max_position_embeddings.max(1) as usize;
    let window = args
        .bpb_window
        .unwrap_or(DEFAULT_BPB_WINDOW.min(max_positions));
    if window < 2 {
        bail!("--bpb-window must be at least 2, got {window}");
    }
    let stride = args.bpb_stride.unwrap_or(window / 2);
    if stride == 0 || stride >= window {
        bail!("--bpb-stride must be in 1..{window} (below --bpb-window), got {stride}");
    }
    if args.bpb_tokens == 0 {
        bail!("--bpb-tokens must be at least 1");
    }
    let documents = select_documents(texts, tokenizer, args.bpb_tokens, args.seed)?;
    let separator = separator_token(tokenizer, config)?;
    let lines: Vec<String> = documents
        .iter()
        .map(|d| {
            d.ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let manifest = BpbManifest {
        text: source.name(),
        documents_available: available,
        documents_used: documents.len(),
        documents_sha256: hex(&Sha256::digest(lines.join("\n").as_bytes())),
        max_tokens: args.bpb_tokens,
        seed: args.seed,
        window,
        stride,
        separator,
    };
    let plan = BpbPlan {
        text: source.name(),
        documents,
        separator,
        options: BpbOptions {
            window,
            stride,
            batch_tokens: args.batch_tokens,
        },
    };
    Ok((plan, manifest))
}

fn generation_rows_of<'a>(
    mode: &'a str,
    run: &'a Gsm8kRun,
) -> impl Iterator<Item = GenerationRow> + 'a {
    run.results.iter().map(move |r| GenerationRow {
        task: GSM8K_TASK.into(),
        mode: mode.into(),
        doc_id: r.doc_id,
        gold: r.gold.clone(),
        answer: r.answer.clone().unwrap_or_default(),
        correct: r.correct,
        prompt_tokens: r.prompt_tokens,
        prompt_tokens_cut: r.prompt_tokens_cut,
        new_tokens: r.new_tokens,
        stop_reason: format!("{:?}", r.stop_reason),
        output: r.output.clone(),
    })
}

/// The GSM8K section of the report (empty without gsm8k).
pub fn generation_markdown(summaries: &[Gsm8kSummary]) -> String {
    if summaries.is_empty() {
        return String::new();
    }
    let rows = summaries.iter().map(|s| {
        vec![
            s.mode.clone(),
            s.items.to_string(),
            s.correct.to_string(),
            format!("{:.4}", s.correct as f64 / s.items.max(1) as f64),
            format!("[{:.4}, {:.4}]", s.low_95, s.high_95),
            s.no_answer.to_string(),
            s.stopped_by_length.to_string(),
            format!("{:.1}", s.mean_new_tokens),
            format!("{:.0}", s.seconds),
            format!("{:.1}", s.decode_tokens_per_second),
        ]
    });
    format!(
        "\n## GSM8K (8-shot chain of thought, greedy)\n\nExact match of the last number in the output (per question in `generations.csv`).\n\n{}",
        markdown_table(
            &["mode", "items", "correct", "exact match", "95% interval", "no number", "hit the token limit", "mean new tokens", "wall s", "decode tokens/s"],
            rows
        )
    )
}

/// The bits-per-byte section of the report (empty without bpb).
pub fn bpb_markdown(rows: &[BpbRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cells = rows.iter().map(|r| {
        vec![
            r.text.clone(),
            r.mode.clone(),
            r.documents.to_string(),
            r.scored_tokens.to_string(),
            r.bytes.to_string(),
            r.window.to_string(),
            r.stride.to_string(),
            format!("{:.4}", r.bits_per_byte),
            signed_or_dash(r.delta_vs_baseline),
        ]
    });
    format!(
        "\n## Bits per byte on held-out text\n\nΣ −log₂ p over every text token ÷ UTF-8 bytes; documents joined by a separator token (context only), windows of `window` tokens every `stride`, each token scored once.\n\n{}",
        markdown_table(
            &["text", "mode", "documents", "tokens", "bytes", "window", "stride", "bits per byte", "Δ vs baseline"],
            cells
        )
    )
}

fn markdown_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut md = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md
}

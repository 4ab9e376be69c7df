//! GSM8K (8-shot chain of thought, generated) as an evaluation task: exact match per mode, paired
//! against the baseline's answers, with every generation kept for generations.csv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::data::gsm8k::{
    gsm8k_request_file, read_gsm8k_items, Gsm8kItem, GSM8K_TASK, GSM8K_VARIANT,
};
use crate::data::tasks::select_subset;
use crate::infer::accuracy_row::AccuracyRow;
use crate::infer::eval_task::{EvalTask, ModeRun, TaskManifest, TaskSummary};
use crate::infer::generate::StopReason;
use crate::infer::gsm8k::{evaluate_gsm8k, Gsm8kOptions, Gsm8kRun};
use crate::infer::mode::Mode;
use crate::model::resident::ResidentModel;
use crate::output::csv::write_csv;
use crate::output::digest::{hex, sha256_file};

/// GSM8K prompts generated as one left-padded batch (the 8-shot prompts have similar lengths; on
/// a CPU a decode step of 16 rows costs little more than one of 4).
const GSM8K_PROMPTS_PER_BATCH: usize = 16;

#[derive(Clone, Serialize)]
pub struct Gsm8kManifest {
    variant: String,
    request_file: PathBuf,
    request_file_sha256: String,
    items_available: usize,
    items_used: usize,
    /// sha256 of the chosen doc ids, comma-separated in order.
    items_sha256: String,
    /// `--max-new-tokens` (None: the request file's `max_gen_toks`).
    max_new_tokens: Option<usize>,
    prompts_per_batch: usize,
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

pub struct Gsm8kTask {
    items: Vec<Gsm8kItem>,
    options: Gsm8kOptions,
    manifest: Gsm8kManifest,
    /// The baseline's answer to each question, once it has run.
    baseline_correct: BTreeMap<i64, bool>,
    generations: Vec<GenerationRow>,
    summaries: Vec<Gsm8kSummary>,
}

impl Gsm8kTask {
    /// Reads the request file and keeps a seed-stable subset of `limit` questions.
    pub fn load(limit: Option<usize>, seed: u64, max_new_tokens: Option<usize>) -> Result<Self> {
        let path = gsm8k_request_file();
        let all = read_gsm8k_items(&path)?;
        let available = all.len();
        let items = select_subset(all, limit, seed, GSM8K_TASK);
        let ids: Vec<String> = items.iter().map(|i| i.doc_id.to_string()).collect();
        let manifest = Gsm8kManifest {
            variant: GSM8K_VARIANT.into(),
            request_file_sha256: sha256_file(&path)?,
            request_file: path,
            items_available: available,
            items_used: items.len(),
            items_sha256: hex(&Sha256::digest(ids.join(",").as_bytes())),
            max_new_tokens,
            prompts_per_batch: GSM8K_PROMPTS_PER_BATCH,
        };
        Ok(Gsm8kTask {
            items,
            options: Gsm8kOptions {
                max_new_tokens,
                prompts_per_batch: GSM8K_PROMPTS_PER_BATCH,
            },
            manifest,
            baseline_correct: BTreeMap::new(),
            generations: Vec::new(),
            summaries: Vec::new(),
        })
    }
}

impl EvalTask for Gsm8kTask {
    fn name(&self) -> &str {
        GSM8K_TASK
    }

    fn describe(&self) -> String {
        format!("{GSM8K_TASK} {} items", self.items.len())
    }

    fn run(
        &mut self,
        model: &ResidentModel,
        tokenizer: &Tokenizer,
        mode: &Mode,
    ) -> Result<ModeRun> {
        let run = evaluate_gsm8k(
            model,
            tokenizer,
            &self.items,
            &self.options,
            mode.edit,
            mode.kv,
        )?;
        let summary = &run.accuracy;
        if mode.is_baseline() {
            self.baseline_correct = run.results.iter().map(|r| (r.doc_id, r.correct)).collect();
        }
        // Paired against the baseline's answers to the same questions (none: this is it).
        let paired = (!mode.is_baseline()).then(|| {
            run.results
                .iter()
                .map(|r| {
                    let before = self.baseline_correct.get(&r.doc_id).copied();
                    (r.correct, before.unwrap_or(r.correct))
                })
                .collect()
        });
        let note = format!(
            "{GSM8K_TASK} {} exact_match: {:.4} [{:.4}, {:.4}] ({}/{}) in {:.0} s",
            mode.name(),
            summary.accuracy,
            summary.low_95,
            summary.high_95,
            summary.correct,
            summary.items,
            run.seconds
        );
        let accuracy = AccuracyRow::new(
            [GSM8K_TASK, GSM8K_VARIANT, mode.name(), "exact_match"],
            summary,
            paired,
        );
        self.generations
            .extend(generation_rows_of(mode.name(), &run));
        self.summaries.push(Gsm8kSummary::of(mode.name(), &run));
        Ok(ModeRun {
            accuracy: vec![accuracy],
            sequence_lengths: run
                .results
                .iter()
                .map(|r| (r.prompt_tokens + r.new_tokens) as i64)
                .collect(),
            notes: vec![note],
            ..ModeRun::default()
        })
    }

    fn write_rows(&self, out_dir: &Path) -> Result<()> {
        write_csv(&out_dir.join("generations.csv"), &self.generations)
    }

    fn summary(&self) -> TaskSummary<'_> {
        TaskSummary::Gsm8k(&self.summaries)
    }

    fn manifest_entry(&self) -> TaskManifest {
        TaskManifest::Gsm8k(self.manifest.clone())
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

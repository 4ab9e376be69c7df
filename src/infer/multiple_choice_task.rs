//! A multiple-choice task (ARC, HellaSwag, PIQA, … from an OLMo request file) as an evaluation
//! task: every item scored under each mode, accuracy per metric paired against the baseline.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::data::tasks::{eval_request_file, read_mc_items, select_items, McItem};
use crate::infer::accuracy_row::AccuracyRow;
use crate::infer::eval_task::{EvalTask, ModeRun, TaskManifest, TaskSummary};
use crate::infer::harness::{accuracy, score_items, ItemScore, Metric};
use crate::infer::mode::Mode;
use crate::model::resident::ResidentModel;
use crate::output::digest::{hex, sha256_file};

#[derive(Serialize)]
pub struct ChoiceRow {
    pub task: String,
    pub variant: String,
    pub mode: String,
    pub doc_id: i64,
    pub choice: usize,
    pub gold: usize,
    pub loglik: f64,
    pub continuation_tokens: usize,
    pub continuation_chars: usize,
}

/// Which request file and which of its items, for manifest.json.
#[derive(Serialize)]
pub struct MultipleChoiceManifest {
    task: String,
    variant: String,
    request_file: PathBuf,
    request_file_sha256: String,
    items_available: usize,
    items_used: usize,
    /// sha256 of the chosen doc ids, comma-separated in order.
    items_sha256: String,
}

pub struct MultipleChoiceTask {
    task: String,
    variant: String,
    items: Vec<McItem>,
    batch_tokens: usize,
    /// The baseline's scores, once it has run: later modes are paired against them.
    baseline: Option<Vec<ItemScore>>,
    request_file: PathBuf,
    request_file_sha256: String,
    items_available: usize,
}

impl MultipleChoiceTask {
    /// Reads the task's request file and keeps a seed-stable subset of `limit` items.
    pub fn load(
        task: &str,
        variant: &str,
        limit: Option<usize>,
        seed: u64,
        batch_tokens: usize,
    ) -> Result<Self> {
        let request_file = eval_request_file(task, variant);
        let all = read_mc_items(&request_file)?;
        let items_available = all.len();
        Ok(MultipleChoiceTask {
            task: task.into(),
            variant: variant.into(),
            items: select_items(all, limit, seed),
            batch_tokens,
            baseline: None,
            request_file_sha256: sha256_file(&request_file)?,
            request_file,
            items_available,
        })
    }

    pub fn items(&self) -> &[McItem] {
        &self.items
    }
}

impl EvalTask for MultipleChoiceTask {
    fn name(&self) -> &str {
        &self.task
    }

    fn describe(&self) -> String {
        format!("{} {} items", self.task, self.items.len())
    }

    fn variant(&self) -> Option<&str> {
        Some(&self.variant)
    }

    fn run(
        &mut self,
        model: &ResidentModel,
        tokenizer: &Tokenizer,
        mode: &Mode,
    ) -> Result<ModeRun> {
        let (scores, stats) = score_items(
            model,
            tokenizer,
            &self.items,
            self.batch_tokens,
            mode.edit,
            mode.kv,
        )?;
        let baseline = self.baseline.get_or_insert_with(|| scores.clone());
        let mut run = ModeRun {
            scoring_tokens: stats.tokens,
            scoring_seconds: stats.seconds,
            sequence_lengths: stats.sequence_lengths,
            ..ModeRun::default()
        };
        for metric in Metric::ALL {
            let summary = accuracy(&scores, metric);
            run.notes.push(format!(
                "{} {} {}: {:.4} [{:.4}, {:.4}] ({}/{})",
                self.task,
                mode.name(),
                metric.name(),
                summary.accuracy,
                summary.low_95,
                summary.high_95,
                summary.correct,
                summary.items
            ));
            let paired = (!mode.is_baseline()).then(|| {
                scores
                    .iter()
                    .zip(baseline.iter())
                    .map(|(now, before)| (now.correct(metric), before.correct(metric)))
                    .collect()
            });
            run.accuracy.push(AccuracyRow::new(
                [&self.task, &self.variant, mode.name(), metric.name()],
                &summary,
                paired,
            ));
        }
        run.choices = choice_rows_of(&self.task, &self.variant, mode.name(), &scores);
        Ok(run)
    }

    fn summary(&self) -> TaskSummary<'_> {
        TaskSummary::AccuracyOnly
    }

    fn manifest_entry(&self) -> TaskManifest {
        let ids: Vec<String> = self.items.iter().map(|i| i.doc_id.to_string()).collect();
        TaskManifest::MultipleChoice(MultipleChoiceManifest {
            task: self.task.clone(),
            variant: self.variant.clone(),
            request_file: self.request_file.clone(),
            request_file_sha256: self.request_file_sha256.clone(),
            items_available: self.items_available,
            items_used: self.items.len(),
            items_sha256: hex(&Sha256::digest(ids.join(",").as_bytes())),
        })
    }
}

fn choice_rows_of(task: &str, variant: &str, mode: &str, scores: &[ItemScore]) -> Vec<ChoiceRow> {
    scores
        .iter()
        .flat_map(|item| {
            item.choices
                .iter()
                .enumerate()
                .map(move |(choice, c)| ChoiceRow {
                    task: task.into(),
                    variant: variant.into(),
                    mode: mode.into(),
                    doc_id: item.doc_id,
                    choice,
                    gold: item.gold,
                    loglik: c.loglik,
                    continuation_tokens: c.continuation_tokens,
                    continuation_chars: c.continuation_chars,
                })
        })
        .collect()
}

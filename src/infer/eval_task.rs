//! An evaluation task `validate` runs under every mode: multiple choice, GSM8K or bits per byte.
//! The command loops tasks × modes; each task keeps its own per-mode results and pairs later modes
//! against its baseline run.

use std::path::Path;

use anyhow::Result;
use tokenizers::Tokenizer;

use crate::infer::accuracy_row::AccuracyRow;
use crate::infer::bpb_task::{BpbManifest, BpbRow};
use crate::infer::gsm8k_task::{Gsm8kManifest, Gsm8kSummary};
use crate::infer::mode::Mode;
use crate::infer::multiple_choice_task::{ChoiceRow, MultipleChoiceManifest};
use crate::model::resident::ResidentModel;

/// What one task's run under one mode adds to the files every task shares, in run order.
#[derive(Default)]
pub struct ModeRun {
    /// accuracy.csv rows.
    pub accuracy: Vec<AccuracyRow>,
    /// choices.csv rows (multiple choice only).
    pub choices: Vec<ChoiceRow>,
    /// Scoring forwards counted in speed.csv (multiple choice only).
    pub scoring_tokens: i64,
    pub scoring_seconds: f64,
    /// Tokens of every sequence the task ran (what a KV cache held for each), for the KV bytes
    /// per token a mode used on this task.
    pub sequence_lengths: Vec<i64>,
    /// Lines for the person watching (accuracy as it comes).
    pub notes: Vec<String>,
}

/// A task's provenance for manifest.json.
pub enum TaskManifest {
    MultipleChoice(MultipleChoiceManifest),
    Gsm8k(Gsm8kManifest),
    Bpb(BpbManifest),
}

/// A task's own report section rows (multiple choice has none beyond accuracy.csv).
pub enum TaskSummary<'a> {
    AccuracyOnly,
    Gsm8k(&'a [Gsm8kSummary]),
    Bpb(&'a [BpbRow]),
}

pub trait EvalTask {
    /// The task's name (`arc_easy`, `gsm8k`, `bpb`), for progress.
    fn name(&self) -> &str;
    /// "arc_easy 100 items", for the opening note.
    fn describe(&self) -> String;
    /// The request-file variant, for tasks read from OLMo request files.
    fn variant(&self) -> Option<&str> {
        None
    }
    /// Runs the task under `mode`; the baseline must run first.
    fn run(&mut self, model: &ResidentModel, tokenizer: &Tokenizer, mode: &Mode)
        -> Result<ModeRun>;
    /// The task's own CSV files (generations.csv, bpb.csv), once every mode has run.
    fn write_rows(&self, _out_dir: &Path) -> Result<()> {
        Ok(())
    }
    fn summary(&self) -> TaskSummary<'_>;
    fn manifest_entry(&self) -> TaskManifest;
}

/// The opening note's task list: the multiple-choice tasks with their variant, then the others.
pub fn describe_tasks(tasks: &[Box<dyn EvalTask>]) -> String {
    let (with_variant, others): (Vec<_>, Vec<_>) =
        tasks.iter().partition(|t| t.variant().is_some());
    let multiple_choice = with_variant
        .first()
        .and_then(|t| t.variant())
        .map(|variant| {
            let names: Vec<String> = with_variant.iter().map(|t| t.describe()).collect();
            format!("{} ({variant})", names.join(", "))
        });
    multiple_choice
        .into_iter()
        .chain(others.iter().map(|t| t.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

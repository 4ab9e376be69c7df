//! The ACT head-list file `act-search` writes and `validate --act` reads (`heads`, `beta`, `tau`
//! for `edit::act::Act::from_file`), with every candidate's scores and the calibration set's
//! provenance.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::ModelConfig;
use crate::data::calibration::CalibrationTask;
use crate::infer::act_search::CalibrationScore;
use crate::output::manifest::ToolVersion;
use crate::source::Provenance;

/// One (layer, head) tried.
#[derive(Serialize)]
pub struct Candidate {
    pub layer: i64,
    pub head: i64,
    pub accepted: bool,
    /// Calibration requests (item choices) in which this head has a sink.
    pub requests_changed: usize,
    #[serde(flatten)]
    pub score: CalibrationScore,
    pub delta_acc: f64,
    pub delta_mean_gold_loglik: f64,
    pub delta_mean_gold_choice_logprob: f64,
}

#[derive(Serialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Serialize)]
pub struct Calibration<'a> {
    pub tasks: &'a [CalibrationTask],
    pub items: usize,
    pub requests: usize,
    pub tokens: i64,
    /// sha256 of `task:doc_id` of every item, comma-separated in order.
    pub item_ids_sha256: &'a str,
    pub seed: u64,
    /// Few-shot examples in the prompts (the train files' 5-shot contexts are cut to zero-shot).
    pub shots: u32,
}

/// The head-list file: `heads`, `beta`, `tau` are what `edit::act::Act::from_file` reads.
#[derive(Serialize)]
pub struct HeadList<'a> {
    pub heads: BTreeMap<String, Vec<i64>>,
    pub beta: f64,
    pub tau: f64,
    pub criterion: &'static str,
    pub task_family: &'static str,
    pub source: &'a Provenance,
    pub source_files: Vec<SourceFile>,
    pub config: &'a ModelConfig,
    pub tokenizer: String,
    pub layers_searched: Vec<i64>,
    pub calibration: Calibration<'a>,
    pub baseline: CalibrationScore,
    pub candidates: Vec<Candidate>,
    pub tool: ToolVersion,
    pub device: String,
    pub batch_tokens: usize,
    pub seconds: f64,
}

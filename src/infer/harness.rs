//! Log-likelihood multiple choice ("ranked classification", as OLMo's in-loop evaluation): each
//! choice is scored by the summed log-probability of its continuation tokens given the context.
//!
//! Tokenisation follows OLMo's `OEEvalTask`: context and continuation are encoded separately
//! without special tokens and concatenated, so the continuation's tokens are exactly those of
//! `request.continuation` (with its leading space). `acc` picks the highest sum; `acc_per_char`
//! (OLMo's `len_norm`) divides by the continuation's length in characters *without* the leading
//! space (OLMo counts `len(continuation) − 1`; OLMES counts the space too).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::Serialize;
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::data::tasks::McItem;
use crate::data::tokenizer::{encode, encode_prompt};
use crate::infer::kv_variant::KvLayout;
use crate::model::attention_edit::AttentionEdit;
use crate::model::mask::Visibility;
use crate::model::resident::{ForwardState, ResidentModel};
use crate::stats::interval::{wilson_interval, Z_95};

/// How a choice is picked from the scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Highest summed log-likelihood.
    Acc,
    /// Highest log-likelihood per character of the continuation (OLMo's `len_norm`).
    AccPerChar,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::Acc, Metric::AccPerChar];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccPerChar => "acc_per_char",
        }
    }
}

/// One choice's score.
#[derive(Clone, Debug, PartialEq)]
pub struct ChoiceScore {
    /// Σ log p(continuation token | everything before it), natural log.
    pub loglik: f64,
    pub continuation_tokens: usize,
    /// Characters of the continuation without its leading space (at least 1).
    pub continuation_chars: usize,
}

#[derive(Clone, Debug)]
pub struct ItemScore {
    pub doc_id: i64,
    pub gold: usize,
    pub choices: Vec<ChoiceScore>,
}

impl ItemScore {
    /// The chosen index under `metric` (the first of equal scores).
    pub fn predicted(&self, metric: Metric) -> usize {
        let score = |c: &ChoiceScore| match metric {
            Metric::Acc => c.loglik,
            Metric::AccPerChar => c.loglik / c.continuation_chars as f64,
        };
        let mut best = 0;
        for (i, choice) in self.choices.iter().enumerate() {
            if score(choice) > score(&self.choices[best]) {
                best = i;
            }
        }
        best
    }

    pub fn correct(&self, metric: Metric) -> bool {
        self.predicted(metric) == self.gold
    }
}

/// Accuracy of a set of items under one metric, with its 95% Wilson interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Accuracy {
    pub correct: u64,
    pub items: u64,
    pub accuracy: f64,
    pub low_95: f64,
    pub high_95: f64,
}

impl Accuracy {
    /// `correct` of `items` with its Wilson interval (NaN accuracy when there are no items).
    pub fn from_counts(correct: u64, items: u64) -> Self {
        let (low_95, high_95) = wilson_interval(correct, items, Z_95);
        Accuracy {
            correct,
            items,
            accuracy: if items == 0 {
                f64::NAN
            } else {
                correct as f64 / items as f64
            },
            low_95,
            high_95,
        }
    }
}

pub fn accuracy(scores: &[ItemScore], metric: Metric) -> Accuracy {
    let correct = scores.iter().filter(|s| s.correct(metric)).count() as u64;
    Accuracy::from_counts(correct, scores.len() as u64)
}

/// Token counts and wall time of a scoring run.
#[derive(Clone, Debug, Default)]
pub struct ScoringStats {
    /// Real (unpadded) tokens run through the model.
    pub tokens: i64,
    pub seconds: f64,
    /// Tokens of every scored sequence as attention sees it (its prefix and itself), in group
    /// order: what a KV cache would hold for it.
    pub sequence_lengths: Vec<i64>,
}

/// One sequence to score: its token ids and the index of the first token whose log-probability is
/// wanted (at least 1: the first token has nothing to be predicted from).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringRequest {
    pub ids: Vec<i64>,
    pub first_target: usize,
}

/// One (item, choice) sequence to score: context then continuation tokens.
pub struct Request {
    pub item: usize,
    pub choice: usize,
    pub ids: Vec<i64>,
    /// Index in `ids` of the first continuation token.
    pub continuation_start: usize,
}

/// Scores every choice of every item. Choices of one item with the same context share it: the
/// context runs once and each continuation follows it in the same row, seeing the context and its
/// own earlier tokens only (see [`continuation_logprobs`]). Under an attention edit every choice
/// runs as its own sequence instead, because an edit that pools over queries (ACT's sink
/// statistic) would otherwise pool over the other choices' queries too.
pub fn score_items(
    model: &ResidentModel,
    tokenizer: &Tokenizer,
    items: &[McItem],
    batch_tokens: usize,
    edit: Option<&dyn AttentionEdit>,
    kv: Option<&KvLayout>,
) -> Result<(Vec<ItemScore>, ScoringStats)> {
    let (requests, mut scores) = requests_of(&model.config, tokenizer, items)?;
    let share = edit.is_none();
    // Groups and, per group, the request behind each branch.
    let mut groups: Vec<SharedPrefix> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut item_start = 0;
    for (index, request) in requests.iter().enumerate() {
        if index > 0 && requests[index - 1].item != request.item {
            item_start = groups.len();
        }
        let (prefix, continuation) = request.ids.split_at(request.continuation_start);
        let same_context = share
            .then(|| (item_start..groups.len()).find(|&g| groups[g].prefix == prefix))
            .flatten();
        match same_context {
            Some(g) => {
                groups[g].continuations.push(continuation.to_vec());
                members[g].push(index);
            }
            None => {
                groups.push(SharedPrefix {
                    prefix: prefix.to_vec(),
                    continuations: vec![continuation.to_vec()],
                });
                members.push(vec![index]);
            }
        }
    }
    let (logprobs, stats) = continuation_logprobs(model, &groups, batch_tokens, edit, kv)?;
    for (group, values) in members.iter().zip(logprobs) {
        for (&index, branch) in group.iter().zip(values) {
            let request = &requests[index];
            scores[request.item].choices[request.choice].loglik = branch.iter().sum();
        }
    }
    Ok((scores, stats))
}

/// Natural-log probabilities of each request's target tokens `ids[first_target..]`, each given
/// every token before it, in request order (see [`continuation_logprobs`]).
pub fn target_logprobs(
    model: &ResidentModel,
    requests: &[ScoringRequest],
    batch_tokens: usize,
    edit: Option<&dyn AttentionEdit>,
    kv: Option<&KvLayout>,
) -> Result<(Vec<Vec<f64>>, ScoringStats)> {
    if let Some((index, _)) = requests
        .iter()
        .enumerate()
        .find(|(_, r)| r.first_target == 0 || r.first_target >= r.ids.len())
    {
        bail!("scoring request {index}: the first target must be in 1..(number of tokens)");
    }
    let groups: Vec<SharedPrefix> = requests
        .iter()
        .map(|r| SharedPrefix {
            prefix: r.ids[..r.first_target].to_vec(),
            continuations: vec![r.ids[r.first_target..].to_vec()],
        })
        .collect();
    let (logprobs, stats) = continuation_logprobs(model, &groups, batch_tokens, edit, kv)?;
    Ok((
        logprobs
            .into_iter()
            .map(|mut g| g.pop().unwrap_or_default())
            .collect(),
        stats,
    ))
}

/// A prefix and the continuations scored after it. Each continuation is scored as if it alone
/// followed the prefix: it sees the prefix and its own earlier tokens, and its positions go on from
/// the prefix's end.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedPrefix {
    pub prefix: Vec<i64>,
    pub continuations: Vec<Vec<i64>>,
}

impl SharedPrefix {
    /// Tokens of the packed row: the prefix, then every continuation.
    fn packed_len(&self) -> usize {
        self.prefix.len() + self.continuations.iter().map(Vec::len).sum::<usize>()
    }
}

/// Natural-log probabilities of every continuation token of every group, `[group][continuation]
/// [token]`. Each group is one packed row (prefix, then its continuations back to back); rows are
/// sorted by length and batched (right-padded) so that a batch holds at most `batch_tokens` padded
/// positions. A row with several continuations gets a branched mask (each continuation sees the
/// prefix and itself, [`Visibility::branched`]), so the prefix runs once instead of once per
/// continuation, with the same log-probabilities as separate sequences up to rounding.
///
/// The LM head runs only on the positions that predict a target (the hidden states of the other
/// positions are dropped first), so the cost of the 49k-vocabulary head scales with the targets,
/// not the contexts.
pub fn continuation_logprobs(
    model: &ResidentModel,
    groups: &[SharedPrefix],
    batch_tokens: usize,
    edit: Option<&dyn AttentionEdit>,
    kv: Option<&KvLayout>,
) -> Result<(Vec<Vec<Vec<f64>>>, ScoringStats)> {
    if let Some((index, _)) = groups.iter().enumerate().find(|(_, g)| {
        g.prefix.is_empty()
            || g.continuations.is_empty()
            || g.continuations.iter().any(Vec::is_empty)
    }) {
        bail!("scoring group {index}: the prefix and every continuation need at least one token");
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(groups[i].packed_len()));

    let started = Instant::now();
    let mut stats = ScoringStats {
        sequence_lengths: groups
            .iter()
            .flat_map(|g| {
                g.continuations
                    .iter()
                    .map(|c| (g.prefix.len() + c.len()) as i64)
            })
            .collect(),
        ..ScoringStats::default()
    };
    let mut out = vec![Vec::new(); groups.len()];
    let device = model.options().device;
    let mut at = 0;
    while at < order.len() {
        let width = groups[order[at]].packed_len();
        let rows = (batch_tokens / width).max(1).min(order.len() - at);
        let batch = &order[at..at + rows];
        at += rows;
        let packed = PackedRows::new(batch.iter().map(|&i| &groups[i]), width);
        stats.tokens += packed.real_tokens;
        let shape = [rows as i64, width as i64];
        // With one continuation per row, right padding cannot reach a real token through a causal
        // mask, so the fused causal path is exact; branches need their mask, and an edit that pools
        // over queries (ACT) needs to know which queries are padding.
        let branched = batch.iter().any(|&i| groups[i].continuations.len() > 1);
        let visibility = (branched || edit.is_some()).then(|| {
            Visibility::branched(
                &Tensor::from_slice(&packed.segments)
                    .view(shape)
                    .to_device(device),
                &Tensor::from_slice(&packed.positions)
                    .view(shape)
                    .to_device(device),
            )
        });
        // A compressed cache makes attention read rebuilt target heads, as decoding would.
        let mut cache = kv.map(KvLayout::cache);
        let hidden = model.hidden_states(
            &Tensor::from_slice(&packed.ids).view(shape),
            &mut ForwardState {
                cache: cache.as_mut(),
                visibility: visibility.as_ref(),
                edit,
            },
        )?;
        let hidden_size = hidden.size()[2];
        let selected = hidden
            .reshape([-1, hidden_size])
            .index_select(0, &Tensor::from_slice(&packed.predicting).to_device(device));
        let picked = model
            .head(&selected)
            .log_softmax(-1, Kind::Float)
            .gather(
                1,
                &Tensor::from_slice(&packed.targets)
                    .to_device(device)
                    .unsqueeze(1),
                false,
            )
            .squeeze_dim(1)
            .to_kind(Kind::Double);
        let mut values = Vec::<f64>::try_from(picked.to_device(tch::Device::Cpu))?.into_iter();
        for &index in batch {
            out[index] = groups[index]
                .continuations
                .iter()
                .map(|c| values.by_ref().take(c.len()).collect())
                .collect();
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok((out, stats))
}

/// A batch of groups laid out as right-padded packed rows, flat over `[row, column]`.
struct PackedRows {
    ids: Vec<i64>,
    /// 0 for the prefix, `j + 1` for continuation `j`, −1 for padding.
    segments: Vec<i64>,
    /// RoPE position: the prefix counts from 0, each continuation from the prefix's end.
    positions: Vec<i64>,
    /// Flat index of the position whose output predicts each target, in group, continuation,
    /// token order: the prefix's last token for a continuation's first token.
    predicting: Vec<i64>,
    targets: Vec<i64>,
    real_tokens: i64,
}

impl PackedRows {
    fn new<'a>(groups: impl Iterator<Item = &'a SharedPrefix>, width: usize) -> Self {
        let mut rows = PackedRows {
            ids: Vec::new(),
            segments: Vec::new(),
            positions: Vec::new(),
            predicting: Vec::new(),
            targets: Vec::new(),
            real_tokens: 0,
        };
        for (row, group) in groups.enumerate() {
            let row_start = (row * width) as i64;
            let prefix_len = group.prefix.len() as i64;
            rows.ids.extend(&group.prefix);
            rows.segments
                .extend(std::iter::repeat_n(0, group.prefix.len()));
            rows.positions.extend(0..prefix_len);
            let mut column = prefix_len;
            for (j, continuation) in group.continuations.iter().enumerate() {
                let len = continuation.len() as i64;
                rows.ids.extend(continuation);
                rows.segments
                    .extend(std::iter::repeat_n(j as i64 + 1, continuation.len()));
                rows.positions.extend(prefix_len..prefix_len + len);
                rows.predicting.push(row_start + prefix_len - 1);
                rows.predicting
                    .extend((column..column + len - 1).map(|c| row_start + c));
                rows.targets.extend(continuation);
                column += len;
            }
            let pad = width - column as usize;
            rows.ids.extend(std::iter::repeat_n(0, pad));
            rows.segments.extend(std::iter::repeat_n(-1, pad));
            rows.positions.extend(std::iter::repeat_n(0, pad));
            rows.real_tokens += column;
        }
        rows
    }
}

/// Token rows right-padded with 0 to `width`, row after row, and which positions are real.
pub fn right_padded(rows: &[&[i64]], width: usize) -> (Vec<i64>, Vec<bool>) {
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut valid = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let pad = width - row.len();
        ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, pad)));
        valid.extend(std::iter::repeat_n(true, row.len()).chain(std::iter::repeat_n(false, pad)));
    }
    (ids, valid)
}

/// The tokenised requests of every choice of every item (in item, choice order), and the items'
/// score slots with log-likelihoods still NaN. Too-long sequences lose their oldest context tokens.
pub fn requests_of(
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    items: &[McItem],
) -> Result<(Vec<Request>, Vec<ItemScore>)> {
    let max_positions = config.max_position_embeddings.max(2) as usize;
    let mut requests = Vec::new();
    let mut scores: Vec<ItemScore> = Vec::with_capacity(items.len());
    for (item_index, item) in items.iter().enumerate() {
        let mut choices = Vec::with_capacity(item.choices.len());
        for (choice_index, choice) in item.choices.iter().enumerate() {
            // The context as the tokenizer call gives it: Gemma's `<bos>` first, as lm-eval adds it.
            let context = encode_prompt(tokenizer, &choice.context)?;
            let continuation = encode(tokenizer, &choice.continuation)?;
            if context.is_empty() || continuation.is_empty() {
                bail!(
                    "{} doc {} choice {choice_index}: the context or continuation encodes to no tokens",
                    item.task,
                    item.doc_id
                );
            }
            let mut ids = context;
            ids.extend(&continuation);
            if let Some(&id) = ids.iter().find(|&&id| id >= config.vocab_size) {
                bail!(
                    "{} doc {} choice {choice_index}: the tokenizer gives id {id}, outside the model's vocabulary of {}\nhint: pass the checkpoint's own tokenizer with --tokenizer",
                    item.task,
                    item.doc_id,
                    config.vocab_size
                );
            }
            // Too long for the model: drop the oldest context tokens, as OLMo does.
            let cut = ids.len().saturating_sub(max_positions);
            if cut >= ids.len() - continuation.len() {
                bail!(
                    "{} doc {} choice {choice_index}: the continuation alone ({} tokens) exceeds the model's {max_positions} positions",
                    item.task,
                    item.doc_id,
                    continuation.len()
                );
            }
            let ids = ids[cut..].to_vec();
            requests.push(Request {
                item: item_index,
                choice: choice_index,
                continuation_start: ids.len() - continuation.len(),
                ids,
            });
            choices.push(ChoiceScore {
                loglik: f64::NAN,
                continuation_tokens: continuation.len(),
                continuation_chars: choice.continuation.chars().count().saturating_sub(1).max(1),
            });
        }
        scores.push(ItemScore {
            doc_id: item.doc_id,
            gold: item.gold,
            choices,
        });
    }
    Ok((requests, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(logliks: &[(f64, usize)], gold: usize) -> ItemScore {
        ItemScore {
            doc_id: 0,
            gold,
            choices: logliks
                .iter()
                .map(|&(loglik, continuation_chars)| ChoiceScore {
                    loglik,
                    continuation_tokens: 1,
                    continuation_chars,
                })
                .collect(),
        }
    }

    #[test]
    fn per_character_normalisation_can_change_the_choice() {
        // Sums: choice 0 wins; per character: −6/12 = −0.5 beats −2/3.
        let scored = item(&[(-2.0, 3), (-6.0, 12)], 1);
        assert_eq!(scored.predicted(Metric::Acc), 0);
        assert_eq!(scored.predicted(Metric::AccPerChar), 1);
        let summary = accuracy(&[scored, item(&[(-1.0, 1), (-3.0, 1)], 0)], Metric::Acc);
        assert_eq!((summary.correct, summary.items), (1, 2));
        assert!(summary.low_95 < 0.5 && summary.high_95 > 0.5);
    }
}

//! ACT head search (research/act.md §3.2): score calibration items with no edit, then with each
//! (layer, query head) calibrated alone.
//!
//! A head in layer l changes nothing below l, and nothing at all in a sequence where it has no sink
//! (the calibration is then the identity). So the residual stream entering each layer is computed
//! once for all calibration sequences and kept; a candidate at layer l re-runs only layers l..L, only
//! for the sequences where that head has a sink, and computes logits only at the positions that
//! predict continuation tokens. Every other score is the baseline's.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Serialize;
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

use crate::capture::{CapturePoint, CaptureSink, LayerCapture, NoCapture};
use crate::data::tasks::McItem;
use crate::edit::act::{sink_columns, Act, SinkThreshold};
use crate::infer::harness::{requests_of, right_padded, ItemScore, Metric, Request};
use crate::model::attention::{AttentionStep, CaptureContext};
use crate::model::attention_edit::AttentionEdit;
use crate::model::mask::Visibility;
use crate::model::resident::ResidentModel;
use crate::model::rope::ModelRope;

/// What the search tries.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub beta: f64,
    pub threshold: SinkThreshold,
    /// Layers whose query heads are each tried alone.
    pub layers: Vec<i64>,
    /// Padded tokens per batch.
    pub batch_tokens: usize,
}

/// The calibration items' scores with one head calibrated.
pub struct HeadScores {
    pub layer: i64,
    pub head: i64,
    pub scores: Vec<ItemScore>,
    /// Requests (item choices) in which the head has a sink, so calibrating it changes the output.
    pub requests_changed: usize,
}

pub struct SearchScores {
    pub baseline: Vec<ItemScore>,
    pub heads: Vec<HeadScores>,
    pub requests: usize,
    /// Real (unpadded) tokens of all requests.
    pub tokens: i64,
}

/// One right-padded batch of requests and the residual stream entering the current layer.
struct Batch {
    /// Indices into the (length-sorted) requests, one per row.
    requests: Vec<usize>,
    visibility: Visibility,
    /// `[rows, width, hidden]`.
    residual: Tensor,
}

/// Scores `items` with no edit and with each head of `options.layers` calibrated alone.
/// `progress` receives one line per layer.
pub fn search_heads(
    model: &ResidentModel,
    tokenizer: &Tokenizer,
    items: &[McItem],
    options: &SearchOptions,
    progress: &mut dyn FnMut(String),
) -> Result<SearchScores> {
    let _no_grad = tch::no_grad_guard();
    if options.batch_tokens == 0 {
        bail!("--batch-tokens must be at least 1");
    }
    let mut layers = options.layers.clone();
    layers.sort_unstable();
    layers.dedup();
    let config = &model.config;
    // Every candidate must be a valid ACT edit; checking them all first fails before any work.
    Act::new(
        layers
            .iter()
            .map(|&l| (l, (0..config.num_attention_heads).collect()))
            .collect(),
        options.beta,
        options.threshold,
        config,
    )?;
    let (mut requests, template) = requests_of(config, tokenizer, items)?;
    requests.sort_by_key(|r| std::cmp::Reverse(r.ids.len()));
    let device = model.options().device;
    let width = requests.first().map_or(1, |r| r.ids.len()) as i64;
    let rope = ModelRope::for_config(config, width, device);
    let mut batches = make_batches(model, &requests, options.batch_tokens);
    let tokens = requests.iter().map(|r| r.ids.len() as i64).sum();

    let mut at = 0;
    let advance = |batches: &mut Vec<Batch>, layer: usize| -> Result<()> {
        for batch in batches.iter_mut() {
            batch.residual = run_layers(
                model,
                &rope,
                &batch.residual,
                &batch.visibility,
                layer..layer + 1,
                None,
            )?;
        }
        Ok(())
    };
    let first = layers.first().map_or(0, |&l| l as usize);
    while at < first {
        advance(&mut batches, at)?;
        at += 1;
    }
    let mut baseline = template.clone();
    for batch in &batches {
        let rows: Vec<&Request> = batch.requests.iter().map(|&i| &requests[i]).collect();
        let hidden = run_layers(
            model,
            &rope,
            &batch.residual,
            &batch.visibility,
            at..model.layers.len(),
            None,
        )?;
        record(
            &mut baseline,
            &rows,
            &continuation_logliks(model, &hidden, &rows)?,
        );
    }

    let mut heads = Vec::new();
    for &layer in &layers {
        let started = std::time::Instant::now();
        while at < layer as usize {
            advance(&mut batches, at)?;
            at += 1;
        }
        // The layer's own forward gives the next residual and the probabilities sinks are found in.
        let mut next = Vec::with_capacity(batches.len());
        let mut has_sink = Vec::with_capacity(batches.len());
        for batch in &batches {
            let mut grab = AttentionGrab {
                layer,
                probabilities: None,
            };
            let mut ctx = CaptureContext {
                layer,
                batch_index: 0,
                sink: &mut grab,
            };
            let mut step = AttentionStep {
                rope: &rope,
                visibility: Some(&batch.visibility),
                cache: None,
                edit: None,
            };
            next.push(model.layers[at].forward(&batch.residual, &mut step, &mut ctx)?);
            let Some(p) = grab.probabilities else {
                bail!("layer {layer}: the forward returned no attention probabilities");
            };
            let sinks = sink_columns(
                &p.to_kind(Kind::Float),
                &batch.visibility,
                options.threshold,
            )
            .any_dim(-1, false)
            .squeeze_dim(-1); // [rows, heads]
            has_sink.push(Vec::<i64>::try_from(
                sinks
                    .to_kind(Kind::Int64)
                    .view([-1])
                    .to_device(tch::Device::Cpu),
            )?);
        }
        for head in 0..config.num_attention_heads {
            let act = Act::new(
                BTreeMap::from([(layer, vec![head])]),
                options.beta,
                options.threshold,
                config,
            )?;
            let mut scores = baseline.clone();
            let mut requests_changed = 0;
            for (batch, sinks) in batches.iter().zip(&has_sink) {
                let heads_per_row = config.num_attention_heads;
                let changed: Vec<i64> = (0..batch.requests.len() as i64)
                    .filter(|&row| sinks[(row * heads_per_row + head) as usize] != 0)
                    .collect();
                if changed.is_empty() {
                    continue;
                }
                requests_changed += changed.len();
                let index = Tensor::from_slice(&changed).to_device(device);
                let visibility = batch.visibility.rows(&index);
                let hidden = run_layers(
                    model,
                    &rope,
                    &batch.residual.index_select(0, &index),
                    &visibility,
                    at..model.layers.len(),
                    Some(&act),
                )?;
                let rows: Vec<&Request> = changed
                    .iter()
                    .map(|&row| &requests[batch.requests[row as usize]])
                    .collect();
                record(
                    &mut scores,
                    &rows,
                    &continuation_logliks(model, &hidden, &rows)?,
                );
            }
            heads.push(HeadScores {
                layer,
                head,
                scores,
                requests_changed,
            });
        }
        for (batch, residual) in batches.iter_mut().zip(next) {
            batch.residual = residual;
        }
        at += 1;
        let tried = &heads[heads.len() - config.num_attention_heads as usize..];
        progress(format!(
            "layer {layer}: {} heads in {:.1} s; sequences changed per head {}",
            tried.len(),
            started.elapsed().as_secs_f64(),
            tried
                .iter()
                .map(|h| h.requests_changed.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(SearchScores {
        baseline,
        heads,
        requests: requests.len(),
        tokens,
    })
}

/// Length-sorted requests cut into right-padded batches of at most `batch_tokens` padded positions
/// (at least one row), each with its embedded tokens as the residual entering layer 0.
fn make_batches(model: &ResidentModel, requests: &[Request], batch_tokens: usize) -> Vec<Batch> {
    let device = model.options().device;
    let mut batches = Vec::new();
    let mut at = 0;
    while at < requests.len() {
        let width = requests[at].ids.len();
        let rows = (batch_tokens / width).max(1).min(requests.len() - at);
        let rows_ids: Vec<&[i64]> = requests[at..at + rows]
            .iter()
            .map(|r| r.ids.as_slice())
            .collect();
        let (ids, valid) = right_padded(&rows_ids, width);
        let shape = [rows as i64, width as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        batches.push(Batch {
            requests: (at..at + rows).collect(),
            visibility: Visibility::causal(
                &Tensor::from_slice(&valid).view(shape).to_device(device),
                width as i64,
            ),
            residual: model.embed(&ids),
        });
        at += rows;
    }
    batches
}

/// Runs the residual stream `x` `[rows, width, hidden]` through `layers` with `edit`.
fn run_layers(
    model: &ResidentModel,
    rope: &ModelRope,
    x: &Tensor,
    visibility: &Visibility,
    layers: std::ops::Range<usize>,
    edit: Option<&dyn AttentionEdit>,
) -> Result<Tensor> {
    let mut sink = NoCapture;
    let mut x = x.shallow_clone();
    for index in layers {
        let mut ctx = CaptureContext {
            layer: index as i64,
            batch_index: 0,
            sink: &mut sink,
        };
        let mut step = AttentionStep {
            rope,
            visibility: Some(visibility),
            cache: None,
            edit,
        };
        x = model.layers[index].forward(&x, &mut step, &mut ctx)?;
    }
    Ok(x)
}

/// Σ log p(continuation token) per row of `hidden` `[rows, width, hidden]` (the last layer's
/// output), from logits at the positions that predict continuation tokens only.
fn continuation_logliks(
    model: &ResidentModel,
    hidden: &Tensor,
    rows: &[&Request],
) -> Result<Vec<f64>> {
    let (count, width, size) = hidden.size3()?;
    debug_assert_eq!(count as usize, rows.len());
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (row, request) in rows.iter().enumerate() {
        for at in request.continuation_start..request.ids.len() {
            positions.push(row as i64 * width + at as i64 - 1);
            targets.push(request.ids[at]);
        }
    }
    let device = hidden.device();
    let picked = hidden
        .reshape([count * width, size])
        .index_select(0, &Tensor::from_slice(&positions).to_device(device));
    let log_probabilities = model
        .norm
        .forward(&picked)
        .linear::<Tensor>(&model.lm_head, None)
        .to_kind(Kind::Float)
        .log_softmax(-1, Kind::Float);
    let values = Vec::<f64>::try_from(
        log_probabilities
            .gather(
                1,
                &Tensor::from_slice(&targets).to_device(device).unsqueeze(1),
                false,
            )
            .to_kind(Kind::Double)
            .view([-1])
            .to_device(tch::Device::Cpu),
    )?;
    let mut sums = Vec::with_capacity(rows.len());
    let mut at = 0;
    for request in rows {
        let n = request.ids.len() - request.continuation_start;
        sums.push(values[at..at + n].iter().sum());
        at += n;
    }
    Ok(sums)
}

fn record(scores: &mut [ItemScore], rows: &[&Request], logliks: &[f64]) {
    for (request, &loglik) in rows.iter().zip(logliks) {
        scores[request.item].choices[request.choice].loglik = loglik;
    }
}

/// Keeps the attention probabilities of one layer.
struct AttentionGrab {
    layer: i64,
    probabilities: Option<Tensor>,
}

impl CaptureSink for AttentionGrab {
    fn points(&self, layer: i64) -> Vec<CapturePoint> {
        if layer == self.layer {
            vec![CapturePoint::Rope]
        } else {
            Vec::new()
        }
    }
    fn wants_attention(&self, layer: i64) -> bool {
        layer == self.layer
    }
    fn capture(&mut self, capture: &LayerCapture) -> Result<()> {
        self.probabilities = capture.attention.map(Tensor::shallow_clone);
        Ok(())
    }
}

/// How well a set of scores does on the calibration items.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CalibrationScore {
    pub items: u64,
    /// Items the highest summed log-likelihood gets right (the accept criterion).
    pub acc_correct: u64,
    pub acc: f64,
    pub acc_per_char: f64,
    /// Mean over items of the gold choice's summed log-likelihood.
    pub mean_gold_loglik: f64,
    /// Mean over items of log softmax over the choices' log-likelihoods at the gold choice: the
    /// probability the model puts on the right answer among the offered ones (less noisy than acc).
    pub mean_gold_choice_logprob: f64,
}

pub fn calibration_score(scores: &[ItemScore]) -> CalibrationScore {
    let items = scores.len() as u64;
    let correct = |metric| scores.iter().filter(|s| s.correct(metric)).count() as u64;
    let mean =
        |f: &dyn Fn(&ItemScore) -> f64| scores.iter().map(f).sum::<f64>() / (items.max(1) as f64);
    let acc_correct = correct(Metric::Acc);
    CalibrationScore {
        items,
        acc_correct,
        acc: acc_correct as f64 / items.max(1) as f64,
        acc_per_char: correct(Metric::AccPerChar) as f64 / items.max(1) as f64,
        mean_gold_loglik: mean(&|s| s.choices[s.gold].loglik),
        mean_gold_choice_logprob: mean(&|s| {
            let top = s
                .choices
                .iter()
                .map(|c| c.loglik)
                .fold(f64::NEG_INFINITY, f64::max);
            let log_total = top
                + s.choices
                    .iter()
                    .map(|c| (c.loglik - top).exp())
                    .sum::<f64>()
                    .ln();
            s.choices[s.gold].loglik - log_total
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::harness::ChoiceScore;

    fn item(logliks: &[f64], gold: usize) -> ItemScore {
        ItemScore {
            doc_id: 0,
            gold,
            choices: logliks
                .iter()
                .map(|&loglik| ChoiceScore {
                    loglik,
                    continuation_tokens: 1,
                    continuation_chars: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn calibration_score_by_hand() {
        // Item 0: right, p(gold) = e^-1 / (e^-1 + e^-2). Item 1: wrong, p(gold) = e^-3 / (e^-3 + e^-1).
        let scores = [item(&[-1.0, -2.0], 0), item(&[-3.0, -1.0], 0)];
        let s = calibration_score(&scores);
        assert_eq!((s.items, s.acc_correct), (2, 1));
        assert_eq!(s.acc, 0.5);
        assert_eq!(s.mean_gold_loglik, -2.0);
        let p0 = (-1f64).exp() / ((-1f64).exp() + (-2f64).exp());
        let p1 = (-3f64).exp() / ((-3f64).exp() + (-1f64).exp());
        assert!((s.mean_gold_choice_logprob - (p0.ln() + p1.ln()) / 2.0).abs() < 1e-12);
    }
}

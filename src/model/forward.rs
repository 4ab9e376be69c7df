//! The layer-streamed forward pass: every token batch goes through layer l before layer l+1 is
//! read, so one layer's weights are in memory at a time and each is read once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use crate::capture::CaptureSink;
use crate::config::ModelConfig;
use crate::model::attention::{AttentionStep, CaptureContext};
use crate::model::hidden_store::HiddenStore;
use crate::model::layer::DecoderLayer;
use crate::model::rope::ModelRope;
use crate::model::weights::{load_norm, load_tensor, LoadOptions};
use crate::source::WeightSource;

/// What the forward returns per batch after the last layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputHead {
    /// Nothing: the forward runs only for its captures.
    None,
    /// f32 logits `[batch, seq, vocab]` for every position.
    Logits,
    /// f32 logits `[batch, vocab]` of the last position only.
    LastLogits,
}

/// How a forward pass runs (device, dtype, the hidden-state budget): the part of the resolved
/// settings that library code needs, passed down instead of the command's settings.
#[derive(Clone, Debug)]
pub struct ForwardSettings {
    pub load: LoadOptions,
    pub hidden_budget: HiddenBudget,
}

/// How much memory the residual stream of all batches may take before it spills to disk.
#[derive(Clone, Debug)]
pub struct HiddenBudget {
    pub bytes: u64,
    pub spill_dir: PathBuf,
}

impl Default for HiddenBudget {
    /// 4 GiB in memory, spilling to the system temp folder beyond that.
    fn default() -> Self {
        HiddenBudget {
            bytes: 4 << 30,
            spill_dir: std::env::temp_dir(),
        }
    }
}

/// Called after each layer with `(layer, num_layers)`, for progress bars.
pub type LayerProgress<'a> = &'a mut dyn FnMut(i64, i64);

/// Runs `batches` (each `[batch, seq]` int64 token ids) through the model, layer-major.
pub fn forward_streamed(
    source: &dyn WeightSource,
    batches: &[Tensor],
    sink: &mut dyn CaptureSink,
    options: &LoadOptions,
    head: OutputHead,
    hidden_budget: &HiddenBudget,
    progress: Option<LayerProgress>,
) -> Result<Vec<Tensor>> {
    let config = source.config().clone();
    check_token_ids(batches, &config)?;
    // One table per batch length: `dynamic` RoPE depends on it (each batch gets what
    // transformers computes for that batch alone); for the other variants a shorter table is a
    // prefix of a longer one, so the values are the same either way.
    let lengths: Vec<i64> = batches.iter().map(|b| b.size()[1].max(1)).collect();
    let ropes: BTreeMap<i64, ModelRope> = lengths
        .iter()
        .copied()
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .map(|len| (len, ModelRope::for_config(&config, len, options.device)))
        .collect();
    let _no_grad = tch::no_grad_guard();

    let embed = load_tensor(
        source,
        "model.embed_tokens.weight",
        &[config.vocab_size, config.hidden_size],
        options,
    )?;
    let embedded: Vec<Tensor> = batches
        .iter()
        .map(|ids| embed_tokens(&embed, &ids.to_device(options.device), &config))
        .collect();
    let mut hidden = HiddenStore::new(
        embedded,
        options.device,
        hidden_budget.bytes,
        &hidden_budget.spill_dir,
    )?;
    // Keep the embedding only when it doubles as the output head.
    let embed = config.tie_word_embeddings.then_some(embed);

    let mut progress = progress;
    let layers = match (head, sink.last_layer()) {
        (OutputHead::None, Some(last)) => (last + 1).clamp(0, config.num_hidden_layers),
        _ => config.num_hidden_layers,
    };
    for layer_index in 0..layers {
        let layer = DecoderLayer::load(source, layer_index, &config, options)?;
        for batch_index in 0..hidden.len() {
            let mut ctx = CaptureContext {
                layer: layer_index,
                batch_index,
                sink: &mut *sink,
            };
            let x = layer.forward(
                &hidden.get(batch_index),
                &mut AttentionStep::plain(&ropes[&lengths[batch_index]]),
                &mut ctx,
            )?;
            hidden.set(batch_index, x);
        }
        sink.finish_layer(layer_index)?;
        if let Some(p) = progress.as_mut() {
            p(layer_index + 1, layers);
        }
    }
    if head == OutputHead::None {
        return Ok(Vec::new());
    }
    let final_norm = load_norm(source, "model.norm", config.hidden_size, &config, options)?;
    let lm_head = match embed {
        Some(e) => e,
        None => load_tensor(
            source,
            "lm_head.weight",
            &[config.vocab_size, config.hidden_size],
            options,
        )?,
    };
    Ok((0..hidden.len())
        .map(|i| {
            let x = hidden.get(i);
            let x = match head {
                OutputHead::LastLogits => x.select(1, x.size()[1] - 1),
                _ => x.shallow_clone(),
            };
            final_norm
                .forward(&x)
                .linear::<Tensor>(&lm_head, None)
                .to_kind(Kind::Float)
        })
        .collect())
}

fn check_token_ids(batches: &[Tensor], config: &ModelConfig) -> Result<()> {
    for (i, ids) in batches.iter().enumerate() {
        if ids.dim() != 2 || ids.kind() != Kind::Int64 {
            bail!(
                "token batch {i}: expected a [batch, seq] int64 tensor, got {:?} {:?}",
                ids.size(),
                ids.kind()
            );
        }
        if ids.numel() == 0 {
            bail!("token batch {i} is empty");
        }
        let (lo, hi) = (i64::try_from(ids.min())?, i64::try_from(ids.max())?);
        if lo < 0 || hi >= config.vocab_size {
            bail!(
                "token batch {i}: token id {} is outside the vocabulary (0..{})",
                if lo < 0 { lo } else { hi },
                config.vocab_size
            );
        }
    }
    Ok(())
}

/// The token embedding `[batch, seq, hidden]` of `ids`, times √hidden_size where the family scales
/// it (Gemma: the factor is cast to the table's kind first, as transformers does, so bf16 runs
/// multiply by the rounded factor).
pub fn embed_tokens(table: &Tensor, ids: &Tensor, config: &ModelConfig) -> Tensor {
    let embedded = Tensor::embedding(table, ids, -1, false, false);
    if !config.architecture.scales_embedding() {
        return embedded;
    }
    let factor = Tensor::from((config.hidden_size as f32).sqrt())
        .to_kind(table.kind())
        .to_device(table.device());
    embedded * factor
}

//! One predictability measurement of a source: a layer-streamed forward pass over a token set that
//! feeds the same-layer or earlier-layers sink, and the rows it yields.

use std::time::Instant;

use anyhow::Result;

use crate::analysis::cross_layer::CrossLayerSink;
use crate::analysis::predictability::{
    Candidates, EdgeRow, PredictabilityOptions, PredictabilitySink, PredictionRow,
};
use crate::capture::activation_store::{ActivationStore, StorePlan};
use crate::capture::CaptureSink;
use crate::data::token_set::{Split, TokenSet};
use crate::model::forward::{forward_streamed, ForwardSettings, OutputHead};
use crate::printer::Printer;
use crate::source::WeightSource;

/// Tokens per forward batch: bounds activation memory, not results.
pub const TOKENS_PER_BATCH: usize = 8192;

/// Everything `predict` produced, before it is written.
pub struct PredictOutput {
    pub rows: Vec<PredictionRow>,
    pub edges: Vec<EdgeRow>,
    pub token_set: TokenSet,
    pub seconds: f64,
    /// Disk the earlier-layers activation store took (0 for same-layer).
    pub store_bytes: u64,
}

/// Runs the analysis on an open source with a ready token set; `on_layer(done, layers)` is called
/// as the layer-streamed forward finishes each layer.
pub fn run_predictability(
    source: &dyn WeightSource,
    token_set: TokenSet,
    options: &PredictabilityOptions,
    forward_settings: &ForwardSettings,
    printer: &Printer,
    on_layer: &mut dyn FnMut(i64, i64),
) -> Result<PredictOutput> {
    options.check(source.config())?;
    let config = source.config();
    let batches = token_set.batches(TOKENS_PER_BATCH);
    let splits: Vec<Split> = batches.iter().map(|(_, s)| *s).collect();
    let tokens: Vec<_> = batches.into_iter().map(|(t, _)| t).collect();
    let checkpoint = &source.provenance().spec;
    let start = Instant::now();
    let mut forward = |sink: &mut dyn CaptureSink| {
        forward_streamed(
            source,
            &tokens,
            sink,
            &forward_settings.load,
            OutputHead::None,
            &forward_settings.hidden_budget,
            Some(&mut *on_layer),
        )
    };
    let (rows, edges, store_bytes) = match options.candidates {
        Candidates::SameLayer => {
            let mut sink = PredictabilitySink::new(options.clone(), checkpoint, config, splits);
            forward(&mut sink)?;
            (sink.rows, sink.edges, 0)
        }
        Candidates::EarlierLayers => {
            // Every layer up to the deepest analysed is a source of some target.
            let layers = options.last_layer().unwrap_or(config.num_hidden_layers - 1) + 1;
            let plan = StorePlan {
                point: options.capture_point,
                layers,
                kinds: options
                    .kinds
                    .iter()
                    .map(|&k| (k, k.heads(config) * config.head_dim))
                    .collect(),
                batch_rows: tokens.iter().map(|t| t.numel() as i64).collect(),
                batch_splits: splits.clone(),
            };
            let spill_dir = &forward_settings.hidden_budget.spill_dir;
            printer.note(format!(
                "activation store for earlier-layers candidates: {} in {}",
                plan.describe(),
                spill_dir.display()
            ));
            let store_bytes = plan.bytes();
            let store = ActivationStore::create(plan, spill_dir, options.store_budget_bytes)?;
            let mut sink = CrossLayerSink::new(options.clone(), checkpoint, config, splits, store);
            forward(&mut sink)?;
            (sink.rows, sink.edges, store_bytes)
        }
    };
    Ok(PredictOutput {
        rows,
        edges,
        token_set,
        seconds: start.elapsed().as_secs_f64(),
        store_bytes,
    })
}

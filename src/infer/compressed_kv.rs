//! The compressed KV cache's modes: maps fitted once on calibration text, then one plan per
//! requested kind (K, V or both), each of which runs as its own mode.

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::token_set::TokenSetOptions;
use crate::infer::kv_calibration::{calibrate, plan, Calibration, CalibrationRecord};
use crate::infer::kv_variant::KvLayout;
use crate::infer::reference_heads::{CompressionOptions, CompressionPlan, KvMode, TargetRow};
use crate::model::forward::ForwardSettings;
use crate::model::head_map::KeySpace;
use crate::source::WeightSource;

/// The calibration text and how much of it the maps are fitted on.
pub struct CalibrationText {
    pub text: TextSource,
    pub token_set: TokenSetOptions,
}

pub struct CompressedKv {
    pub record: CalibrationRecord,
    pub options: CompressionOptions,
    /// One plan per requested kind, in request order, and the cache layout of each.
    pub plans: Vec<(KvMode, CompressionPlan)>,
    pub layouts: Vec<KvLayout>,
}

/// Runs the calibration text through `source`: the moments every fitted KV code (reference heads,
/// low rank) is planned from, keys taken in `key_space`.
pub fn calibrate_kv(
    source: &dyn WeightSource,
    tokenizer: &Tokenizer,
    calibration: &CalibrationText,
    key_space: KeySpace,
    forward: &ForwardSettings,
) -> Result<Calibration> {
    calibrate(
        source,
        tokenizer,
        &calibration.text,
        &calibration.token_set,
        key_space,
        &forward.load,
        &forward.hidden_budget,
    )
    .context("KV calibration (--kv-calibration-text)")
}

impl CompressedKv {
    /// Plans each of `modes` (`--kv-compress`) from the calibration moments.
    pub fn plan(
        calibration: &Calibration,
        options: CompressionOptions,
        modes: &[KvMode],
        config: &ModelConfig,
    ) -> Result<Self> {
        let plans = modes
            .iter()
            .map(|&mode| Ok((mode, plan(calibration, mode, config, &options)?)))
            .collect::<Result<Vec<_>>>()?;
        let layouts = plans.iter().map(|(_, p)| p.layout()).collect();
        Ok(CompressedKv {
            record: calibration.record.clone(),
            options,
            plans,
            layouts,
        })
    }

    /// kv_targets.csv: every rebuilt head of every plan.
    pub fn target_rows(&self) -> Vec<TargetRow> {
        self.plans
            .iter()
            .flat_map(|(_, plan)| plan.rows())
            .collect()
    }
}

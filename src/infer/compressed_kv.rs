//! The compressed KV cache's modes: maps fitted once on calibration text, then one plan per
//! requested kind (K, V or both), each of which runs as its own mode.

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::data::corpora::TextSource;
use crate::data::token_set::TokenSetOptions;
use crate::infer::kv_calibration::{calibrate, plan, CalibrationRecord};
use crate::infer::reference_heads::{CompressionOptions, CompressionPlan, KvMode, TargetRow};
use crate::model::forward::ForwardSettings;
use crate::source::WeightSource;

/// The calibration text and how much of it the maps are fitted on.
pub struct CalibrationText {
    pub text: TextSource,
    pub token_set: TokenSetOptions,
}

pub struct CompressedKv {
    pub record: CalibrationRecord,
    pub options: CompressionOptions,
    /// One plan per requested kind, in request order.
    pub plans: Vec<(KvMode, CompressionPlan)>,
}

impl CompressedKv {
    /// Fits the maps on `calibration` and plans each of `modes`.
    pub fn calibrate(
        source: &dyn WeightSource,
        tokenizer: &Tokenizer,
        calibration: &CalibrationText,
        options: CompressionOptions,
        modes: &[KvMode],
        config: &ModelConfig,
        forward: &ForwardSettings,
    ) -> Result<Self> {
        let calibration = calibrate(
            source,
            tokenizer,
            &calibration.text,
            &calibration.token_set,
            options.key_space,
            &forward.load,
            &forward.hidden_budget,
        )
        .context("--kv-compress calibration")?;
        let plans = modes
            .iter()
            .map(|&mode| Ok((mode, plan(&calibration, mode, config, &options)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(CompressedKv {
            record: calibration.record,
            options,
            plans,
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

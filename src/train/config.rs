//! Training-run configuration: the built-in `tiny` and `test` presets, or a TOML file whose fields
//! override `tiny`'s (unknown keys are refused, so a typo is an error, not a silent default).
//!
//! Optimizer defaults follow OLMo-2's released stage-1 config (`OLMo2-7B-stage1.yaml`): AdamW
//! β = (0.9, 0.95), ε = 1e-8, weight decay 0.1 except on the embedding (`decay_embeddings: false`;
//! norms *are* decayed, `decay_norm_and_bias: true`), global-norm clipping at 1.0, linear warm-up
//! then cosine decay to 10% of the peak (`alpha_f: 0.1`).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

use crate::config::rope_scaling::RopeScaling;
use crate::config::{Architecture, ModelConfig};

/// Everything that determines a training run's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Series name; the repo is `ckpt-scan/<name>`.
    pub name: String,
    /// Master seed: init (per tensor name) and batch order (per step) derive from it.
    pub seed: u64,
    /// Model width and depth (OLMo-2 block, untied head, no biases).
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub head_dim: i64,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Tokens per training sequence.
    pub seq_len: i64,
    /// Sequences per optimizer step.
    pub batch_size: i64,
    /// Optimizer steps in total.
    pub steps: u64,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// The cosine ends at this fraction of the peak learning rate.
    pub final_lr_fraction: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub max_grad_norm: f64,
    /// Most bytes of cleaned text taken from each corpus source (the BPE and the model see the same).
    pub corpus_bytes_per_source: u64,
    /// Percent of documents held out for the held-out loss.
    pub heldout_percent: u64,
    /// Held-out tokens the held-out loss is measured on (whole sequences of `seq_len`).
    pub heldout_tokens: i64,
    /// Held-out loss is also measured every this many steps (besides every checkpoint).
    pub eval_interval: u64,
    /// libtorch CPU threads; fixed so that repeated runs reduce in the same order.
    pub threads: i32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::tiny()
    }
}

impl TrainConfig {
    /// The default series: small enough to train on 2 idle CPU cores in about 10 minutes
    /// (0.25 s per update), with enough heads per layer (32 of width 8) that k = 5 reference heads
    /// span only 5·8/256 = 0.16 of the residual stream (issue 3 asks ≤ 0.31). 2000 updates of
    /// 8 × 128 tokens (2.0 M) stay under one epoch of the ~3 M-token corpus; 1000 updates ended
    /// at 60.6% of the step-0 held-out loss, short of the 60% the series is meant to reach.
    pub fn tiny() -> Self {
        TrainConfig {
            name: "olmo2-tiny".into(),
            seed: 0,
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 4,
            num_attention_heads: 32,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            seq_len: 128,
            batch_size: 8,
            steps: 2000,
            learning_rate: 4e-3,
            warmup_steps: 30,
            final_lr_fraction: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            corpus_bytes_per_source: 1_600_000,
            heldout_percent: 5,
            heldout_tokens: 4_096,
            eval_interval: 200,
            threads: 2,
        }
    }

    /// For the test suite: trains in seconds.
    pub fn test() -> Self {
        TrainConfig {
            name: "olmo2-test".into(),
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 8,
            head_dim: 8,
            seq_len: 32,
            batch_size: 4,
            steps: 20,
            learning_rate: 1e-2,
            warmup_steps: 4,
            corpus_bytes_per_source: 40_000,
            heldout_percent: 10,
            heldout_tokens: 1_024,
            eval_interval: 10,
            threads: 1,
            ..TrainConfig::tiny()
        }
    }

    /// `tiny`, `test`, or a TOML file overriding `tiny`'s fields.
    pub fn resolve(choice: &str) -> Result<Self> {
        let config = match choice {
            "tiny" => TrainConfig::tiny(),
            "test" => TrainConfig::test(),
            path => TrainConfig::from_file(Path::new(path))?,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "--config {}: {e}\nhint: use tiny, test, or a .toml file",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            let message = e.message().replace('\n', " ");
            let line = e
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1)
                .map_or(String::new(), |l| format!(" (line {l})"));
            anyhow!("--config {}: invalid TOML{line}: {message}", path.display())
        })
    }

    /// Checks the relations training relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("head_dim", self.head_dim),
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("heldout_tokens", self.heldout_tokens),
            ("threads", i64::from(self.threads)),
        ];
        for (name, value) in positive {
            if value <= 0 {
                bail!("training config: {name} must be positive, got {value}");
            }
        }
        if self.steps == 0 || self.eval_interval == 0 {
            bail!("training config: steps and eval_interval must be positive");
        }
        if self.vocab_size < 300 {
            bail!(
                "training config: vocab_size {} is below the 256 byte tokens plus specials and merges",
                self.vocab_size
            );
        }
        if !(1..=50).contains(&self.heldout_percent) {
            bail!(
                "training config: heldout_percent must be in 1..=50, got {}",
                self.heldout_percent
            );
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            bail!(
                "training config: name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                self.name
            );
        }
        let finite_positive = |x: f64| x.is_finite() && x > 0.0;
        if !finite_positive(self.learning_rate)
            || !finite_positive(self.rope_theta)
            || !finite_positive(self.rms_norm_eps)
            || !finite_positive(self.max_grad_norm)
        {
            bail!("training config: learning_rate, rope_theta, rms_norm_eps and max_grad_norm must be positive numbers");
        }
        self.model_config().validate(Path::new("training config"))?;
        Ok(())
    }

    /// The `Olmo2` model this config trains; `eos`/`pad` are the tokenizer's special tokens.
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Olmo2,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_attention_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: self.seq_len,
            sliding_window: None,
            rotary_dim: None,
            parallel_residual: false,
            query_pre_attn_scalar: None,
            tie_word_embeddings: false,
            pad_token_id: Some(crate::train::tokenizer::PAD_ID),
            bos_token_id: None,
            eos_token_id: Some(crate::train::tokenizer::EOS_ID),
        }
    }

    /// Tokens one optimizer step consumes.
    pub fn tokens_per_step(&self) -> u64 {
        (self.seq_len * self.batch_size) as u64
    }

    /// The Hub-style repo id of the series.
    pub fn repo_id(&self) -> String {
        format!("ckpt-scan/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_tiny_has_enough_heads() {
        TrainConfig::tiny().validate().unwrap();
        TrainConfig::test().validate().unwrap();
        let t = TrainConfig::tiny();
        // k·head_dim/hidden at k = 5 (issue 3).
        assert!(5.0 * t.head_dim as f64 / t.hidden_size as f64 <= 0.31);
        assert!(t.num_attention_heads >= 16);
    }

    #[test]
    fn toml_overrides_tiny_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "name = \"x\"\nsteps = 7\n").unwrap();
        let c = TrainConfig::resolve(path.to_str().unwrap()).unwrap();
        assert_eq!((c.name.as_str(), c.steps), ("x", 7));
        assert_eq!(c.hidden_size, TrainConfig::tiny().hidden_size);
        std::fs::write(&path, "stpes = 7\n").unwrap();
        let e = TrainConfig::resolve(path.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("stpes"), "{e}");
    }
}

//! `validate`'s flags resolved once: checked, defaults filled in, and split into the tasks and
//! modes the command runs. The one place validate's flag-naming errors come from.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tokenizers::Tokenizer;

use crate::cli::ValidateArgs;
use crate::config::ModelConfig;
use crate::data::corpora::{load_documents, TextSource};
use crate::data::gsm8k::GSM8K_TASK;
use crate::data::tasks::check_eval_task;
use crate::data::token_set::TokenSetOptions;
use crate::defaults::{DEFAULT_BPB_WINDOW, DEFAULT_FIT_FRACTION};
use crate::infer::bits_per_byte::BpbOptions;
use crate::infer::bpb_task::{BpbTask, BpbText, BPB_TASK};
use crate::infer::compressed_kv::CalibrationText;
use crate::infer::eval_task::EvalTask;
use crate::infer::gsm8k_task::Gsm8kTask;
use crate::infer::kv_spec::KvSpec;
use crate::infer::mode_speed::decode_prompts;
use crate::infer::multiple_choice_task::MultipleChoiceTask;
use crate::infer::reference_heads::{CompressionOptions, KvMode};
use crate::model::head_map::KeySpace;
use crate::output::atomic::check_output_dir;
use crate::output::default_out_dir;

/// The tasks validate knows beside the multiple-choice request files.
const OWN_TASKS: [&str; 2] = [GSM8K_TASK, BPB_TASK];

pub struct ValidateSettings {
    pub source: String,
    pub out_dir: PathBuf,
    pub tokenizer: Option<PathBuf>,
    /// Multiple-choice tasks, in the order given.
    pub multiple_choice: Vec<String>,
    pub variant: String,
    pub gsm8k: bool,
    pub bpb: Option<BpbSettings>,
    pub limit: Option<usize>,
    pub seed: u64,
    pub batch_tokens: usize,
    pub decode_tokens: usize,
    pub act: Option<PathBuf>,
    /// `--kv-compress`: reference heads, one mode per `--kv-mode`.
    pub compression: Option<CompressionSettings>,
    /// `--kv`, in the order given.
    pub kv_variants: Vec<KvSpec>,
    /// Reference-head options for `refs:` variants (their fraction comes from the spec).
    pub reference_options: CompressionOptions,
    pub calibration: CalibrationSettings,
    pub max_new_tokens: Option<usize>,
}

/// `--kv-compress` and the kinds it runs.
pub struct CompressionSettings {
    pub options: CompressionOptions,
    pub modes: Vec<KvMode>,
}

/// The calibration text the fitted KV codes (reference heads, low rank) are planned on.
pub struct CalibrationSettings {
    pub text: String,
    pub tokens: usize,
    pub seq_len: usize,
    pub key_space: KeySpace,
}

/// The `bpb` task's flags; window and stride resolve against the model's positions.
pub struct BpbSettings {
    pub text: String,
    pub tokens: usize,
    window: Option<usize>,
    stride: Option<usize>,
}

impl ValidateSettings {
    pub fn resolve(args: &ValidateArgs, seed: u64) -> Result<Self> {
        let out_dir = args
            .out
            .clone()
            .unwrap_or_else(|| default_out_dir("validate", &args.source));
        // Written only after the computation: a file or read-only folder in the way is found now.
        check_output_dir(&out_dir, "--out")?;
        if args.tasks.is_empty() {
            bail!("--tasks: name at least one task (e.g. arc_easy)");
        }
        if args.batch_tokens == 0 {
            bail!("--batch-tokens must be at least 1");
        }
        let multiple_choice: Vec<String> = args
            .tasks
            .iter()
            .filter(|t| !OWN_TASKS.contains(&t.as_str()))
            .cloned()
            .collect();
        for task in &multiple_choice {
            check_eval_task(task, &args.variant, &OWN_TASKS)?;
        }
        let reference_options = CompressionOptions {
            fraction: 0.0,
            min_refs: args.kv_min_refs,
            max_refs: args.kv_max_refs,
            key_space: args.kv_keys,
        };
        reference_options.check()?;
        let compression = match args.kv_compress {
            Some(fraction) => {
                let options = CompressionOptions {
                    fraction,
                    ..reference_options.clone()
                };
                options.check()?;
                Some(CompressionSettings {
                    options,
                    modes: args.kv_mode.clone(),
                })
            }
            None => None,
        };
        let kv_variants = KvSpec::parse_list(&args.kv)?;
        let bpb = args
            .tasks
            .iter()
            .any(|t| t == BPB_TASK)
            .then(|| BpbSettings {
                text: args.bpb_text.clone(),
                tokens: args.bpb_tokens,
                window: args.bpb_window,
                stride: args.bpb_stride,
            });
        Ok(ValidateSettings {
            source: args.source.clone(),
            out_dir,
            tokenizer: args.tokenizer.clone(),
            multiple_choice,
            variant: args.variant.clone(),
            gsm8k: args.tasks.iter().any(|t| t == GSM8K_TASK),
            bpb,
            limit: args.limit,
            seed,
            batch_tokens: args.batch_tokens,
            decode_tokens: args.decode_tokens,
            act: args.act.clone(),
            compression,
            kv_variants,
            reference_options,
            calibration: CalibrationSettings {
                text: args.kv_calibration_text.clone(),
                tokens: args.kv_calibration_tokens,
                seq_len: args.kv_calibration_seq_len,
                key_space: args.kv_keys,
            },
            max_new_tokens: args.max_new_tokens,
        })
    }
}

/// The tasks to run, loaded, and the prompts every mode's decode run generates from.
pub struct EvalTasks {
    /// In run order: the multiple-choice ones as given, then GSM8K, then bits per byte.
    pub tasks: Vec<Box<dyn EvalTask>>,
    /// The first multiple-choice task's first prompts (`None`: no decode run).
    pub decode_prompts: Option<Vec<Vec<i64>>>,
}

impl ValidateSettings {
    /// Reads every task's items or text; flag-naming errors for what the files hold come from here.
    pub fn load_tasks(&self, tokenizer: &Tokenizer, config: &ModelConfig) -> Result<EvalTasks> {
        let mut tasks: Vec<Box<dyn EvalTask>> = Vec::new();
        let mut prompts = None;
        for task in &self.multiple_choice {
            let loaded = MultipleChoiceTask::load(
                task,
                &self.variant,
                self.limit,
                self.seed,
                self.batch_tokens,
            )
            .with_context(|| format!("--tasks {task} --variant {}", self.variant))?;
            if prompts.is_none() && self.decode_tokens > 0 {
                prompts = Some(decode_prompts(tokenizer, loaded.items())?);
            }
            tasks.push(Box::new(loaded));
        }
        if self.gsm8k {
            let loaded = Gsm8kTask::load(self.limit, self.seed, self.max_new_tokens)
                .context("--tasks gsm8k")?;
            tasks.push(Box::new(loaded));
        }
        if let Some(bpb) = &self.bpb {
            let source = TextSource::parse(&bpb.text);
            let documents =
                load_documents(&source).with_context(|| format!("--bpb-text {}", bpb.text))?;
            let options = bpb.options(config.max_position_embeddings, self.batch_tokens)?;
            let text = BpbText {
                name: source.name(),
                documents,
                max_tokens: bpb.tokens,
                seed: self.seed,
            };
            tasks.push(Box::new(BpbTask::new(text, tokenizer, config, options)?));
        }
        Ok(EvalTasks {
            tasks,
            decode_prompts: prompts,
        })
    }
}

impl ValidateSettings {
    /// Whether some mode's KV code is fitted on calibration text.
    pub fn needs_calibration(&self) -> bool {
        self.compression.is_some() || self.kv_variants.iter().any(KvSpec::needs_calibration)
    }
}

impl CalibrationSettings {
    /// The calibration text and token set; `separator` is the model's EOS.
    pub fn text(&self, seed: u64, separator: Option<i64>) -> CalibrationText {
        CalibrationText {
            text: TextSource::parse(&self.text),
            token_set: TokenSetOptions {
                tokens: self.tokens,
                seq_len: self.seq_len,
                fit_fraction: DEFAULT_FIT_FRACTION,
                seed,
                separator,
            },
        }
    }
}

impl BpbSettings {
    /// Window (default min(1024, the model's positions)) and stride (default half the window),
    /// checked.
    pub fn options(&self, max_position_embeddings: i64, batch_tokens: usize) -> Result<BpbOptions> {
        let max_positions = max_position_embeddings.max(1) as usize;
        let window = self.window.unwrap_or(DEFAULT_BPB_WINDOW.min(max_positions));
        if window < 2 {
            bail!("--bpb-window must be at least 2, got {window}");
        }
        let stride = self.stride.unwrap_or(window / 2);
        if stride == 0 || stride >= window {
            bail!("--bpb-stride must be in 1..{window} (below --bpb-window), got {stride}");
        }
        if self.tokens == 0 {
            bail!("--bpb-tokens must be at least 1");
        }
        Ok(BpbOptions {
            window,
            stride,
            batch_tokens,
        })
    }
}

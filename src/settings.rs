//! Resolved settings: the CLI's choices checked and turned into what commands run with.

pub mod predict;
pub mod refs;
pub mod scan;
pub mod theory;
pub mod validate;

use anyhow::{bail, Result};
use tch::{Device, Kind};

use crate::cli::{DeviceArg, DtypeArg, GlobalArgs};
use crate::config::ModelConfig;
use crate::defaults::DEFAULT_SEED;
use crate::model::forward::{ForwardSettings, HiddenBudget};
use crate::model::weights::LoadOptions;
use crate::source::hub::HubSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    pub load: LoadOptions,
    pub hidden_budget: HiddenBudget,
    pub quiet: bool,
    /// Endpoint, token, cache and offline mode for `hf:` sources, from the environment.
    pub hub: HubSettings,
    /// `--seed`, when given (a series manifest's seed applies before the default).
    pub seed: Option<u64>,
}

impl Settings {
    /// The master seed every random choice of a command derives from.
    pub fn master_seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// What a forward pass needs of these settings.
    pub fn forward(&self) -> ForwardSettings {
        ForwardSettings {
            load: self.load,
            hidden_budget: self.hidden_budget.clone(),
        }
    }

    pub fn resolve(global: &GlobalArgs) -> Result<Self> {
        if let Some(threads) = global.threads {
            if threads < 1 {
                bail!("--threads must be at least 1, got {threads}");
            }
            tch::set_num_threads(threads);
        }
        let device = resolve_device(global.device)?;
        let kind = match (global.dtype, device) {
            (DtypeArg::F32, _) | (DtypeArg::Auto, Device::Cpu) => Kind::Float,
            (DtypeArg::Bf16, _) | (DtypeArg::Auto, _) => Kind::BFloat16,
        };
        if global.hidden_budget_gb.is_nan() || global.hidden_budget_gb < 0.0 {
            bail!(
                "--hidden-budget-gb must be a non-negative number, got {}",
                global.hidden_budget_gb
            );
        }
        let hidden_budget = HiddenBudget {
            bytes: (global.hidden_budget_gb * (1u64 << 30) as f64) as u64,
            ..HiddenBudget::default()
        };
        let mut hub = HubSettings::from_env();
        hub.quiet = global.quiet;
        if let Some(dir) = &global.hub_cache {
            if !dir.is_dir() {
                bail!("--hub-cache {}: not a folder", dir.display());
            }
            hub.cache_dir = dir.clone();
            hub.offline = true;
        }
        Ok(Settings {
            hidden_budget,
            load: LoadOptions {
                device,
                kind,
                allow_nan: global.allow_nan,
            },
            quiet: global.quiet,
            hub,
            seed: global.seed,
        })
    }
}

/// Refuses a `--seq-len` longer than the model's positions; `other_source` names where else the
/// value may come from, for the hint.
pub fn check_seq_len(seq_len: usize, config: &ModelConfig, other_source: &str) -> Result<()> {
    let max = config.max_position_embeddings;
    if seq_len as i64 > max {
        bail!(
            "--seq-len {seq_len}: longer than the model's max_position_embeddings ({max})\nhint: use --seq-len {max} or less{other_source}"
        );
    }
    Ok(())
}

/// `auto` picks CUDA when libtorch sees a GPU; `cuda` without one is an error, not a fallback.
pub fn resolve_device(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Cpu => Ok(Device::Cpu),
        DeviceArg::Auto => Ok(Device::cuda_if_available()),
        DeviceArg::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                bail!("--device cuda: libtorch sees no CUDA device (tch::Cuda::is_available() is false)\nhint: use --device cpu or auto")
            }
        }
    }
}

/// A short human name for a device and dtype, for reports.
pub fn describe(load: &LoadOptions) -> String {
    load.describe()
}

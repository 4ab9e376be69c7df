//! Opening a planned checkpoint of a series (a Hub revision kept typed so its downloads can be
//! evicted, a local spec, or a random init of a named or the series' config), and the check that
//! every checkpoint has the series' shape.

use anyhow::{bail, Context, Result};

use crate::config::ModelConfig;
use crate::series::manifest::parse_scheme;
use crate::series::plan::{init_config, init_spec, Plan, PlannedCheckpoint, PlannedSource};
use crate::source::hub::HubSource;
use crate::source::init::InitSource;
use crate::source::{open_source_with, WeightSource};

/// Opens every checkpoint's config (headers only) and refuses a series whose checkpoints differ in
/// architecture or shape before any work, rather than after the first checkpoint's analyses.
pub fn check_series_shapes(plan: &Plan, series_config: &ModelConfig) -> Result<()> {
    for planned in &plan.checkpoints {
        let opened = open_planned(planned, plan, Some(series_config))
            .with_context(|| format!("checkpoint {}", planned.label))?;
        let config = opened.source().config();
        if config.architecture != series_config.architecture
            || config.hidden_size != series_config.hidden_size
            || config.vocab_size != series_config.vocab_size
        {
            bail!(
                "{}: its architecture and shape ({:?}, hidden {}, vocab {}) differ from the series' first checkpoint ({:?}, hidden {}, vocab {}); one scan needs one token set and comparable heads",
                opened.source().provenance().spec,
                config.architecture,
                config.hidden_size,
                config.vocab_size,
                series_config.architecture,
                series_config.hidden_size,
                series_config.vocab_size
            );
        }
    }
    Ok(())
}

/// An open checkpoint; Hub revisions stay typed so their downloads can be evicted.
pub enum OpenCheckpoint {
    Hub(Box<HubSource>),
    Other(Box<dyn WeightSource>),
}

impl OpenCheckpoint {
    pub fn source(&self) -> &dyn WeightSource {
        match self {
            OpenCheckpoint::Hub(h) => h.as_ref(),
            OpenCheckpoint::Other(b) => b.as_ref(),
        }
    }
}

/// Opens a planned checkpoint; inits of "the series' config" need `series_config`.
pub fn open_planned(
    planned: &PlannedCheckpoint,
    plan: &Plan,
    series_config: Option<&ModelConfig>,
) -> Result<OpenCheckpoint> {
    Ok(match &planned.source {
        PlannedSource::Hub { repo, revision } => OpenCheckpoint::Hub(Box::new(HubSource::open(
            repo,
            revision,
            &format!("hf:{repo}@{revision}"),
            &plan.hub,
        )?)),
        PlannedSource::Spec { spec } => OpenCheckpoint::Other(open_source_with(spec, &plan.hub)?),
        PlannedSource::Init {
            config,
            seed,
            scheme,
        } => {
            let scheme_value = parse_scheme(scheme)?;
            let (config, name) = match config {
                Some(c) => (init_config(c)?, c.as_str()),
                None => (
                    series_config
                        .context("an init of the series' config needs a series checkpoint")?
                        .clone(),
                    "series",
                ),
            };
            OpenCheckpoint::Other(Box::new(InitSource::new(
                config,
                *seed,
                scheme_value,
                &init_spec(name, *seed, scheme),
            )))
        }
    })
}

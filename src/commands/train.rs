//! `ckpt-scan train`: resolve the config and folders, run the trainer, print the series.

use anyhow::Result;

use crate::cli::TrainArgs;
use crate::data::paths::{data_root, series_root};
use crate::printer::Printer;
use crate::settings::Settings;
use crate::train::config::TrainConfig;
use crate::train::trainer::{train, TrainRequest};

pub fn run(args: &TrainArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let config = TrainConfig::resolve(&args.config)?;
    let series_dir = args.out.clone().unwrap_or_else(series_root);
    crate::output::atomic::check_output_dir(&series_dir, "--out")?;
    let request = TrainRequest {
        config,
        series_dir: series_dir.clone(),
        data_root: data_root(),
        device: settings.load.device,
    };
    let outcome = train(&request, &printer)?;
    let repo = request.config.repo_id();
    printer.result(format!("series    hf:{repo} in {}", series_dir.display()));
    printer.result(format!("run files {}", outcome.run_dir.display()));
    for (step, branch, commit) in &outcome.checkpoints {
        let heldout = outcome
            .rows
            .iter()
            .find(|r| r.step == *step)
            .and_then(|r| r.heldout_loss)
            .map_or("-".to_string(), |l| format!("{l:.4}"));
        printer.result(format!(
            "{step:>7} {heldout:>8}  {}  {branch}",
            &commit[..10]
        ));
    }
    printer.result(format!(
        "list with: ckpt-scan --hub-cache {} refs hf:{repo}",
        series_dir.display()
    ));
    Ok(())
}

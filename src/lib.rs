//! ckpt-scan: how attention heads form during LLM training.
//!
//! The library is the product; `main.rs` is a shell around [`run`].

pub mod analysis;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod defaults;
pub mod edit;
pub mod error;
pub mod infer;
pub mod input_file;
pub mod model;
pub mod output;
pub mod printer;
pub mod progress;
pub mod report;
pub mod scratch_file;
pub mod series;
pub mod settings;
pub mod source;
pub mod stats;
pub mod train;

use anyhow::Result;

use cli::{Cli, Command};
use settings::Settings;

/// Resolves settings and runs one subcommand.
pub fn run(cli: Cli) -> Result<()> {
    let settings = Settings::resolve(&cli.global)?;
    match &cli.command {
        Command::Inspect(args) => commands::inspect::run(args, &settings),
        Command::Forward(args) => commands::forward::run(args, &settings),
        Command::Predict(args) => commands::predict::run(args, &settings),
        Command::Align(args) => commands::align::run(args, &settings),
        Command::Refs(args) => commands::refs::run(args, &settings),
        Command::Scan(args) => commands::scan::run(args, &settings),
        Command::Train(args) => commands::train::run(args, &settings),
        Command::Theory(args) => commands::theory::run(args, &settings),
        Command::Validate(args) => commands::validate::run(args, &settings),
        Command::ActSearch(args) => commands::act_search::run(args, &settings),
    }
}

//! `ckpt-scan refs hf:ORG/NAME`: a repo's branches with the checkpoint each names.

use anyhow::{bail, Context, Result};

use crate::cli::RefsArgs;
use crate::output::atomic::write_atomic;
use crate::printer::Printer;
use crate::report::refs_report::{refs_lines, refs_report};
use crate::settings::refs::repo_of;
use crate::settings::Settings;
use crate::source::hub::{list_refs, RefsOrigin};

pub fn run(args: &RefsArgs, settings: &Settings) -> Result<()> {
    let printer = Printer {
        quiet: settings.quiet,
    };
    let repo = repo_of(&args.repo)?;
    let listing = list_refs(&repo, &settings.hub)
        .with_context(|| format!("listing the branches of {repo}"))?;
    let report = refs_report(&repo, listing, &settings.hub);
    if let RefsOrigin::Cache { folder } = &report.origin {
        if report.branches.is_empty() {
            bail!(
                "offline (HF_HUB_OFFLINE): no branches of {repo} in the local cache {}\nhint: unset HF_HUB_OFFLINE to ask the Hub",
                folder.display()
            );
        }
    }
    for line in refs_lines(&report) {
        printer.result(line);
    }
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        printer.note(format!("wrote {}", path.display()));
    }
    Ok(())
}

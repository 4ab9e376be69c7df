//! `ckpt-scan refs hf:ORG/NAME`: a repo's branches with the checkpoint each names (stage,
//! ingredient, step, tokens), sorted by stage, ingredient and step, other names last.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::RefsArgs;
use crate::output::atomic::write_atomic;
use crate::printer::Printer;
use crate::settings::Settings;
use crate::source::branch::{compare_branches, BranchName};
use crate::source::hub::{list_refs, HubSettings, RefListing, RefsOrigin};
use crate::source::SourceSpec;

/// Leading hex digits of a commit shown in the table (the JSON keeps all 40).
const SHORT_COMMIT: usize = 10;

/// One branch as a report row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefRow {
    pub branch: String,
    pub stage: Option<u32>,
    pub ingredient: Option<u32>,
    pub step: Option<u64>,
    pub tokens_billions: Option<u64>,
    /// Tokens as the name states them (its number times its `K`/`M`/`B` unit).
    pub tokens: Option<u64>,
    pub commit: String,
}

/// The Hub settings a listing was made with (never the token).
#[derive(Clone, Debug, Serialize)]
pub struct RefsSettings {
    pub endpoint: String,
    pub cache_dir: std::path::PathBuf,
    pub offline: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RefsReport {
    pub repo: String,
    pub settings: RefsSettings,
    pub origin: RefsOrigin,
    pub branches: Vec<RefRow>,
}

/// Rows for every branch, sorted by (stage, ingredient, step), then `main`, then other names.
pub fn refs_report(repo: &str, listing: RefListing, settings: &HubSettings) -> RefsReport {
    let mut branches = listing.branches;
    branches.sort_by(|a, b| compare_branches(&a.name, &b.name));
    let rows = branches
        .into_iter()
        .map(|b| {
            let parsed = BranchName::parse(&b.name);
            let checkpoint = parsed.checkpoint();
            RefRow {
                stage: checkpoint.and_then(|c| c.stage),
                ingredient: checkpoint.and_then(|c| c.ingredient),
                step: checkpoint.map(|c| c.step),
                tokens_billions: checkpoint.map(|c| c.tokens_billions),
                tokens: checkpoint.map(|c| c.tokens),
                commit: b.target_commit,
                branch: b.name,
            }
        })
        .collect();
    RefsReport {
        repo: repo.to_string(),
        settings: RefsSettings {
            endpoint: settings.endpoint.clone(),
            cache_dir: settings.cache_dir.clone(),
            offline: settings.offline,
        },
        origin: listing.origin,
        branches: rows,
    }
}

/// `ORG/NAME` from `hf:ORG/NAME`; a revision makes no sense for a listing.
pub fn repo_of(argument: &str) -> Result<String> {
    if !argument.starts_with("hf:") {
        bail!("refs takes a Hub repo as hf:ORG/NAME, got {argument:?}\nhint: ckpt-scan refs hf:allenai/OLMo-2-1124-7B");
    }
    if argument.contains('@') {
        bail!("refs lists every branch of a repo; drop the @REVISION from {argument:?}");
    }
    match SourceSpec::parse(argument)? {
        SourceSpec::Hub { repo, .. } => Ok(repo),
        _ => unreachable!("an hf: spec parses as a Hub source"),
    }
}

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
    print_report(&report, &printer);
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        printer.note(format!("wrote {}", path.display()));
    }
    Ok(())
}

fn print_report(report: &RefsReport, printer: &Printer) {
    match &report.origin {
        RefsOrigin::Server { url } => {
            printer.result(format!("repo      {} ({url})", report.repo));
            printer.result(format!("branches  {}", report.branches.len()));
        }
        RefsOrigin::Cache { folder } => {
            printer.result(format!("repo      {} ({})", report.repo, folder.display()));
            printer.result(format!(
                "branches  {}, the cached subset only (HF_HUB_OFFLINE is set)",
                report.branches.len()
            ));
        }
    }
    printer.result(format!(
        "{:>5} {:>10} {:>9} {:>14} {:<width$}  branch",
        "stage",
        "ingredient",
        "step",
        "tokens",
        "commit",
        width = SHORT_COMMIT
    ));
    let cell = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for row in &report.branches {
        printer.result(format!(
            "{:>5} {:>10} {:>9} {:>14} {:<width$}  {}",
            cell(row.stage.map(u64::from)),
            cell(row.ingredient.map(u64::from)),
            cell(row.step),
            cell(row.tokens),
            row.commit.get(..SHORT_COMMIT).unwrap_or(&row.commit),
            row.branch,
            width = SHORT_COMMIT
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::hub::BranchRef;

    #[test]
    fn rows_are_sorted_and_parsed() {
        let branch = |name: &str| BranchRef {
            name: name.into(),
            target_commit: format!("{:0>40}", name.len()),
        };
        let listing = RefListing {
            branches: [
                "dev",
                "main",
                "stage1-step2000-tokens9B",
                "stage1-step150-tokens1B",
            ]
            .map(branch)
            .to_vec(),
            origin: RefsOrigin::Server { url: "u".into() },
        };
        let report = refs_report("a/b", listing, &HubSettings::new("http://x", "/c"));
        let names: Vec<&str> = report.branches.iter().map(|r| r.branch.as_str()).collect();
        assert_eq!(
            names,
            [
                "stage1-step150-tokens1B",
                "stage1-step2000-tokens9B",
                "main",
                "dev"
            ]
        );
        assert_eq!(report.branches[0].step, Some(150));
        assert_eq!(report.branches[0].tokens_billions, Some(1));
        assert_eq!(report.branches[3].step, None);
    }

    #[test]
    fn the_argument_must_be_a_repo_without_revision() {
        assert_eq!(repo_of("hf:a/b").unwrap(), "a/b");
        let e = repo_of("a/b").unwrap_err().to_string();
        assert!(e.contains("hf:ORG/NAME") && e.contains("hint:"), "{e}");
        let e = repo_of("hf:a/b@main").unwrap_err().to_string();
        assert!(e.contains("@REVISION"), "{e}");
    }
}

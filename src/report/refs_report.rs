//! The `refs` listing: a repo's branches with the checkpoint each names (stage, ingredient, step,
//! tokens), sorted by stage, ingredient and step, other names last; as JSON rows and as text.

use serde::Serialize;

use crate::source::branch::{compare_branches, BranchName};
use crate::source::hub::{HubSettings, RefListing, RefsOrigin};

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

/// The listing as printed: a header, then one aligned line per branch.
pub fn refs_lines(report: &RefsReport) -> Vec<String> {
    let mut lines = Vec::new();
    match &report.origin {
        RefsOrigin::Server { url } => {
            lines.push(format!("repo      {} ({url})", report.repo));
            lines.push(format!("branches  {}", report.branches.len()));
        }
        RefsOrigin::Cache { folder } => {
            lines.push(format!("repo      {} ({})", report.repo, folder.display()));
            lines.push(format!(
                "branches  {}, the cached subset only (HF_HUB_OFFLINE is set)",
                report.branches.len()
            ));
        }
    }
    lines.push(format!(
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
        lines.push(format!(
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
    lines
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
}

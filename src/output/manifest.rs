//! The run manifest: what produced a result (tool, source, revision, token set, seeds, options).

use serde::Serialize;

/// Tool version and the git commit it was built from.
#[derive(Clone, Debug, Serialize)]
pub struct ToolVersion {
    pub name: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
}

/// The version of what the analyses compute: bump it in any change that alters a result (an R²,
/// an angle, a table's rows or columns), so cached scan units from older builds are recomputed.
/// Units are keyed by this rather than the git sha, so builds that agree on results share them.
pub const ANALYSIS_VERSION: u32 = 1;

pub fn tool_version() -> ToolVersion {
    ToolVersion {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        git_sha: env!("CKPT_SCAN_GIT_SHA"),
    }
}

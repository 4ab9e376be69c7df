//! The run manifest: what produced a result (tool, source, revision, token set, seeds, options).

use serde::Serialize;

/// Tool version and the git commit it was built from.
#[derive(Clone, Debug, Serialize)]
pub struct ToolVersion {
    pub name: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
}

pub fn tool_version() -> ToolVersion {
    ToolVersion {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        git_sha: env!("CKPT_SCAN_GIT_SHA"),
    }
}

//! Resolving `refs`: the repo argument, which must name a Hub repo without a revision.

use anyhow::{bail, Result};

use crate::source::SourceSpec;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_must_be_a_repo_without_revision() {
        assert_eq!(repo_of("hf:a/b").unwrap(), "a/b");
        let e = repo_of("a/b").unwrap_err().to_string();
        assert!(e.contains("hf:ORG/NAME") && e.contains("hint:"), "{e}");
        let e = repo_of("hf:a/b@main").unwrap_err().to_string();
        assert!(e.contains("@REVISION"), "{e}");
    }
}

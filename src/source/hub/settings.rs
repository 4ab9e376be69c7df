//! Where the Hugging Face Hub is and how to reach it: endpoint, token, cache folder, offline mode
//! and retry policy, resolved from the environment variables Python's huggingface_hub reads
//! (research/olmo2.md §5.1).
//!
//! hf-hub 0.5 reads only `HF_HOME`, `HF_ENDPOINT` and the token file, and never
//! `HF_HUB_OFFLINE`, so ckpt-scan resolves everything here and hands it to hf-hub explicitly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Resolved Hub settings. Build with [`HubSettings::from_env`], or [`HubSettings::new`] and set
/// fields (tests do this so they never race on the process environment).
#[derive(Clone)]
pub struct HubSettings {
    /// Base URL without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Sent as `Authorization: Bearer …` to the endpoint's host only.
    pub token: Option<String>,
    /// The shared cache, laid out as `models--ORG--NAME/{blobs,refs,snapshots,.no_exist}`.
    pub cache_dir: PathBuf,
    /// Serve everything from `cache_dir` and never open a connection (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Extra attempts after a 5xx, 429, connection error or cut-off body.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, capped at `MAX_BACKOFF`.
    pub retry_backoff: Duration,
    /// Limit for opening a connection.
    pub connect_timeout: Duration,
    /// Limit for any one read or write on an open connection, so a stalled transfer fails
    /// instead of hanging (a whole shard may legitimately take many minutes).
    pub io_timeout: Duration,
    /// Suppress download notes on stderr.
    pub quiet: bool,
}

/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl HubSettings {
    /// Settings for `endpoint` and `cache_dir` with no token, online, and the default retry policy.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        HubSettings {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            cache_dir: cache_dir.into(),
            offline: false,
            retries: 4,
            retry_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(20),
            io_timeout: Duration::from_secs(120),
            quiet: false,
        }
    }

    /// Reads `HF_ENDPOINT`, `HF_TOKEN` / `HF_TOKEN_PATH`, `HF_HOME`, `XDG_CACHE_HOME`,
    /// `HF_HUB_CACHE` / `HUGGINGFACE_HUB_CACHE` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok(), std::env::home_dir())
    }

    /// `from_env` with the variables and the home folder supplied by the caller.
    ///
    /// Order, as in huggingface_hub: token from `HF_TOKEN`, then the file `HF_TOKEN_PATH`, then
    /// `<HF_HOME>/token`; `HF_HOME` else `$XDG_CACHE_HOME/huggingface` else
    /// `~/.cache/huggingface`; cache `HF_HUB_CACHE`, then `HUGGINGFACE_HUB_CACHE`, then
    /// `<HF_HOME>/hub`. Empty variables count as unset; a leading `~/` is expanded.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, home: Option<PathBuf>) -> Self {
        let home = home.unwrap_or_else(|| PathBuf::from("."));
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let path = |name: &str| var(name).map(|v| expand_home(&v, &home));
        let hf_home = path("HF_HOME").unwrap_or_else(|| {
            path("XDG_CACHE_HOME")
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            read_token(&path("HF_TOKEN_PATH").unwrap_or_else(|| hf_home.join("token")))
        });
        let mut settings = HubSettings::new(
            var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
        );
        settings.token = token;
        settings.offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v));
        settings
    }

    /// The wait before retry number `retry` (0-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.retry_backoff
            .saturating_mul(1u32 << retry.min(16))
            .min(MAX_BACKOFF)
    }
}

/// Never print the token.
impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("quiet", &self.quiet)
            .finish()
    }
}

/// huggingface_hub's truthy set for boolean variables.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn expand_home(value: &str, home: &Path) -> PathBuf {
    match value.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if value == "~" => home.to_path_buf(),
        None => PathBuf::from(value),
    }
}

/// A token file's trimmed contents; a missing, unreadable or empty file means no token, as in
/// huggingface_hub.
fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(vars: &[(&str, &str)]) -> HubSettings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubSettings::from_vars(|k| vars.get(k).cloned(), Some(PathBuf::from("/home/u")))
    }

    #[test]
    fn defaults_follow_home() {
        let s = resolve(&[]);
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline);
        assert_eq!(s.token, None);
    }

    #[test]
    fn cache_dir_precedence() {
        let s = resolve(&[("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let s = resolve(&[("XDG_CACHE_HOME", "/x"), ("HF_HOME", "~/hf")]);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/hf/hub"));
        let s = resolve(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old")]);
        assert_eq!(s.cache_dir, PathBuf::from("/old"));
        let s = resolve(&[("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HUB_CACHE", "/new")]);
        assert_eq!(s.cache_dir, PathBuf::from("/new"));
        let s = resolve(&[("HF_HUB_CACHE", "")]);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
    }

    #[test]
    fn token_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let home_token = dir.path().join("token");
        std::fs::write(&home_token, "from-home\n").unwrap();
        let path_token = dir.path().join("other");
        std::fs::write(&path_token, "  from-path  ").unwrap();
        let home = dir.path().to_str().unwrap();
        let other = path_token.to_str().unwrap();
        let s = resolve(&[("HF_HOME", home)]);
        assert_eq!(s.token.as_deref(), Some("from-home"));
        let s = resolve(&[("HF_HOME", home), ("HF_TOKEN_PATH", other)]);
        assert_eq!(s.token.as_deref(), Some("from-path"));
        let s = resolve(&[
            ("HF_HOME", home),
            ("HF_TOKEN_PATH", other),
            ("HF_TOKEN", "env"),
        ]);
        assert_eq!(s.token.as_deref(), Some("env"));
        std::fs::write(&home_token, "\n").unwrap();
        assert_eq!(resolve(&[("HF_HOME", home)]).token, None);
        assert!(
            !format!("{s:?}").contains("env"),
            "Debug must hide the token"
        );
    }

    #[test]
    fn endpoint_and_offline() {
        let s = resolve(&[
            ("HF_ENDPOINT", "http://mirror:8080/"),
            ("HF_HUB_OFFLINE", "ON"),
        ]);
        assert_eq!(s.endpoint, "http://mirror:8080");
        assert!(s.offline);
        for (value, offline) in [("1", true), ("yes", true), ("0", false), ("false", false)] {
            assert_eq!(
                resolve(&[("HF_HUB_OFFLINE", value)]).offline,
                offline,
                "{value}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut s = HubSettings::new("http://x", "/c");
        s.retry_backoff = Duration::from_millis(100);
        assert_eq!(s.backoff(0), Duration::from_millis(100));
        assert_eq!(s.backoff(3), Duration::from_millis(800));
        assert_eq!(s.backoff(40), MAX_BACKOFF);
    }
}

//! HTTP to the Hub: hf-hub 0.5 where it does the job, and what it lacks around it.
//!
//! hf-hub 0.5 (`api::sync`) is used for: the resolve URL `{endpoint}/{repo}/resolve/{rev}/{file}`;
//! file metadata (a `GET` with `Range: bytes=0-0` that follows only relative redirects, takes the
//! commit from `x-repo-commit`, the blob name from `x-linked-etag` else `etag`, and the size from
//! `Content-Range` at the final, possibly CDN, location); and the revision call
//! `/api/models/{repo}/revision/{rev}` that yields the commit sha.
//!
//! Added here, because hf-hub 0.5 does not do it: retries of metadata and API calls (it retries
//! nothing but a body, and only when asked); timeouts on the requests made here (its own agents
//! have none); telling 404 and 401/403 apart from other failures; listing refs; reading a
//! safetensors header with range requests. Verified downloads are in `download.rs`.

use std::io::Read;
use std::path::Path;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use ureq::config::RedirectAuthHeaders;
use ureq::http::Response;
use ureq::{Agent, Body};

use super::cache::is_commit_sha;
use super::settings::HubSettings;
use super::BranchRef;
use crate::error::{SourceError, SourceResult};
use crate::printer::Printer;
use crate::source::branch::nearest_branches;
use crate::source::safetensors::{ShardHeader, MAX_HEADER_BYTES};

const USER_AGENT: &str = concat!("ckpt-scan/", env!("CARGO_PKG_VERSION"));
/// First request for a safetensors header; OLMo-2 shard headers are about 10 KB.
const HEADER_PROBE_BYTES: u64 = 64 * 1024;
/// Largest API response read into memory (the refs of a repo with ~1000 branches are ~200 KB).
const MAX_API_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Branch names offered when a revision is not found.
const NEAREST_BRANCHES: usize = 5;

/// One file at one commit, as the Hub describes it.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// `ORG/NAME/FILE`, for messages.
    pub label: String,
    pub url: String,
    /// Blob name in the cache: the LFS sha256 for large files, the git blob id for small ones.
    pub etag: String,
    pub size: u64,
}

/// How one attempt failed: worth another try, or not.
pub(super) enum Failure {
    Retry(SourceError),
    Fatal(SourceError),
}

pub(super) type Attempt<T> = Result<T, Failure>;

pub struct HubClient {
    settings: HubSettings,
    api: Api,
    agent: Agent,
}

impl HubClient {
    pub fn new(settings: &HubSettings) -> SourceResult<Self> {
        // `from_cache` would read `<cache>/../token`; the token is set explicitly right after.
        let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            .with_progress(false)
            .with_user_agent("ckpt-scan", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| SourceError::HubHttp {
                url: settings.endpoint.clone(),
                message: format!("cannot set up the HTTP client: {e}"),
            })?;
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            // The token goes to the endpoint's host only, never to a CDN it redirects to.
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .user_agent(USER_AGENT)
            // Byte counts and ranges refer to the stored file, so no transparent decompression.
            .accept_encoding("")
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_recv_response(Some(settings.io_timeout))
            .timeout_per_read(Some(settings.io_timeout))
            .timeout_per_write(Some(settings.io_timeout))
            .build()
            .into();
        Ok(HubClient {
            settings: settings.clone(),
            api,
            agent,
        })
    }

    fn api_repo(&self, repo: &str, revision: &str) -> ApiRepo {
        self.api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn file_url(&self, repo: &str, revision: &str, file: &str) -> String {
        self.api_repo(repo, revision).url(file)
    }

    pub fn refs_url(&self, repo: &str) -> String {
        format!("{}/api/models/{repo}/refs", self.settings.endpoint)
    }

    /// The commit `revision` points at now.
    pub fn resolve_commit(&self, repo: &str, revision: &str) -> SourceResult<String> {
        let api_repo = self.api_repo(repo, revision);
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.settings.endpoint,
            revision.replace('/', "%2F")
        );
        let info = self.retrying(|| match api_repo.info() {
            Ok(info) => Ok(Some(info)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api_failure(&url, repo, e)),
        })?;
        let Some(info) = info else {
            return Err(self.revision_not_found(repo, revision));
        };
        if !is_commit_sha(&info.sha) {
            return Err(SourceError::HubHttp {
                url,
                message: format!("the Hub answered with {:?}, not a commit sha", info.sha),
            });
        }
        Ok(info.sha)
    }

    fn revision_not_found(&self, repo: &str, revision: &str) -> SourceError {
        match self.list_branches(repo) {
            Ok(Some(branches)) => {
                let names: Vec<&str> = branches.iter().map(|b| b.name.as_str()).collect();
                SourceError::RevisionNotFound {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    nearest: nearest_branches(revision, &names, NEAREST_BRANCHES)
                        .into_iter()
                        .map(String::from)
                        .collect(),
                }
            }
            Ok(None) => SourceError::HubHttp {
                url: self.refs_url(repo),
                message: format!("HTTP 404: there is no model repo {repo}"),
            },
            // The revision lookup already said 404; a failing listing only costs the suggestions.
            Err(_) => SourceError::RevisionNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                nearest: Vec::new(),
            },
        }
    }

    /// The repo's branches (`GET /api/models/{repo}/refs`); `None` when the repo answers 404.
    pub fn list_branches(&self, repo: &str) -> SourceResult<Option<Vec<BranchRef>>> {
        let url = self.refs_url(repo);
        let body = self.retrying(|| {
            let mut response = self.call(&url, repo, None)?;
            match response.status().as_u16() {
                200 => {}
                404 => return Ok(None),
                status => return Err(self.status_failure(&url, repo, status)),
            }
            response
                .body_mut()
                .with_config()
                .limit(MAX_API_RESPONSE_BYTES)
                .read_to_string()
                .map(Some)
                .map_err(|e| self.transport_failure(&url, repo, e))
        })?;
        body.map(|text| parse_refs(&url, &text)).transpose()
    }

    /// Size, etag and URL of `file` at `commit`; `None` when the Hub answers 404.
    pub fn file_metadata(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
    ) -> SourceResult<Option<RemoteFile>> {
        let url = self.file_url(repo, commit, file);
        let metadata = self.retrying(|| match self.api.metadata(&url) {
            Ok(m) => Ok(Some(m)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api_failure(&url, repo, e)),
        })?;
        let Some(metadata) = metadata else {
            return Ok(None);
        };
        let etag = metadata.etag().to_string();
        // The etag becomes a file name in blobs/, so it must not be able to leave that folder.
        if etag.is_empty()
            || etag.starts_with('.')
            || !etag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(SourceError::HubHttp {
                url,
                message: format!("unusable etag {etag:?}"),
            });
        }
        Ok(Some(RemoteFile {
            label: format!("{repo}/{file}"),
            url,
            etag,
            size: metadata.size() as u64,
        }))
    }

    /// A safetensors header read with range requests, without downloading the tensors.
    pub fn read_header(&self, repo: &str, url: &str, label: &str) -> SourceResult<ShardHeader> {
        let (mut prefix, file_len) = self.read_prefix(repo, url, HEADER_PROBE_BYTES)?;
        if let Some(n) = ShardHeader::announced_len(&prefix) {
            let needed = n.saturating_add(8);
            if n <= MAX_HEADER_BYTES && needed <= file_len && needed > prefix.len() as u64 {
                prefix = self.read_prefix(repo, url, needed)?.0;
            }
        }
        ShardHeader::parse(&prefix, file_len, Path::new(label))
    }

    /// The first `len` bytes of a file (fewer if it is shorter) and the file's full size.
    fn read_prefix(&self, repo: &str, url: &str, len: u64) -> SourceResult<(Vec<u8>, u64)> {
        self.retrying(|| {
            let range = format!("bytes=0-{}", len.saturating_sub(1));
            let response = self.call(url, repo, Some(&range))?;
            let file_len = match response.status().as_u16() {
                206 => content_range(&response).map(|(_, total)| total),
                // A server that ignores ranges sends the whole file; only `len` bytes are read.
                200 => response.body().content_length(),
                status => return Err(self.status_failure(url, repo, status)),
            }
            .ok_or_else(|| {
                Failure::Fatal(SourceError::HubHttp {
                    url: url.to_string(),
                    message: "the response gives no file size (Content-Range or Content-Length)"
                        .into(),
                })
            })?;
            let mut bytes = Vec::new();
            response
                .into_body()
                .into_reader()
                .take(len)
                .read_to_end(&mut bytes)
                .map_err(|e| retry(url, format!("reading the response failed: {e}")))?;
            Ok((bytes, file_len))
        })
    }

    pub(super) fn call(
        &self,
        url: &str,
        repo: &str,
        range: Option<&str>,
    ) -> Attempt<Response<Body>> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.settings.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        request
            .call()
            .map_err(|e| self.transport_failure(url, repo, e))
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been retried
    /// `settings.retries` times, waiting `settings.backoff(n)` before retry `n`.
    pub(super) fn retrying<T>(&self, mut attempt: impl FnMut() -> Attempt<T>) -> SourceResult<T> {
        let printer = Printer {
            quiet: self.settings.quiet,
        };
        let mut retry = 0;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e)) if retry >= self.settings.retries => {
                    return Err(gave_up(e, retry + 1))
                }
                Err(Failure::Retry(e)) => {
                    let wait = self.settings.backoff(retry);
                    printer.note(format!(
                        "{e}; retrying in {:.1}s ({} of {})",
                        wait.as_secs_f64(),
                        retry + 1,
                        self.settings.retries
                    ));
                    std::thread::sleep(wait);
                    retry += 1;
                }
            }
        }
    }

    fn api_failure(&self, url: &str, repo: &str, error: ApiError) -> Failure {
        match error {
            ApiError::RequestError(e) => self.transport_failure(url, repo, *e),
            ApiError::IoError(e) => retry(url, format!("I/O error: {e}")),
            ApiError::MissingHeader(header) => Failure::Fatal(SourceError::HubHttp {
                url: url.to_string(),
                message: format!(
                    "the response lacks the {header} header a Hugging Face Hub sends \
                     (is HF_ENDPOINT a Hub?)"
                ),
            }),
            other => Failure::Fatal(SourceError::HubHttp {
                url: url.to_string(),
                message: other.to_string(),
            }),
        }
    }

    fn transport_failure(&self, url: &str, repo: &str, error: ureq::Error) -> Failure {
        match error {
            ureq::Error::StatusCode(status) => self.status_failure(url, repo, status),
            ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_) => retry(url, error.to_string()),
            other => Failure::Fatal(SourceError::HubHttp {
                url: url.to_string(),
                message: other.to_string(),
            }),
        }
    }

    pub(super) fn status_failure(&self, url: &str, repo: &str, status: u16) -> Failure {
        match status {
            401 | 403 => Failure::Fatal(SourceError::HubAuth {
                repo: repo.to_string(),
                url: url.to_string(),
                status,
                token_sent: self.settings.token.is_some(),
            }),
            408 | 429 | 500..=599 => retry(url, format!("HTTP {status}")),
            _ => Failure::Fatal(SourceError::HubHttp {
                url: url.to_string(),
                message: format!("HTTP {status}"),
            }),
        }
    }
}

#[derive(Deserialize)]
struct RefsResponse {
    branches: Vec<GitRef>,
}

#[derive(Deserialize)]
struct GitRef {
    name: String,
    #[serde(rename = "targetCommit")]
    target_commit: String,
}

fn parse_refs(url: &str, text: &str) -> SourceResult<Vec<BranchRef>> {
    let response: RefsResponse = serde_json::from_str(text).map_err(|e| SourceError::HubHttp {
        url: url.to_string(),
        message: format!(
            "the refs listing is not the JSON the Hub API returns \
             ({{\"branches\":[{{\"name\",\"targetCommit\"}}]}}): {e}\n\
             hint: check that HF_ENDPOINT points at a Hugging Face Hub"
        ),
    })?;
    Ok(response
        .branches
        .into_iter()
        .map(|b| BranchRef {
            name: b.name,
            target_commit: b.target_commit,
        })
        .collect())
}

/// The HTTP status inside an hf-hub error, when it is one.
fn status_of(error: &ApiError) -> Option<u16> {
    match error {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::StatusCode(status) => Some(*status),
            _ => None,
        },
        _ => None,
    }
}

/// `(first byte, total size)` from `Content-Range: bytes FIRST-LAST/TOTAL`.
pub(super) fn content_range(response: &Response<Body>) -> Option<(u64, u64)> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, _) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, total.trim().parse().ok()?))
}

fn retry(url: &str, message: String) -> Failure {
    Failure::Retry(SourceError::HubHttp {
        url: url.to_string(),
        message,
    })
}

/// Says how many attempts were made in the final error.
fn gave_up(error: SourceError, attempts: u32) -> SourceError {
    if attempts < 2 {
        return error;
    }
    let note = format!(" (gave up after {attempts} attempts)");
    match error {
        SourceError::HubHttp { url, message } => SourceError::HubHttp {
            url,
            message: message + &note,
        },
        SourceError::Truncated { path, message } => SourceError::Truncated {
            path,
            message: message + &note,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_json_parses_and_malformed_json_says_so() {
        let text = r#"{"branches":[{"name":"main","ref":"refs/heads/main","targetCommit":"abc"}],
                       "tags":[],"converts":[]}"#;
        let refs = parse_refs("u", text).unwrap();
        assert_eq!(
            refs,
            [BranchRef {
                name: "main".into(),
                target_commit: "abc".into()
            }]
        );
        let e = parse_refs("http://x/api/models/a/b/refs", r#"{"branches": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://x/api/models/a/b/refs") && e.contains("not the JSON"),
            "{e}"
        );
    }
}

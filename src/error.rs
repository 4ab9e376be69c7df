//! Typed errors at the library's edges: each names the file, tensor or flag it is about.

use std::path::PathBuf;

/// Errors raised while reading weights, configs and checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: not found")]
    MissingFile { path: PathBuf },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{path}: truncated: {message}")]
    Truncated { path: PathBuf, message: String },
    #[error("tensor {name}: not in {location}")]
    MissingTensor { name: String, location: String },
    #[error(
        "tensor {name}: shape {actual:?} disagrees with the config, which implies {expected:?}"
    )]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error("tensor {name}: unsupported dtype {dtype} in {path}")]
    UnsupportedDtype {
        name: String,
        dtype: String,
        path: PathBuf,
    },
    #[error("{path}: unsupported architecture {architecture:?} (supported: Olmo2ForCausalLM, Olmo3ForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, GPTNeoXForCausalLM, Gemma3ForCausalLM)")]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("{path}: unsupported RoPE type {rope_type:?} (supported: {supported})")]
    UnsupportedRopeType {
        path: PathBuf,
        rope_type: String,
        supported: &'static str,
    },
    #[error("tensor {name}: contains {count} NaN/Inf values (use --allow-nan to run anyway)")]
    NonFinite { name: String, count: i64 },
    #[error("source {spec:?}: {message}")]
    BadSpec { spec: String, message: String },
    #[error("{url}: {message}")]
    HubHttp { url: String, message: String },
    #[error("revision {revision} not found in {repo}{}\nhint: `ckpt-scan refs hf:{repo}` lists its branches", nearest_note(.nearest))]
    RevisionNotFound {
        repo: String,
        revision: String,
        /// Existing branch names closest to the one asked for (may be empty).
        nearest: Vec<String>,
    },
    #[error("{url}: HTTP {status}: {repo} does not exist, or it is private or gated and {}\nhint: check the name with `ckpt-scan refs hf:{repo}`; for a private or gated repo set HF_TOKEN (or HF_TOKEN_PATH, or run `huggingface-cli login`) to a token with access", if *.token_sent { "the token sent was refused" } else { "no token was sent (no HF_TOKEN, HF_TOKEN_PATH or token file)" })]
    HubAuth {
        repo: String,
        url: String,
        status: u16,
        token_sent: bool,
    },
    #[error("offline (HF_HUB_OFFLINE): {repo}@{revision} is not in the local cache {}: {missing}\nhint: unset HF_HUB_OFFLINE to download it, or point HF_HUB_CACHE (or HF_HOME) at the cache that holds it", cache_dir.display())]
    NotCached {
        repo: String,
        revision: String,
        cache_dir: PathBuf,
        /// What was looked for and not found.
        missing: String,
    },
    #[error("{path}: sha256 {actual} does not match the expected {expected}; the download was discarded")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type SourceResult<T> = Result<T, SourceError>;

fn nearest_note(nearest: &[String]) -> String {
    if nearest.is_empty() {
        String::new()
    } else {
        format!("; nearest branches: {}", nearest.join(", "))
    }
}

impl SourceError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            SourceError::MissingFile { path: path.into() }
        } else {
            SourceError::Io {
                path: path.into(),
                source,
            }
        }
    }

    pub fn malformed(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        SourceError::Malformed {
            path: path.into(),
            message: message.into(),
        }
    }
}

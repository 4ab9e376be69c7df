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
    #[error("{path}: unsupported architecture {architecture:?} (supported: Olmo2ForCausalLM, LlamaForCausalLM)")]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    #[error("tensor {name}: contains {count} NaN/Inf values (use --allow-nan to run anyway)")]
    NonFinite { name: String, count: i64 },
    #[error("source {spec:?}: {message}")]
    BadSpec { spec: String, message: String },
    #[error("{0}")]
    Hub(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type SourceResult<T> = Result<T, SourceError>;

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

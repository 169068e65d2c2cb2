//! The library's error type. Every variant that concerns a file names it, so a user can tell
//! *which* input is wrong and *what* is wrong with it without a backtrace.

use std::path::PathBuf;

/// Errors raised by the offsite library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error (part of the message, so not chained as a source).
        error: std::io::Error,
    },
    /// A file exists but its content is not what it should be (corrupt, truncated, wrong format).
    #[error("{path}: {msg}")]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has a shape that does not fit the model's configuration.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape found in the file.
        actual: Vec<usize>,
    },
    /// The checkpoint is of a model family offsite does not implement.
    #[error("{path}: unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The file that declares the architecture.
        path: PathBuf,
        /// The architecture it declares.
        arch: String,
        /// The architectures offsite can load.
        supported: String,
    },
    /// A run stopped before it finished (its last checkpoint can be resumed).
    #[error("interrupted after step {0}")]
    Interrupted(usize),
    /// Invalid arguments or options (not tied to a file).
    #[error("{0}")]
    Invalid(String),
    /// An error from the tensor library.
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set:
/// users get one line that says what went wrong.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

/// Result alias for the offsite library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

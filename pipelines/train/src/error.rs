//! What can go wrong while training or evaluating: one line naming the problem and the fix.

use std::path::PathBuf;

/// Failure of training, data generation or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that cannot be used as given (the message says what to change).
    #[error("{0}")]
    Usage(String),
    /// A caption outside the grammar (the message names the word and what was expected).
    #[error("{0}")]
    Caption(String),
    /// A checkpoint that cannot be read or does not fit the run.
    #[error("{0}")]
    Checkpoint(String),
    /// A file that cannot be read or written.
    #[error("cannot {action} {path}: {reason}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The VAE cannot be built or run.
    #[error(transparent)]
    Vae(#[from] vae::Error),
    /// The text encoder cannot be built or run.
    #[error(transparent)]
    Text(#[from] umt5::Error),
    /// An attention method cannot be used.
    #[error(transparent)]
    Attention(#[from] sparse::Error),
}

impl Error {
    /// An I/O failure on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Self::Io {
            action,
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<vdit_core::output::OutputError> for Error {
    /// A failed write is an I/O error on its path; a refusal (a link, a file vdit did not
    /// write) keeps its own one-line message.
    fn from(e: vdit_core::output::OutputError) -> Self {
        match e {
            vdit_core::output::OutputError::Write { path, reason } => {
                Error::io("write", path, reason)
            }
            other => Error::Usage(other.to_string()),
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

//! What can go wrong loading the text encoder or encoding prompts.

use std::path::PathBuf;
use vdit_core::WeightError;

/// Failure to load the UMT5 encoder or its tokenizer, or to encode prompts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `config.json` that cannot be read or parsed.
    #[error("cannot {action} text encoder config {path}: {reason}")]
    Config {
        /// `read` or `parse`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A configuration this implementation does not run (the message names the field).
    #[error("unsupported text encoder config{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Unsupported {
        /// The file, when it came from one.
        path: Option<PathBuf>,
        /// Which field is unsupported and what is.
        reason: String,
    },
    /// A tokenizer that cannot be found, read or used.
    #[error("{0}")]
    Tokenizer(String),
    /// Weights missing or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The weights do not fit the configuration.
    #[error("cannot load the UMT5 text encoder from {path}: {source}")]
    Load {
        /// The encoder folder.
        path: PathBuf,
        /// What failed.
        source: candle_core::Error,
    },
    /// Nothing to encode.
    #[error("no prompts to encode")]
    NoPrompts,
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

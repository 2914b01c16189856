//! Why a transformer cannot be loaded or configured: one line naming the file and the fix.

use vdit_core::WeightError;

/// Failure to read a configuration or load a transformer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that could not be read or parsed.
    #[error("cannot read transformer config{}: {reason}", at(path))]
    Unreadable {
        /// Path of the config file (empty for JSON given as text).
        path: String,
        /// Parser or I/O message.
        reason: String,
    },
    /// A valid config describing something this engine does not run.
    #[error("unsupported transformer config{}: {reason}", at(path))]
    Unsupported {
        /// Path of the config file (empty when not read from a file).
        path: String,
        /// What is unsupported and what to use instead.
        reason: String,
    },
    /// Weights missing or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// Keys of an unknown layout, or a config that cannot be inferred from the weights.
    #[error("{0}")]
    Layout(String),
    /// A LoRA file that does not fit the transformer (the message names the file and key).
    #[error("{0}")]
    Lora(String),
    /// A tensor is missing or mis-shaped (the message names key, shape and file).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// ` PATH` for a non-empty path, else nothing.
fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" {path}")
    }
}

//! Why a VAE cannot be configured, loaded or run on some input: one line naming the problem.

use vdit_core::WeightError;

/// An error of whoever receives decoded frames, carried through [`Error::Frames`] unchanged.
pub type FrameError = Box<dyn std::error::Error + Send + Sync>;

/// Failure of the VAE.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that could not be read or parsed.
    #[error("cannot read VAE config {path}: {reason}")]
    Unreadable {
        /// Path of the config file.
        path: String,
        /// Parser or I/O message.
        reason: String,
    },
    /// A valid config describing a VAE this crate does not run.
    #[error("unsupported VAE config{}: {reason}", if path.is_empty() { String::new() } else { format!(" {path}") })]
    Unsupported {
        /// Path of the config file (empty when not read from a file).
        path: String,
        /// What is unsupported and what to use instead.
        reason: String,
    },
    /// Weights missing or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// Keys of an unknown layout.
    #[error("{0}")]
    Layout(String),
    /// Latents, a video or tiling settings the VAE cannot take (the message says what it needs).
    #[error("{0}")]
    Input(String),
    /// The receiver of decoded frames failed.
    #[error(transparent)]
    Frames(FrameError),
    /// A tensor is missing or mis-shaped, or an operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

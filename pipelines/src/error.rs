//! What can go wrong planning or running a generation: each error is one line naming the
//! problem and, where there is one, the fix. [`Error::is_usage`] tells a request that cannot
//! be used as given (fix the arguments) from a run that failed.

use crate::t2v::SettingsError;
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Failure of the text-to-video pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A generation setting that cannot be used.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// An attention method or option that cannot be used.
    #[error(transparent)]
    Attention(#[from] sparse::Error),
    /// Inputs that are missing or do not fit together (the message says what to give).
    #[error("{0}")]
    Usage(String),
    /// A model part that is missing or not where it was looked for.
    #[error("{0}")]
    Model(String),
    /// An input file that cannot be read or does not hold what it must.
    #[error("{0}")]
    Input(String),
    /// An output that cannot be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A scheduler configuration or call this engine cannot run.
    #[error("{0}")]
    Scheduler(String),
    /// Weights missing or unreadable.
    #[error(transparent)]
    Weights(#[from] vdit_core::WeightError),
    /// The transformer cannot be configured or loaded.
    #[error(transparent)]
    Transformer(#[from] dit::Error),
    /// The VAE cannot be loaded or run.
    #[error(transparent)]
    Vae(#[from] vae::Error),
    /// The text encoder cannot be loaded or run.
    #[error(transparent)]
    Text(#[from] umt5::Error),
    /// The frame sink failed.
    #[error(transparent)]
    Sink(Box<dyn std::error::Error + Send + Sync>),
    /// An output file that cannot be written (see [`vdit_core::output`]).
    #[error(transparent)]
    Output(#[from] vdit_core::output::OutputError),
    /// A file operation failed (the context names the file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON that does not parse (the context names the file).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The work was asked to stop (Ctrl-C) and stopped between two units of work.
    #[error("interrupted")]
    Interrupted,
    /// An error with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        /// What was being done.
        context: String,
        /// What failed.
        source: Box<Error>,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the request cannot be used as given (a bad setting, option, missing or
    /// conflicting input): fixing the arguments is the remedy, not running again.
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Settings(_) | Self::Usage(_) => true,
            Self::Attention(e) => e.is_usage(),
            Self::Context { source, .. } => source.is_usage(),
            _ => false,
        }
    }

    /// True when the work stopped because it was asked to ([`Error::Interrupted`]).
    pub fn is_interrupted(&self) -> bool {
        match self {
            Self::Interrupted => true,
            Self::Context { source, .. } => source.is_interrupted(),
            _ => false,
        }
    }

    /// A write failure of `path`.
    pub fn write(path: &Path, reason: impl Display) -> Self {
        Self::Write {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Adds what was being done to an error, as `context: error`.
pub trait ResultExt<T> {
    /// With the context `context`.
    fn context(self, context: impl Display) -> Result<T>;
    /// With the context `context()`, computed only on error.
    fn with_context<D: Display>(self, context: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.with_context(|| context)
    }

    fn with_context<D: Display>(self, context: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context().to_string(),
            source: Box::new(e.into()),
        })
    }
}

/// Returns early with `Error::$kind(format!(...))`.
macro_rules! fail {
    ($kind:ident, $($format:tt)*) => {
        return Err($crate::Error::$kind(format!($($format)*)))
    };
}
pub(crate) use fail;

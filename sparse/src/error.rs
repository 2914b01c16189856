//! What can go wrong choosing, configuring or running an attention method: each is one line
//! that names the problem and, where there is one, the fix.

use std::path::PathBuf;
use vdit_core::TokenGrid;

/// Failure of an attention method or of its options.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A method name no registered method has.
    #[error("unknown attention method `{name}`: use one of {known}")]
    UnknownMethod {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// An option the chosen method does not take.
    #[error("option --{flag} does not apply to --attention {method}: {hint}")]
    NotForMethod {
        /// The option, as a flag (`dense-steps`).
        flag: String,
        /// The chosen method.
        method: String,
        /// Which methods take it.
        hint: String,
    },
    /// An option value that does not parse.
    #[error("--{flag} `{value}`: {expected}")]
    BadValue {
        /// The option, as a flag.
        flag: String,
        /// The text given.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// Settings of a method that cannot run (the message says what to use instead).
    #[error("{0}")]
    Invalid(String),
    /// Data made for another token grid (a calibration), or a grid the method cannot tile.
    #[error("the {what} is for token grid {made_for}, this run has token grid {this_run}: {fix}")]
    WrongGrid {
        /// What was made for another grid.
        what: String,
        /// Its grid.
        made_for: TokenGrid,
        /// This run's grid.
        this_run: TokenGrid,
        /// How to get one for this grid.
        fix: String,
    },
    /// Data made for a transformer of another shape.
    #[error(
        "the {what} covers {layers} layers of {heads} heads, the transformer has {model_layers} \
         of {model_heads}: {fix}"
    )]
    WrongModel {
        /// What was made for another model.
        what: String,
        /// Its layers.
        layers: usize,
        /// Its heads per layer.
        heads: usize,
        /// The transformer's layers.
        model_layers: usize,
        /// The transformer's heads per layer.
        model_heads: usize,
        /// How to get one for this model.
        fix: String,
    },
    /// A calibration file that cannot be read or written.
    #[error("{action} {path}: {reason}")]
    File {
        /// `cannot read PARO calibration`, `cannot write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// An output file that cannot be written (see [`vdit_core::output`]).
    #[error(transparent)]
    Output(#[from] vdit_core::output::OutputError),
}

impl Error {
    /// True when the choice or the options cannot be used as given (fix the arguments), as
    /// opposed to a file or a computation that failed.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Tensor(_) | Self::File { .. } | Self::Output(_))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Tensor(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

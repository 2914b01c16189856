//! Progress reports of a generation, for progress bars or nothing.

use std::fmt;

/// The stages of a generation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Loading weights.
    Loading,
    /// Encoding prompts.
    TextEncoding,
    /// The sampling loop, one unit per step.
    Denoising,
    /// VAE decoding and writing, one unit per latent frame.
    Decoding,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loading => "loading",
            Self::TextEncoding => "text",
            Self::Denoising => "denoising",
            Self::Decoding => "decoding",
        })
    }
}

/// Receives progress, and may ask the work to stop; every method does nothing (and never asks
/// to stop) unless implemented.
pub trait Progress {
    /// A stage starts with `total` units of work (0: unknown).
    fn begin(&mut self, _stage: Stage, _total: usize) {}
    /// One unit of the current stage is done.
    fn advance(&mut self) {}
    /// The current stage is over.
    fn end(&mut self) {}
    /// True when the work should stop at the next safe point (after a unit of work), as after
    /// Ctrl-C; the pipeline then returns [`crate::Error::Interrupted`].
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Marks one unit of work done, then stops with [`crate::Error::Interrupted`] if `progress`
/// asks to.
pub(crate) fn unit_done(progress: &mut dyn Progress) -> crate::Result<()> {
    progress.advance();
    if progress.stop_requested() {
        progress.end();
        return Err(crate::Error::Interrupted);
    }
    Ok(())
}

/// Progress that is not shown.
pub struct Silent;

impl Progress for Silent {}

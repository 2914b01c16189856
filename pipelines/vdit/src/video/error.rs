//! What can go wrong converting, writing or reading video: each failure is one line that names
//! the problem and, where there is one, the fix.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Failure to convert, write or read video frames.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// The output path names no format vdit writes.
    #[error(
        "cannot write {path}: unknown video format `.{extension}` (use .mp4, .gif, .y4m, or a \
         path without extension for a folder of PNG frames)"
    )]
    UnknownFormat {
        /// Output asked for.
        path: PathBuf,
        /// Its extension.
        extension: String,
    },
    /// The output cannot be written there: its folder is missing, it is taken (it exists, or
    /// another process is writing it), or moving it into place failed.
    #[error(transparent)]
    Output(#[from] vdit_core::output::OutputError),
    /// MP4 was asked of a build without FFmpeg.
    #[error(
        "cannot write {0}: this vdit was built without FFmpeg, so it cannot write MP4; write \
         .y4m or a PNG folder instead and run `vdit encode` on a machine with FFmpeg"
    )]
    NoFfmpeg(PathBuf),
    /// A frame size without pixels.
    #[error(
        "frame size {width}x{height} is empty: video frames need a width and height of at least 1"
    )]
    EmptyFrame {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// A frame whose size differs from the size the writer was opened with.
    #[error(
        "frame {index} is {}x{} but {path} was opened for {}x{}: every frame of a video must \
         have the same size",
        got.0, got.1, expected.0, expected.1
    )]
    SizeChanged {
        /// Output being written.
        path: PathBuf,
        /// Position of the offending frame (from 0).
        index: usize,
        /// Width and height the writer was opened with.
        expected: (u32, u32),
        /// Width and height of the frame.
        got: (u32, u32),
    },
    /// A frame rate that is zero or not a number.
    #[error("frame rate `{0}` is not a positive number: give one like 16 or 30000/1001")]
    BadFrameRate(String),
    /// An RGB buffer whose length does not match its width and height.
    #[error("an RGB frame of {width}x{height} needs {expected} bytes, got {got}")]
    BufferSize {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// `width * height * 3`.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A decoded-video tensor that is not `[3, T, H, W]` or `[1, 3, T, H, W]`.
    #[error("decoded video has shape {0:?}: expected [3, T, H, W] or [1, 3, T, H, W]")]
    TensorShape(Vec<usize>),
    /// A decoded-video tensor holding NaN, which has no colour.
    #[error(
        "decoded video contains NaN values, which have no colour: the sampler or the VAE \
         produced invalid numbers"
    )]
    NotANumber,
    /// The decoded-video tensor could not be read.
    #[error("cannot read the decoded video tensor: {0}")]
    Tensor(String),
    /// Videos that cannot be compared frame by frame.
    #[error("cannot compare videos: {0}")]
    Compare(String),
    /// A PNG output folder that already holds files.
    #[error(
        "cannot write PNG frames to {0}: the folder exists and is not empty (remove it or \
         choose another name)"
    )]
    FolderNotEmpty(PathBuf),
    /// Any other failure writing an output.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// Output being written.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Any failure reading an input.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// Input being read.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl VideoError {
    /// A write failure of `path`.
    pub(crate) fn write(path: &Path, reason: impl Display) -> Self {
        Self::Write {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// A read failure of `path`.
    pub(crate) fn read(path: &Path, reason: impl Display) -> Self {
        Self::Read {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl From<candle_core::Error> for VideoError {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(e.to_string())
    }
}

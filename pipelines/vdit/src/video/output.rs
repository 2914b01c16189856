//! [`VideoWriter`]: picks the format from the output path and streams frames into it, checking
//! that every frame has the size the video was opened with.

use super::{encoder::Encoder, gif::GifSink, png::PngFolderSink, y4m::Y4mSink};
use super::{frames_from_tensor, Frame, FrameRate, VideoError};
use candle_core::Tensor;
use std::fmt;
use std::path::{Path, PathBuf};

/// The formats vdit writes, chosen by the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// `.mp4`: H.264 (or a fallback codec) through FFmpeg.
    Mp4,
    /// `.gif`: animated GIF with a palette per frame.
    Gif,
    /// `.y4m`: uncompressed YUV4MPEG2, 4:4:4.
    Y4m,
    /// A path ending in `/` or without extension: a folder of `frame_00000.png`, ...
    PngFolder,
}

impl VideoFormat {
    /// The format a path asks for (the extension, case-insensitive).
    pub fn from_path(path: &Path) -> Result<Self, VideoError> {
        let text = path.to_string_lossy();
        if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
            return Ok(Self::PngFolder);
        }
        let Some(extension) = path.extension() else {
            return Ok(Self::PngFolder);
        };
        match extension.to_string_lossy().to_ascii_lowercase().as_str() {
            "mp4" => Ok(Self::Mp4),
            "gif" => Ok(Self::Gif),
            "y4m" => Ok(Self::Y4m),
            _ => Err(VideoError::UnknownFormat {
                path: path.to_path_buf(),
                extension: extension.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// One format's encoder behind [`VideoWriter`], which has already checked each frame's size.
/// The work on a frame that needs no other frame (colour conversion, compression) is
/// [`FrameSink::preparer`]'s and runs on several threads at once; [`FrameSink::write`] appends
/// prepared frames to the output in order.
pub(crate) trait FrameSink: Send + 'static {
    /// A frame ready to append.
    type Prepared: Send + 'static;
    /// The per-frame work; each worker thread gets its own.
    fn preparer(&self) -> impl Fn(Frame) -> Result<Self::Prepared, VideoError> + Send + 'static;
    /// Appends the next frame.
    fn write(&mut self, prepared: Self::Prepared) -> Result<(), VideoError>;
    /// Completes the output, moves it into place and describes the encoding used.
    fn finish(self) -> Result<String, VideoError>;
}

/// A video being written: `open`, then `push` each frame, then `finish`. Output appears at the
/// path only when `finish` succeeds; a writer dropped before then removes what it wrote.
///
/// The format's encoder runs on threads of its own (see [`super::encoder`]), a few frames
/// behind: pushing a frame only checks it and hands it over, so encoding and writing overlap
/// whatever produces the next frames (the VAE decoding the next chunk). An encoder error comes
/// back from the next `push` or from `finish`.
pub struct VideoWriter {
    /// `None` once finished.
    encoder: Option<Encoder>,
    path: PathBuf,
    width: u32,
    height: u32,
    fps: FrameRate,
    frames: usize,
}

impl VideoWriter {
    /// Opens `path` for `width x height` frames at `fps`: `.mp4`, `.gif`, `.y4m`, or a folder
    /// of PNG frames for a path ending in `/` or without extension. A file or a folder with
    /// anything in it at `path` is refused (see [`VideoWriter::open_with`]).
    pub fn open(path: &Path, width: u32, height: u32, fps: FrameRate) -> Result<Self, VideoError> {
        Self::open_with(path, width, height, fps, false)
    }

    /// As [`VideoWriter::open`]; with `overwrite` an existing file at `path` is replaced, but
    /// only when the new video is complete (a failed run leaves it as it was). Frame folders
    /// with files in them are never replaced.
    pub fn open_with(
        path: &Path,
        width: u32,
        height: u32,
        fps: FrameRate,
        overwrite: bool,
    ) -> Result<Self, VideoError> {
        let format = VideoFormat::from_path(path)?;
        if format == VideoFormat::PngFolder {
            // A frame folder checks for itself that it is empty.
            vdit_core::output::check_link(path)?;
        } else {
            vdit_core::output::check_new(path, overwrite)?;
        }
        if width == 0 || height == 0 {
            return Err(VideoError::EmptyFrame { width, height });
        }
        let encoder = match format {
            VideoFormat::Mp4 => open_mp4(path, width, height, fps)?,
            VideoFormat::Gif => Encoder::start(GifSink::create(path, width, height, fps)?),
            VideoFormat::Y4m => Encoder::start(Y4mSink::create(path, width, height, fps)?),
            VideoFormat::PngFolder => Encoder::start(PngFolderSink::create(path)?),
        };
        Ok(Self {
            encoder: Some(encoder),
            path: path.to_path_buf(),
            width,
            height,
            fps,
            frames: 0,
        })
    }

    /// Appends one frame, which must have the size the video was opened with.
    pub fn push(&mut self, frame: &Frame) -> Result<(), VideoError> {
        self.push_owned(frame.clone())
    }

    fn push_owned(&mut self, frame: Frame) -> Result<(), VideoError> {
        if (frame.width(), frame.height()) != (self.width, self.height) {
            return Err(VideoError::SizeChanged {
                path: self.path.clone(),
                index: self.frames,
                expected: (self.width, self.height),
                got: (frame.width(), frame.height()),
            });
        }
        let Some(encoder) = &mut self.encoder else {
            return Err(VideoError::write(
                &self.path,
                "the video is already finished",
            ));
        };
        if !encoder.send(frame) {
            // the encoder stopped on an error: report it
            let encoder = self.encoder.take().expect("checked above");
            return Err(match encoder.drain(&self.path) {
                Err(e) => e,
                Ok(_) => VideoError::write(&self.path, "the encoding thread stopped"),
            });
        }
        self.frames += 1;
        Ok(())
    }

    /// Appends decoded video, a `[3, T, H, W]` or `[1, 3, T, H, W]` tensor in [-1, 1]; returns
    /// the number of frames added.
    pub fn push_tensor(&mut self, video: &Tensor) -> Result<usize, VideoError> {
        let frames = frames_from_tensor(video)?;
        let count = frames.len();
        for frame in frames {
            self.push_owned(frame)?;
        }
        Ok(count)
    }

    /// Completes the video and moves it into place; a video without frames is an error.
    pub fn finish(mut self) -> Result<WrittenVideo, VideoError> {
        if self.frames == 0 {
            return Err(VideoError::write(&self.path, "no frames were given"));
        }
        let Some(encoder) = self.encoder.take() else {
            return Err(VideoError::write(
                &self.path,
                "the video is already finished",
            ));
        };
        let encoding = encoder.drain(&self.path)?()?;
        Ok(WrittenVideo {
            path: self.path.clone(),
            frames: self.frames,
            width: self.width,
            height: self.height,
            fps: self.fps,
            encoding,
        })
    }
}

/// An unfinished video is removed: the encoder drains and its sink is dropped before the writer
/// is gone.
impl Drop for VideoWriter {
    fn drop(&mut self) {
        if let Some(encoder) = self.encoder.take() {
            drop(encoder.drain(&self.path));
        }
    }
}

/// A generation decodes straight into the video.
impl pipelines::t2v::FrameSink for VideoWriter {
    fn push(&mut self, chunk: &Tensor) -> Result<(), pipelines::t2v::SinkError> {
        self.push_tensor(chunk)?;
        Ok(())
    }
}

#[cfg(feature = "ffmpeg")]
fn open_mp4(path: &Path, width: u32, height: u32, fps: FrameRate) -> Result<Encoder, VideoError> {
    Ok(Encoder::start(super::mp4::Mp4Sink::create(
        path, width, height, fps,
    )?))
}

#[cfg(not(feature = "ffmpeg"))]
fn open_mp4(
    path: &Path,
    _width: u32,
    _height: u32,
    _fps: FrameRate,
) -> Result<Encoder, VideoError> {
    Err(VideoError::NoFfmpeg(path.to_path_buf()))
}

/// What a finished [`VideoWriter`] produced.
#[derive(Debug, Clone)]
pub struct WrittenVideo {
    /// The output path.
    pub path: PathBuf,
    /// Frames written.
    pub frames: usize,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frame rate.
    pub fps: FrameRate,
    /// Codec and pixel format, e.g. `H.264 (libx264, yuv420p, CRF 18)`, including any fallback.
    pub encoding: String,
}

impl fmt::Display for WrittenVideo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {}: {} frames of {}x{} at {} fps, {}",
            self.path.display(),
            self.frames,
            self.width,
            self.height,
            self.fps,
            self.encoding
        )
    }
}

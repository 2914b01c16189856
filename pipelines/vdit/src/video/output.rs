//! [`VideoWriter`]: picks the format from the output path and streams frames into it, checking
//! that every frame has the size the video was opened with.

use super::{frames_from_tensor, Frame, FrameRate, VideoError};
use super::{gif::GifSink, png::PngFolderSink, y4m::Y4mSink};
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
pub(crate) trait FrameSink: Send {
    /// Appends one frame.
    fn write(&mut self, frame: &Frame) -> Result<(), VideoError>;
    /// Completes the output, moves it into place and describes the encoding used.
    fn finish(self: Box<Self>) -> Result<String, VideoError>;
}

/// A video being written: `open`, then `push` each frame, then `finish`. Output appears at the
/// path only when `finish` succeeds; a writer dropped before then removes what it wrote.
pub struct VideoWriter {
    sink: Box<dyn FrameSink>,
    path: PathBuf,
    width: u32,
    height: u32,
    fps: FrameRate,
    frames: usize,
}

impl VideoWriter {
    /// Opens `path` for `width x height` frames at `fps`: `.mp4`, `.gif`, `.y4m`, or a folder
    /// of PNG frames for a path ending in `/` or without extension.
    pub fn open(path: &Path, width: u32, height: u32, fps: FrameRate) -> Result<Self, VideoError> {
        let format = VideoFormat::from_path(path)?;
        if width == 0 || height == 0 {
            return Err(VideoError::EmptyFrame { width, height });
        }
        let sink: Box<dyn FrameSink> = match format {
            VideoFormat::Mp4 => open_mp4(path, width, height, fps)?,
            VideoFormat::Gif => Box::new(GifSink::create(path, width, height, fps)?),
            VideoFormat::Y4m => Box::new(Y4mSink::create(path, width, height, fps)?),
            VideoFormat::PngFolder => Box::new(PngFolderSink::create(path)?),
        };
        Ok(Self {
            sink,
            path: path.to_path_buf(),
            width,
            height,
            fps,
            frames: 0,
        })
    }

    /// Appends one frame. A frame of the wrong size is refused and leaves the writer usable.
    pub fn push(&mut self, frame: &Frame) -> Result<(), VideoError> {
        if (frame.width(), frame.height()) != (self.width, self.height) {
            return Err(VideoError::SizeChanged {
                path: self.path.clone(),
                index: self.frames,
                expected: (self.width, self.height),
                got: (frame.width(), frame.height()),
            });
        }
        self.sink.write(frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Appends every frame of a chunk of decoded video (`[3, T, H, W]` or `[1, 3, T, H, W]` in
    /// [-1, 1], converted by [`frames_from_tensor`]) and returns how many it held.
    pub fn push_tensor(&mut self, video: &Tensor) -> Result<usize, VideoError> {
        let frames = frames_from_tensor(video)?;
        for frame in &frames {
            self.push(frame)?;
        }
        Ok(frames.len())
    }

    /// Completes the video and moves it into place; a video without frames is an error.
    pub fn finish(self) -> Result<WrittenVideo, VideoError> {
        if self.frames == 0 {
            return Err(VideoError::write(&self.path, "no frames were given"));
        }
        let encoding = self.sink.finish()?;
        Ok(WrittenVideo {
            path: self.path,
            frames: self.frames,
            width: self.width,
            height: self.height,
            fps: self.fps,
            encoding,
        })
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
fn open_mp4(
    path: &Path,
    width: u32,
    height: u32,
    fps: FrameRate,
) -> Result<Box<dyn FrameSink>, VideoError> {
    Ok(Box::new(super::mp4::Mp4Sink::create(
        path, width, height, fps,
    )?))
}

#[cfg(not(feature = "ffmpeg"))]
fn open_mp4(
    path: &Path,
    _width: u32,
    _height: u32,
    _fps: FrameRate,
) -> Result<Box<dyn FrameSink>, VideoError> {
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

//! A folder of PNG frames, `frame_00000.png`, `frame_00001.png`, ...: lossless 8-bit RGB that
//! any tool reads. The folder is filled under a temporary name and renamed into place when
//! complete; the reader takes any folder of PNGs in file-name order.

use super::output::FrameSink;
use super::{Frame, VideoError};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use std::path::{Path, PathBuf};
use vdit_core::output::PartialOutput;

/// Deflate effort: the `image` crate's default, a fast deflate that favours writing speed over
/// file size.
const COMPRESSION: CompressionType = CompressionType::Fast;

/// Writes frames as numbered PNG files in a folder.
pub(crate) struct PngFolderSink {
    partial: PartialOutput,
    frames: usize,
}

impl PngFolderSink {
    /// Creates the temporary folder; the target may not be a file or a folder with files in it.
    pub(crate) fn create(path: &Path) -> Result<Self, VideoError> {
        if path.is_file() {
            return Err(VideoError::write(
                path,
                "a file of that name exists where the frame folder should go",
            ));
        }
        let occupied = std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some());
        if occupied {
            return Err(VideoError::FolderNotEmpty(path.to_path_buf()));
        }
        let partial = PartialOutput::new(path)?;
        std::fs::create_dir(partial.temp()).map_err(|e| VideoError::write(path, e))?;
        Ok(Self { partial, frames: 0 })
    }
}

impl FrameSink for PngFolderSink {
    /// The PNG file's bytes.
    type Prepared = Vec<u8>;

    fn preparer(&self) -> impl Fn(Frame) -> Result<Vec<u8>, VideoError> + Send + 'static {
        let target = self.partial.target().to_path_buf();
        move |frame| {
            let mut bytes = Vec::new();
            PngEncoder::new_with_quality(&mut bytes, COMPRESSION, FilterType::Adaptive)
                .write_image(
                    frame.rgb(),
                    frame.width(),
                    frame.height(),
                    ExtendedColorType::Rgb8,
                )
                .map_err(|e| VideoError::write(&target, e))?;
            Ok(bytes)
        }
    }

    fn write(&mut self, png: Vec<u8>) -> Result<(), VideoError> {
        let file = self
            .partial
            .temp()
            .join(format!("frame_{:05}.png", self.frames));
        std::fs::write(file, png).map_err(|e| VideoError::write(self.partial.target(), e))?;
        self.frames += 1;
        Ok(())
    }

    fn finish(self) -> Result<String, VideoError> {
        let target = self.partial.target();
        if target.is_dir() {
            // Checked empty at creation; rename cannot replace a folder on every platform.
            std::fs::remove_dir(target).map_err(|e| VideoError::write(target, e))?;
        }
        self.partial.commit()?;
        Ok("PNG frames (8-bit RGB, lossless)".to_string())
    }
}

/// Reads a folder of PNG images, in file-name order, as RGB frames of one size. Names must sort
/// in frame order (zero-padded numbers, as vdit writes them).
pub struct PngFolderReader {
    folder: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    width: u32,
    height: u32,
}

impl PngFolderReader {
    /// Lists the PNG files of `folder` and reads the size of the first.
    pub fn open(folder: &Path) -> Result<Self, VideoError> {
        let entries = std::fs::read_dir(folder).map_err(|e| VideoError::read(folder, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| VideoError::read(folder, e))?.path();
            let is_png = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if is_png && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let first = files
            .first()
            .ok_or_else(|| VideoError::read(folder, "the folder holds no .png files"))?;
        let (width, height) =
            image::image_dimensions(first).map_err(|e| VideoError::read(first, e))?;
        Ok(Self {
            folder: folder.to_path_buf(),
            files: files.into_iter(),
            width,
            height,
        })
    }

    /// Frame width in pixels (that of the first file).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels (that of the first file).
    pub fn height(&self) -> u32 {
        self.height
    }

    fn read(&self, file: &Path) -> Result<Frame, VideoError> {
        let image = image::open(file)
            .map_err(|e| VideoError::read(file, e))?
            .into_rgb8();
        if image.dimensions() != (self.width, self.height) {
            return Err(VideoError::read(
                file,
                format!(
                    "it is {}x{} but the first frame in {} is {}x{}",
                    image.width(),
                    image.height(),
                    self.folder.display(),
                    self.width,
                    self.height
                ),
            ));
        }
        Frame::new(self.width, self.height, image.into_raw())
    }
}

impl Iterator for PngFolderReader {
    type Item = Result<Frame, VideoError>;

    /// The next file's frame.
    fn next(&mut self) -> Option<Self::Item> {
        let file = self.files.next()?;
        Some(self.read(&file))
    }
}

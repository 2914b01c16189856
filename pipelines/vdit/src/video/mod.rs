//! Video output: decoded frames to files a person can play.
//!
//! The VAE's `[3, T, H, W]` float output becomes 8-bit RGB [`Frame`]s through
//! [`frames_from_tensor`]; a [`VideoWriter`] streams them into the format its path asks for:
//! `.mp4` (H.264 through FFmpeg, needs the `ffmpeg` feature), `.gif`, `.y4m` (4:4:4, no FFmpeg
//! needed), or a folder of PNG frames. Every writer fills a temporary name next to its target
//! and renames it into place only when complete. [`Y4mReader`] and [`PngFolderReader`] read the
//! FFmpeg-free formats back for `vdit encode`; with FFmpeg, [`read_video`] decodes MP4.

mod encoder;
mod error;
mod frame;
mod gif;
#[cfg(feature = "ffmpeg")]
mod mp4;
mod output;
mod png;
mod quality;
mod y4m;
mod yuv;

pub use error::VideoError;
pub use frame::{frames_from_tensor, to_u8, Frame, FrameRate};
#[cfg(feature = "ffmpeg")]
pub use mp4::{read_video, DecodedVideo};
pub use output::{VideoFormat, VideoWriter, WrittenVideo};
pub use png::PngFolderReader;
pub use quality::{frame_psnr, frame_ssim, mean, psnr, temporal_error, VideoQuality, PSNR_CAP};
pub use y4m::Y4mReader;

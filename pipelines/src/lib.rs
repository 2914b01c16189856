//! Text to video with Wan 2.1 as a library: settings, model folders, prompts, schedulers and
//! the pipeline that denoises latents with the DiT (any attention schedule) and decodes them
//! with the VAE into a [`t2v::FrameSink`]. The `vdit` binary (pipelines/vdit) adds the command
//! line, progress bars, video files and benchmarks; this crate needs none of them.

mod error;
pub mod schedulers;
pub mod t2v;

pub use error::{Error, Result, ResultExt};

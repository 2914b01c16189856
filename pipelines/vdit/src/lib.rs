//! The `vdit` command line over the [`pipelines`] library: argument parsing with the attention
//! methods of a [`sparse::Registry`], progress bars, video files ([`video`]) and benchmarks.

pub mod bench;
pub mod cli;
mod device;
mod render;
pub mod video;

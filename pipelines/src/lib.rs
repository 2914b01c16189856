//! The text-to-video pipeline and the `vdit` command line.

pub mod cli;
pub mod device;
pub mod video;
pub mod schedulers;
pub mod text;

//! The text-to-video pipeline and the `vdit` command line.

pub mod bench;
pub mod cli;
pub mod device;
pub mod schedulers;
pub mod t2v;
pub mod text;
pub mod video;

//! The `vdit` command line over the [`pipelines`] library: argument parsing with the attention
//! methods of a [`sparse::Registry`], progress bars, video files ([`video`]) and benchmarks.

/// `println!` for results on stdout that never panics: when stdout is closed (piped into `head`
/// that has exited, `>&-`) the line is dropped and the command still finishes its work.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod bench;
pub mod cli;
pub mod compare;
mod device;
pub mod interrupt;
mod render;
pub mod video;

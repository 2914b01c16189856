//! `vdit encode`: turns frames written where FFmpeg was missing (a PNG frame folder or a .y4m
//! file) into a playable video, normally MP4.

use crate::video::{Frame, FrameRate, PngFolderReader, VideoError, VideoWriter, Y4mReader};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Frame rate of PNG folders, which do not record one: Wan 2.1 generates 16 fps.
const PNG_FOLDER_FPS: u32 = 16;

/// Arguments of `vdit encode`.
#[derive(Args)]
pub struct EncodeArgs {
    /// Frames to encode: a folder of PNG files (in file-name order) or a .y4m file.
    pub input: PathBuf,
    /// Video to write: .mp4 (needs FFmpeg), or .gif, .y4m, or a folder for PNG frames.
    pub output: PathBuf,
    /// Frame rate, `N` or `N/D`; defaults to the .y4m header's, or 16 for PNG folders.
    #[arg(long)]
    pub fps: Option<FrameRate>,
    /// Replace an existing output file (only once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
}

/// Reads every frame of the input into the output and prints what was written.
pub fn run(args: EncodeArgs) -> Result<()> {
    let (width, height, input_fps, frames): (u32, u32, FrameRate, FrameSource) =
        if args.input.is_dir() {
            let reader = PngFolderReader::open(&args.input)?;
            let fps = FrameRate::new(PNG_FOLDER_FPS, 1)?;
            (reader.width(), reader.height(), fps, Box::new(reader))
        } else if is_y4m(&args.input) {
            let reader = Y4mReader::open(&args.input)?;
            (
                reader.width(),
                reader.height(),
                reader.frame_rate(),
                Box::new(reader),
            )
        } else if !args.input.exists() {
            bail!("{} does not exist", args.input.display());
        } else {
            bail!(
                "cannot read {}: give a folder of PNG frames or a .y4m file",
                args.input.display()
            );
        };
    let fps = args.fps.unwrap_or(input_fps);
    let _claim = vdit_core::output::Claim::acquire(&args.output)?;
    let mut writer = VideoWriter::open_with(&args.output, width, height, fps, args.overwrite)?;
    for frame in frames {
        if crate::interrupt::requested() {
            return Err(crate::interrupt::Interrupted.into());
        }
        writer.push(&frame?)?;
    }
    say!("{}", writer.finish()?);
    Ok(())
}

/// Frames as a reader hands them out.
type FrameSource = Box<dyn Iterator<Item = Result<Frame, VideoError>>>;

fn is_y4m(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("y4m"))
}

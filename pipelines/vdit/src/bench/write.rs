//! `vdit bench write`: writing a decoded-looking video (smooth moving shapes over a gradient,
//! with fine texture) to every format this build writes, timed from opening the writer to the
//! output in place, with the cores the encoders had.

use super::median;
use crate::video::{Frame, FrameRate, VideoWriter};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// One format's timing.
#[derive(Debug, Serialize)]
pub struct WriteRow {
    /// The output path's ending: `mp4`, `gif`, `y4m` or `png/` (a folder of PNG frames).
    pub format: String,
    /// Median seconds of a whole write.
    pub seconds: f64,
    /// Bytes of the output.
    pub bytes: u64,
    /// The writer's description of the encoding.
    pub encoding: String,
    /// Cores the process could use.
    pub cores: usize,
}

/// Frame `index` of the synthetic clip: a diagonal gradient, a disc moving right and a square
/// moving down, and a fixed pseudo-random texture of +-6 levels (decoded video is never flat).
fn synthetic_frame(width: u32, height: u32, index: u32) -> Result<Frame> {
    let (w, h) = (width as f32, height as f32);
    let disc = (w * (0.2 + 0.01 * index as f32), h * 0.5, h * 0.15);
    let square = (w * 0.7, h * (0.1 + 0.008 * index as f32), h * 0.12);
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32, y as f32);
            let mut pixel = [
                40.0 + 150.0 * fx / w,
                60.0 + 120.0 * fy / h,
                180.0 - 90.0 * fx / w,
            ];
            if (fx - disc.0).powi(2) + (fy - disc.1).powi(2) < disc.2 * disc.2 {
                pixel = [220.0, 40.0, 40.0];
            }
            if (fx - square.0).abs() < square.2 && (fy - square.1).abs() < square.2 {
                pixel = [240.0, 220.0, 60.0];
            }
            let texture = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 13;
            rgb.extend(pixel.map(|v| (v + texture as f32 - 6.0).clamp(0.0, 255.0) as u8));
        }
    }
    Ok(Frame::new(width, height, rgb)?)
}

/// Writes `frames` frames of `width x height` at 16 fps to each format `runs` times, in a
/// folder of its own under `out` that is removed afterwards, and prints a table.
pub fn run(width: u32, height: u32, frames: u32, runs: usize, out: &Path) -> Result<Vec<WriteRow>> {
    anyhow::ensure!(frames > 0, "--frames must be at least 1");
    let clip = (0..frames)
        .map(|i| synthetic_frame(width, height, i))
        .collect::<Result<Vec<_>>>()?;
    let folder = out.join(format!("write-{}", std::process::id()));
    std::fs::create_dir_all(out)?;
    std::fs::create_dir(&folder)
        .with_context(|| format!("could not create {}", folder.display()))?;
    let result = time_formats(&clip, runs, &folder);
    std::fs::remove_dir_all(&folder)?;
    let rows = result?;
    say!("| format | s | bytes | encoding |\n| --- | --- | --- | --- |");
    for row in &rows {
        say!(
            "| {} | {:.3} | {} | {} |",
            row.format,
            row.seconds,
            row.bytes,
            row.encoding
        );
    }
    Ok(rows)
}

fn time_formats(clip: &[Frame], runs: usize, folder: &Path) -> Result<Vec<WriteRow>> {
    let fps = FrameRate::new(16, 1)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let formats: &[&str] = if cfg!(feature = "ffmpeg") {
        &["y4m", "png/", "gif", "mp4"]
    } else {
        &["y4m", "png/", "gif"]
    };
    let mut rows = Vec::new();
    for &format in formats {
        let mut times = Vec::new();
        let mut written = None;
        for run in 0..runs.max(1) {
            let path = folder.join(format!("run{run}.{format}"));
            let started = Instant::now();
            let mut writer = VideoWriter::open(&path, clip[0].width(), clip[0].height(), fps)?;
            for frame in clip {
                writer.push(frame)?;
            }
            let video = writer.finish()?;
            times.push(started.elapsed().as_secs_f64());
            written = Some((pipelines::t2v::output_bytes(&path)?, video.encoding));
        }
        let (bytes, encoding) = written.expect("at least one run");
        rows.push(WriteRow {
            format: format.to_string(),
            seconds: median(&times).expect("at least one run"),
            bytes,
            encoding,
            cores,
        });
    }
    Ok(rows)
}

//! Animated GIF (`.gif`) through the `gif` crate: one 256-colour palette per frame (NeuQuant at
//! speed 10), looping forever. Quantising and LZW-compressing a frame needs no other frame, so
//! both run on the encoder's worker threads; the writer only appends the compressed frames.
//!
//! GIF delays are whole centiseconds, so frame `i` lasts `c(i + 1) - c(i)` where `c(n)` is
//! `n / fps` seconds rounded to centiseconds: at 16 fps delays of 6 and 7 cs alternate and the
//! running time never drifts from `n / fps` by more than 5 ms.

use super::output::FrameSink;
use super::{Frame, FrameRate, VideoError};
use gif::{Encoder, Repeat};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use vdit_core::output::PartialOutput;

/// NeuQuant sampling: 1 is slowest and best, 30 fastest; 10 is the `gif` crate's default.
const QUANTIZER_SPEED: i32 = 10;

/// The shortest frame delay players honour: browsers show frames of 0 or 1 cs for 10 cs.
const MIN_DELAY_CS: u64 = 2;

/// Writes an animated GIF frame by frame.
pub(crate) struct GifSink {
    encoder: Encoder<BufWriter<File>>,
    /// Frame width and height (every frame has them: [`super::VideoWriter`] checks).
    size: (u16, u16),
    fps: FrameRate,
    frames: u64,
    partial: PartialOutput,
}

impl GifSink {
    /// Creates the temporary file; GIF frames are at most 65535 pixels on a side.
    pub(crate) fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: FrameRate,
    ) -> Result<Self, VideoError> {
        let (Ok(width), Ok(height)) = (u16::try_from(width), u16::try_from(height)) else {
            return Err(VideoError::write(
                path,
                format!("GIF frames are at most 65535x65535, got {width}x{height}"),
            ));
        };
        let delays = [start_cs(1, fps), start_cs(2, fps) - start_cs(1, fps)];
        if delays
            .iter()
            .any(|&d| d < MIN_DELAY_CS || d > u64::from(u16::MAX))
        {
            return Err(VideoError::write(
                path,
                format!(
                    "GIF cannot play {fps} fps: its frame delays are whole centiseconds from \
                     {MIN_DELAY_CS} (50 fps) to 65535; choose a rate in that range, or write \
                     .mp4 or .y4m"
                ),
            ));
        }
        let partial = PartialOutput::new(path)?;
        let file = File::create(partial.temp()).map_err(|e| VideoError::write(path, e))?;
        let mut encoder = Encoder::new(BufWriter::new(file), width, height, &[])
            .map_err(|e| VideoError::write(path, e))?;
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| VideoError::write(path, e))?;
        Ok(Self {
            encoder,
            size: (width, height),
            fps,
            frames: 0,
            partial,
        })
    }
}

/// Centiseconds from the start of the video to the start of frame `n`, rounded half up.
fn start_cs(n: u64, fps: FrameRate) -> u64 {
    let (num, den) = (u64::from(fps.num()), u64::from(fps.den()));
    (n * 100 * den * 2 + num) / (2 * num)
}

impl FrameSink for GifSink {
    /// The frame quantised to its palette and LZW-compressed, without its delay.
    type Prepared = gif::Frame<'static>;

    fn preparer(&self) -> impl Fn(Frame) -> Result<Self::Prepared, VideoError> + Send + 'static {
        let (width, height) = self.size;
        move |frame| {
            let mut indexed =
                gif::Frame::from_rgb_speed(width, height, frame.rgb(), QUANTIZER_SPEED);
            indexed.make_lzw_pre_encoded();
            Ok(indexed)
        }
    }

    fn write(&mut self, mut frame: gif::Frame<'static>) -> Result<(), VideoError> {
        let n = self.frames;
        let delay_cs = start_cs(n + 1, self.fps) - start_cs(n, self.fps);
        frame.delay = u16::try_from(delay_cs).unwrap_or(u16::MAX);
        self.encoder
            .write_lzw_pre_encoded_frame(&frame)
            .map_err(|e| VideoError::write(self.partial.target(), e))?;
        self.frames += 1;
        Ok(())
    }

    fn finish(self) -> Result<String, VideoError> {
        let Self {
            encoder, partial, ..
        } = self;
        let target = partial.target();
        // Writes the GIF trailer.
        let mut file = encoder
            .into_inner()
            .map_err(|e| VideoError::write(target, e))?;
        file.flush().map_err(|e| VideoError::write(target, e))?;
        file.get_ref()
            .sync_all()
            .map_err(|e| VideoError::write(target, e))?;
        drop(file);
        partial.commit()?;
        Ok("GIF (256-colour palette per frame, delays in whole centiseconds)".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_starts_track_the_frame_rate() {
        let sixteen = FrameRate::new(16, 1).unwrap();
        let delays: Vec<u64> = (0..8)
            .map(|n| start_cs(n + 1, sixteen) - start_cs(n, sixteen))
            .collect();
        // 6.25 cs per frame: starts at 0, 6.25, 12.5, 18.75, 25 -> 0, 6, 13, 19, 25 (halves up).
        assert_eq!(delays, [6, 7, 6, 6, 6, 7, 6, 6]);
        let ntsc = FrameRate::new(30000, 1001).unwrap();
        for n in [1u64, 29, 30, 1000, 100_000] {
            let exact = n as f64 * 100.0 * 1001.0 / 30000.0;
            assert!((start_cs(n, ntsc) as f64 - exact).abs() <= 0.5, "frame {n}");
        }
    }
}

//! Animated GIF (`.gif`) through the `image` crate's encoder: one 256-colour palette per frame
//! (NeuQuant at speed 10), looping forever.
//!
//! GIF delays are whole centiseconds, so frame `i` lasts `c(i + 1) - c(i)` where `c(n)` is
//! `n / fps` seconds rounded to centiseconds: at 16 fps delays of 6 and 7 cs alternate and the
//! running time never drifts from `n / fps` by more than 5 ms.

use super::output::FrameSink;
use super::partial::PartialOutput;
use super::{Frame, FrameRate, VideoError};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, RgbaImage};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// NeuQuant sampling: 1 is slowest and best, 30 fastest; 10 is the `gif` crate's default.
const QUANTIZER_SPEED: i32 = 10;

/// Writes an animated GIF frame by frame.
pub(crate) struct GifSink {
    encoder: GifEncoder<SharedFile>,
    file: SharedFile,
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
        if width > u32::from(u16::MAX) || height > u32::from(u16::MAX) {
            return Err(VideoError::write(
                path,
                format!("GIF frames are at most 65535x65535, got {width}x{height}"),
            ));
        }
        let partial = PartialOutput::new(path)?;
        let file = File::create(partial.temp()).map_err(|e| VideoError::write(path, e))?;
        let file = SharedFile(Arc::new(Mutex::new(BufWriter::new(file))));
        let mut encoder = GifEncoder::new_with_speed(file.clone(), QUANTIZER_SPEED);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| VideoError::write(path, e))?;
        Ok(Self {
            encoder,
            file,
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
    fn write(&mut self, frame: &Frame) -> Result<(), VideoError> {
        let rgba: Vec<u8> = frame
            .rgb()
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let image =
            RgbaImage::from_raw(frame.width(), frame.height(), rgba).expect("four bytes per pixel");
        let n = self.frames;
        let delay_cs = start_cs(n + 1, self.fps) - start_cs(n, self.fps);
        let delay = Delay::from_numer_denom_ms((delay_cs * 10) as u32, 1);
        self.encoder
            .encode_frame(image::Frame::from_parts(image, 0, 0, delay))
            .map_err(|e| VideoError::write(self.partial.target(), e))?;
        self.frames += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<String, VideoError> {
        let Self {
            encoder,
            file,
            partial,
            ..
        } = *self;
        // Dropping the encoder writes the GIF trailer into the shared buffer.
        drop(encoder);
        file.close()
            .map_err(|e| VideoError::write(partial.target(), e))?;
        partial.commit()?;
        Ok("GIF (256-colour palette per frame, delays in whole centiseconds)".to_string())
    }
}

/// The output file, shared between the encoder (which owns a handle and writes its trailer when
/// dropped) and the sink, which flushes it afterwards and so sees every write error.
#[derive(Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl SharedFile {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, BufWriter<File>>> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("an earlier write panicked"))
    }

    /// Flushes the buffer and syncs the file to disk.
    fn close(&self) -> io::Result<()> {
        let mut file = self.lock()?;
        file.flush()?;
        file.get_ref().sync_all()
    }
}

impl Write for SharedFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.lock()?.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock()?.flush()
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

//! The rasteriser: draws a scene into RGB frames with 4x4 supersampled edges.

use super::scene::{Object, Scene};
use crate::error::{Error, Result};

/// RGB video, frame-major then row-major, channels interleaved: byte
/// `((frame * height + y) * width + x) * 3 + channel`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Video {
    frames: usize,
    height: usize,
    width: usize,
    rgb: Vec<u8>,
}

impl Video {
    /// A video of `frames` x `height` x `width` pixels from `rgb`, which must hold exactly
    /// `frames * height * width * 3` bytes; no size may be zero.
    pub fn new(frames: usize, height: usize, width: usize, rgb: Vec<u8>) -> Result<Self> {
        let expected = byte_len(frames, height, width)?;
        if rgb.len() != expected {
            return Err(Error::Usage(format!(
                "a {frames}x{height}x{width} RGB video holds {expected} bytes, not {}",
                rgb.len()
            )));
        }
        Ok(Self {
            frames,
            height,
            width,
            rgb,
        })
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Rows per frame.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Pixels per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// All bytes, in the layout described on [`Video`].
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The bytes, given back.
    pub fn into_rgb(self) -> Vec<u8> {
        self.rgb
    }

    /// The `height * width * 3` bytes of frame `index`, if there is such a frame.
    pub fn frame(&self, index: usize) -> Option<&[u8]> {
        let len = self.height * self.width * 3;
        self.rgb.get(index.checked_mul(len)?..)?.get(..len)
    }
}

/// Supersamples per pixel along each axis.
const SUBSAMPLES: usize = 4;

/// Draws `scene` into `frames` frames of `height` x `width`. Each object's centre moves linearly
/// from its start (frame 0) to its end (the last frame); a one-frame video shows the start.
pub fn render(scene: &Scene, frames: usize, height: usize, width: usize) -> Result<Video> {
    let len = byte_len(frames, height, width)?;
    let mut rgb = Vec::new();
    rgb.try_reserve_exact(len).map_err(|e| {
        Error::Usage(format!(
            "cannot hold a {frames}x{height}x{width} video ({len} bytes): {e}"
        ))
    })?;
    let background = scene.background().rgb();
    rgb.extend(std::iter::repeat_n(background, len / 3).flatten());
    let frame_len = len / frames;
    for (index, frame) in rgb.chunks_exact_mut(frame_len).enumerate() {
        let progress = if frames > 1 {
            index as f64 / (frames - 1) as f64
        } else {
            0.0
        };
        for object in scene.objects() {
            draw(object, progress, frame, height, width);
        }
    }
    Video::new(frames, height, width, rgb)
}

/// Number of bytes of a video, checked for zero sizes and overflow.
fn byte_len(frames: usize, height: usize, width: usize) -> Result<usize> {
    if frames == 0 || height == 0 || width == 0 {
        return Err(Error::Usage(format!(
            "a video of {frames}x{height}x{width} pixels is empty; give at least one frame, row and \
             column"
        )));
    }
    frames
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| {
            Error::Usage(format!(
                "a video of {frames}x{height}x{width} pixels is too large to address"
            ))
        })
}

/// Blends `object` at `progress` through the clip over one frame, by the share of each pixel's
/// supersamples that it covers.
fn draw(object: &Object, progress: f64, frame: &mut [u8], height: usize, width: usize) {
    let (cx, cy) = object.centre(progress);
    let (cx, cy) = (cx * width as f64, cy * height as f64);
    let half = object.size * height.min(width) as f64;
    let rows = pixel_range(cy - half, cy + half, height);
    let columns = pixel_range(cx - half, cx + half, width);
    let colour = object.colour.rgb();
    let step = 1.0 / SUBSAMPLES as f64;
    for y in rows {
        for x in columns.clone() {
            let mut covered = 0usize;
            for sy in 0..SUBSAMPLES {
                let dy = y as f64 + (sy as f64 + 0.5) * step - cy;
                for sx in 0..SUBSAMPLES {
                    let dx = x as f64 + (sx as f64 + 0.5) * step - cx;
                    covered += usize::from(object.shape.contains(dx, dy, half));
                }
            }
            if covered == 0 {
                continue;
            }
            let share = covered as f64 / (SUBSAMPLES * SUBSAMPLES) as f64;
            let at = (y * width + x) * 3;
            if let Some(pixel) = frame.get_mut(at..at + 3) {
                for (value, &target) in pixel.iter_mut().zip(&colour) {
                    let blended = f64::from(*value) * (1.0 - share) + f64::from(target) * share;
                    *value = blended.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// The pixel indices in `0..limit` that the span from `low` to `high` touches.
fn pixel_range(low: f64, high: f64, limit: usize) -> std::ops::Range<usize> {
    let first = low.floor().clamp(0.0, limit as f64) as usize;
    let last = high.ceil().clamp(0.0, limit as f64) as usize;
    first..last
}

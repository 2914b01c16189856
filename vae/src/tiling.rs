//! Spatial tiling for decoding: overlapping latent tiles decoded separately (each with its own
//! time cache) and blended with linear ramps across the overlaps, so the activations of one
//! decode step scale with the tile, not the frame.

use crate::conv::TimeCache;
use candle_core::{DType, Device, Result, Tensor};

/// Tile geometry, in latent pixels (one latent pixel is 8x8 video pixels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Tile height and width.
    pub size: usize,
    /// Minimum overlap of neighbouring tiles, also the length of the blending ramp.
    pub overlap: usize,
}

impl Default for Tiling {
    /// 32-latent-pixel (256-pixel) tiles overlapping by 8 (64 pixels), diffusers' geometry.
    fn default() -> Self {
        Self {
            size: 32,
            overlap: 8,
        }
    }
}

impl Tiling {
    /// Checks the geometry: a positive size larger than the overlap.
    pub fn validate(&self) -> crate::Result<()> {
        if self.size == 0 || self.overlap >= self.size {
            return Err(crate::Error::Input(format!(
                "tiling needs 0 <= overlap < size, got size {} and overlap {}",
                self.size, self.overlap
            )));
        }
        Ok(())
    }
}

/// A tile's extent along one axis, in latent pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First latent pixel.
    pub start: usize,
    /// Latent pixels covered.
    pub len: usize,
}

/// Covers `[0, total)` with the fewest tiles of `tiling.size` overlapping by at least
/// `tiling.overlap`, spread evenly; one span when the axis fits in a tile.
pub fn spans(total: usize, tiling: &Tiling) -> Vec<Span> {
    if total <= tiling.size {
        return vec![Span {
            start: 0,
            len: total,
        }];
    }
    let stride = tiling.size - tiling.overlap;
    let count = (total - tiling.overlap).div_ceil(stride);
    let room = total - tiling.size;
    (0..count)
        .map(|i| Span {
            start: (i * room + (count - 1) / 2) / (count - 1),
            len: tiling.size,
        })
        .collect()
}

/// Blending weight of each output pixel of tile `index` along one axis: ramps of `ramp` pixels
/// rise from its leading edge and fall to its trailing edge where it has neighbours, 1 elsewhere.
pub fn axis_weights(spans: &[Span], index: usize, ratio: usize, ramp: usize) -> Vec<f32> {
    let len = spans[index].len * ratio;
    let ramp = ramp as f32;
    (0..len)
        .map(|p| {
            let mut w = 1f32;
            if ramp > 0.0 && index > 0 {
                w = w.min((p as f32 + 0.5) / ramp);
            }
            if ramp > 0.0 && index + 1 < spans.len() {
                w = w.min((len as f32 - p as f32 - 0.5) / ramp);
            }
            w
        })
        .collect()
}

/// Decodes latent frames tile by tile: the tiles covering the frame, their blending masks, and
/// one time cache per tile (each tile is its own stream).
pub struct TiledDecoder {
    /// Every tile as (rows, columns), row-major.
    tiles: Vec<(Span, Span)>,
    /// Per tile, its `[1, 1, 1, h, w]` f32 weight mask in video pixels.
    masks: Vec<Tensor>,
    /// Sum of all masks placed on the frame, `[1, 1, 1, H, W]`.
    total_weight: Tensor,
    caches: Vec<TimeCache>,
    /// Latent height and width, and video pixels per latent pixel.
    frame: (usize, usize, usize),
}

impl TiledDecoder {
    /// Lays tiles over a `height x width` latent frame (`ratio` video pixels per latent pixel);
    /// `None` when a single tile covers it.
    pub fn new(
        height: usize,
        width: usize,
        ratio: usize,
        tiling: &Tiling,
        device: &Device,
    ) -> crate::Result<Option<Self>> {
        tiling.validate()?;
        let rows = spans(height, tiling);
        let cols = spans(width, tiling);
        if rows.len() * cols.len() == 1 {
            return Ok(None);
        }
        let frame = (height, width, ratio);
        let ramp = tiling.overlap * ratio;
        let mut tiles = vec![];
        let mut masks = vec![];
        let mut total =
            Tensor::zeros((1, 1, 1, height * ratio, width * ratio), DType::F32, device)?;
        for (i, row) in rows.iter().enumerate() {
            let wy = axis_weights(&rows, i, ratio, ramp);
            let wy = Tensor::from_vec(wy, (row.len * ratio, 1), device)?;
            for (j, col) in cols.iter().enumerate() {
                let wx = axis_weights(&cols, j, ratio, ramp);
                let wx = Tensor::from_vec(wx, (1, col.len * ratio), device)?;
                let mask =
                    wy.broadcast_mul(&wx)?
                        .reshape((1, 1, 1, row.len * ratio, col.len * ratio))?;
                total = (total + place(&mask, (*row, *col), frame)?)?;
                tiles.push((*row, *col));
                masks.push(mask);
            }
        }
        let caches = tiles.iter().map(|_| TimeCache::new()).collect();
        Ok(Some(Self {
            tiles,
            masks,
            total_weight: total,
            caches,
            frame,
        }))
    }

    /// Decodes the next latent frame `[b, 1, z, h, w]` of the stream: each tile's part through
    /// `decode_tile` (latent part and that tile's cache to frames `[b, n, c, h', w']`), blended
    /// into f32 frames `[b, n, c, H, W]`.
    pub fn decode_frame(
        &mut self,
        latent: &Tensor,
        decode_tile: &dyn Fn(&Tensor, &mut TimeCache) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for ((tile, mask), cache) in self.tiles.iter().zip(&self.masks).zip(&mut self.caches) {
            let (rows, cols) = *tile;
            let part = latent
                .narrow(3, rows.start, rows.len)?
                .narrow(4, cols.start, cols.len)?
                .contiguous()?;
            let frames = decode_tile(&part, cache)?.to_dtype(DType::F32)?;
            let weighted = place(&frames.broadcast_mul(mask)?, *tile, self.frame)?;
            sum = Some(match sum {
                Some(s) => (s + weighted)?,
                None => weighted,
            });
        }
        sum.expect("a split frame has tiles")
            .broadcast_div(&self.total_weight)
    }
}

/// Zero-pads a tile's `[.., h, w]` video pixels to the whole `[.., H, W]` frame at its place.
fn place(
    tile: &Tensor,
    (row, col): (Span, Span),
    (height, width, ratio): (usize, usize, usize),
) -> Result<Tensor> {
    let rank = tile.rank();
    tile.pad_with_zeros(
        rank - 2,
        row.start * ratio,
        (height - row.start - row.len) * ratio,
    )?
    .pad_with_zeros(
        rank - 1,
        col.start * ratio,
        (width - col.start - col.len) * ratio,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_axis_with_at_least_the_overlap() {
        let tiling = Tiling {
            size: 8,
            overlap: 3,
        };
        assert_eq!(spans(8, &tiling), vec![Span { start: 0, len: 8 }]);
        assert_eq!(spans(5, &tiling), vec![Span { start: 0, len: 5 }]);
        for total in 9..60 {
            let s = spans(total, &tiling);
            assert_eq!(s[0].start, 0);
            assert_eq!(s.last().map(|l| l.start + l.len), Some(total));
            for pair in s.windows(2) {
                let overlap = pair[0].start + pair[0].len - pair[1].start;
                assert!((3..8).contains(&overlap), "{total}: {s:?}");
            }
        }
    }

    #[test]
    fn ramps_rise_and_fall_only_towards_neighbours() {
        let s = spans(
            12,
            &Tiling {
                size: 8,
                overlap: 4,
            },
        );
        assert_eq!(s.len(), 2);
        let first = axis_weights(&s, 0, 1, 4);
        let second = axis_weights(&s, 1, 1, 4);
        assert_eq!(first[..4], [1.0; 4]);
        assert_eq!(first[4..], [0.875, 0.625, 0.375, 0.125]);
        assert_eq!(second[..4], [0.125, 0.375, 0.625, 0.875]);
        // across the overlap the two ramps sum to one
        for p in 0..4 {
            assert_eq!(first[4 + p] + second[p], 1.0);
        }
    }
}

//! The detector: finds each object colour's blob in every frame of a video and reads its area,
//! centroid, shape and motion.
//!
//! Each pixel takes the nearest of the object colours and the background colour (Euclidean in
//! RGB) and is dropped when that is the background or lies more than [`MAX_COLOUR_DISTANCE`]
//! away. Per frame and colour the largest solid blob is kept (see `blob`), so stray pixels and
//! thin blended edges do not count. A colour is detected when its blob's median area over the
//! frames is at least [`MIN_AREA_FRACTION`] of the frame.

use super::blob::{largest_blob, Blob};
use crate::data::{Colour, Motion, Shape, Video};

/// Farthest a pixel may lie from its nearest palette colour and still count (RGB units).
pub const MAX_COLOUR_DISTANCE: f64 = 100.0;
/// Smallest median blob area, as a fraction of the frame, for a colour to count as an object.
pub const MIN_AREA_FRACTION: f64 = 0.01;
/// Smallest centroid displacement, as a fraction of the frame side along its axis, that counts
/// as motion.
pub const MIN_DISPLACEMENT: f64 = 0.10;
/// A blob's start and end positions are the medians over the first and the last
/// 1/`END_PART` of the frames where it is seen (at least one frame each).
const END_PART: usize = 4;

/// One object colour found in a video.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// The object's colour.
    pub colour: Colour,
    /// Pixels of its blob in each frame (0 where it is not seen).
    pub area: Vec<usize>,
    /// Mean pixel centre (x, y) of its blob in each frame, in pixels; y grows downward.
    pub centroid: Vec<Option<(f64, f64)>>,
    /// The shape its blob has, read in the frames where the blob touches no frame edge when there
    /// are any.
    pub shape: Option<Shape>,
    /// The direction its centroid moves from the first frames to the last, if far enough.
    pub motion: Option<Motion>,
}

impl Detection {
    /// The median of its per-frame areas.
    pub fn median_area(&self) -> usize {
        median_area(&self.area)
    }
}

/// The objects in `video` on a `background`, largest median area first. The background colour
/// is never reported, even when it is an object colour.
pub fn detect(video: &Video, background: Colour) -> Vec<Detection> {
    let candidates: Vec<Colour> = Colour::OBJECT
        .into_iter()
        .filter(|&c| c != background)
        .collect();
    let palette = Palette::new(&candidates, background);
    let (height, width) = (video.height(), video.width());
    let pixels = height * width;
    let mut blobs: Vec<Vec<Option<Blob>>> = vec![Vec::new(); candidates.len()];
    for frame in video.rgb().chunks_exact(pixels * 3) {
        let labels: Vec<Option<usize>> = frame.chunks_exact(3).map(|p| palette.label(p)).collect();
        for (index, per_frame) in blobs.iter_mut().enumerate() {
            let mask: Vec<bool> = labels.iter().map(|&l| l == Some(index)).collect();
            per_frame.push(largest_blob(&mask, height, width));
        }
    }
    let min_area = MIN_AREA_FRACTION * pixels as f64;
    let mut found: Vec<Detection> = candidates
        .into_iter()
        .zip(blobs)
        .filter_map(|(colour, blobs)| {
            let area: Vec<usize> = blobs
                .iter()
                .map(|b| b.as_ref().map_or(0, |b| b.area))
                .collect();
            if (median_area(&area) as f64) < min_area {
                return None;
            }
            Some(Detection {
                colour,
                area,
                centroid: blobs
                    .iter()
                    .map(|b| b.as_ref().map(|b| b.centroid))
                    .collect(),
                shape: shape_of(&blobs, min_area, height, width),
                motion: motion_of(&blobs, height, width),
            })
        })
        .collect();
    found.sort_by_key(|d| std::cmp::Reverse(d.median_area()));
    found
}

/// The colours a pixel can take: the candidates, labelled by index, and the background.
struct Palette {
    entries: Vec<(Option<usize>, [f64; 3])>,
}

impl Palette {
    /// `candidates` labelled 0, 1, ..., and `background` unlabelled.
    fn new(candidates: &[Colour], background: Colour) -> Self {
        let entries = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (Some(i), c.rgb()))
            .chain([(None, background.rgb())])
            .map(|(label, rgb)| (label, rgb.map(f64::from)))
            .collect();
        Self { entries }
    }

    /// The label of the colour nearest `pixel`, or `None` for the background or when nothing is
    /// within [`MAX_COLOUR_DISTANCE`].
    fn label(&self, pixel: &[u8]) -> Option<usize> {
        let squared = |rgb: &[f64; 3]| -> f64 {
            pixel
                .iter()
                .zip(rgb)
                .map(|(&p, &q)| (f64::from(p) - q).powi(2))
                .sum()
        };
        self.entries
            .iter()
            .map(|(label, rgb)| (*label, squared(rgb)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|(_, d)| *d <= MAX_COLOUR_DISTANCE * MAX_COLOUR_DISTANCE)
            .and_then(|(label, _)| label)
    }
}

/// The median of `areas` (the upper middle for an even count), 0 when empty.
fn median_area(areas: &[usize]) -> usize {
    let mut sorted = areas.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// The shape that best explains the blob over the frames where it is at least `min_area`,
/// using only those where it touches no frame edge if there are any (an object cut off by the
/// edge has a misleading outline); `None` if the blob is never that large.
///
/// In each such frame every shape is laid over the blob at the blob's area and centroid, and
/// scores the share of the blob's pixels it covers; the shape with the highest total wins. The
/// outline as a whole decides, so a ragged edge or a stray pixel barely moves the scores.
fn shape_of(blobs: &[Option<Blob>], min_area: f64, height: usize, width: usize) -> Option<Shape> {
    let large: Vec<&Blob> = blobs
        .iter()
        .flatten()
        .filter(|b| b.area as f64 >= min_area)
        .collect();
    let clear: Vec<&Blob> = large
        .iter()
        .copied()
        .filter(|b| {
            b.columns.0 > 0 && b.rows.0 > 0 && b.columns.1 + 1 < width && b.rows.1 + 1 < height
        })
        .collect();
    let measured = if clear.is_empty() { large } else { clear };
    if measured.is_empty() {
        return None;
    }
    Shape::ALL
        .into_iter()
        .map(|shape| {
            let score: f64 = measured.iter().map(|b| overlap(shape, b)).sum();
            (shape, score)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(shape, _)| shape)
}

/// The share of `blob`'s pixel centres inside `shape` of the blob's area, placed so that its
/// centroid is the blob's.
fn overlap(shape: Shape, blob: &Blob) -> f64 {
    let half = (blob.area as f64 / shape.area(1.0)).sqrt();
    let centre = (blob.centroid.0, blob.centroid.1 - shape.centroid_drop(half));
    let inside = blob
        .pixels
        .iter()
        .filter(|&&(x, y)| {
            let dx = x as f64 + 0.5 - centre.0;
            let dy = y as f64 + 0.5 - centre.1;
            shape.contains(dx, dy, half)
        })
        .count();
    inside as f64 / blob.area as f64
}

/// The dominant direction from the median centroid of the first quarter of the frames where
/// the blob is seen to that of the last quarter, if it moved at least [`MIN_DISPLACEMENT`].
fn motion_of(blobs: &[Option<Blob>], height: usize, width: usize) -> Option<Motion> {
    let seen: Vec<(f64, f64)> = blobs.iter().flatten().map(|b| b.centroid).collect();
    let count = (seen.len() / END_PART).max(1);
    let first = median_point(seen.get(..count)?)?;
    let last = median_point(seen.get(seen.len().checked_sub(count)?..)?)?;
    let dx = (last.0 - first.0) / width as f64;
    let dy = (last.1 - first.1) / height as f64;
    if dx.abs().max(dy.abs()) < MIN_DISPLACEMENT {
        None
    } else if dx.abs() >= dy.abs() {
        Some(if dx > 0.0 {
            Motion::Right
        } else {
            Motion::Left
        })
    } else {
        Some(if dy > 0.0 { Motion::Down } else { Motion::Up })
    }
}

/// The per-axis median of `points`, `None` when there are none.
fn median_point(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
    Some((median(&mut xs)?, median(&mut ys)?))
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let upper = *values.get(values.len() / 2)?;
    let lower = *values.get(values.len().saturating_sub(1) / 2)?;
    Some((lower + upper) / 2.0)
}

//! RGB <-> Y'CbCr with BT.601 coefficients in limited ("TV") range, the colour conversion
//! behind the Y4M and MP4 writers and the Y4M reader, and the chroma layouts they use.
//!
//! Luma is `16 + 219 * Y'` and chroma `128 + 224 * P` with `Y' = 0.299 R + 0.587 G + 0.114 B`
//! on RGB scaled to [0, 1]. 4:2:0 chroma is the mean of each 2x2 block before rounding; reading
//! it back repeats each chroma sample over its block.

use super::Frame;

const KR: f32 = 0.299;
const KB: f32 = 0.114;
const KG: f32 = 1.0 - KR - KB;

/// How many chroma samples a picture has relative to its luma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chroma {
    /// 4:4:4: one chroma sample per pixel.
    Full,
    /// 4:2:0: one chroma sample per 2x2 block (rounded up at odd edges).
    Quarter,
}

impl Chroma {
    /// Width and height of each chroma plane of a `width x height` picture.
    pub(crate) fn plane_size(self, width: usize, height: usize) -> (usize, usize) {
        match self {
            Chroma::Full => (width, height),
            Chroma::Quarter => (width.div_ceil(2), height.div_ceil(2)),
        }
    }

    fn block(self) -> usize {
        match self {
            Chroma::Full => 1,
            Chroma::Quarter => 2,
        }
    }
}

/// A picture as three planes, Y then Cb then Cr, each row by row without padding.
pub(crate) struct YuvPlanes {
    /// Luma, `width * height` bytes.
    pub y: Vec<u8>,
    /// Blue-difference chroma.
    pub cb: Vec<u8>,
    /// Red-difference chroma.
    pub cr: Vec<u8>,
}

fn quantize(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Y', Cb and Cr of one pixel in [0, 1] RGB, unquantised: `(luma, pb, pr)`.
fn components([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let luma = KR * r + KG * g + KB * b;
    (
        luma,
        (b - luma) / (2.0 * (1.0 - KB)),
        (r - luma) / (2.0 * (1.0 - KR)),
    )
}

/// Converts an RGB frame to Y'CbCr planes with the given chroma layout.
pub(crate) fn rgb_to_yuv(frame: &Frame, chroma: Chroma) -> YuvPlanes {
    match chroma {
        Chroma::Full => rgb_to_yuv444(frame),
        Chroma::Quarter => rgb_to_yuv_averaged(frame, chroma),
    }
}

/// 4:4:4: every pixel its own samples. (Frames are converted on several threads at once, see
/// [`super::encoder`].)
fn rgb_to_yuv444(frame: &Frame) -> YuvPlanes {
    let pixels = frame.rgb().len() / 3;
    let (mut y, mut cb, mut cr) = (
        Vec::with_capacity(pixels),
        Vec::with_capacity(pixels),
        Vec::with_capacity(pixels),
    );
    for rgb in frame.rgb().chunks_exact(3) {
        let (luma, pb, pr) = components([rgb[0], rgb[1], rgb[2]].map(|v| f32::from(v) / 255.0));
        y.push(quantize(16.0 + 219.0 * luma));
        cb.push(quantize(128.0 + 224.0 * pb));
        cr.push(quantize(128.0 + 224.0 * pr));
    }
    YuvPlanes { y, cb, cr }
}

/// Subsampled chroma: the mean of each block's chroma before rounding.
fn rgb_to_yuv_averaged(frame: &Frame, chroma: Chroma) -> YuvPlanes {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (cw, ch) = chroma.plane_size(w, h);
    let mut y = Vec::with_capacity(w * h);
    let mut pb = vec![0f32; cw * ch];
    let mut pr = vec![0f32; cw * ch];
    let mut count = vec![0f32; cw * ch];
    let block = chroma.block();
    for (row, pixels) in frame.rgb().chunks_exact(w * 3).enumerate() {
        for (col, rgb) in pixels.chunks_exact(3).enumerate() {
            let (luma, b_diff, r_diff) =
                components([rgb[0], rgb[1], rgb[2]].map(|v| f32::from(v) / 255.0));
            y.push(quantize(16.0 + 219.0 * luma));
            let at = (row / block) * cw + col / block;
            pb[at] += b_diff;
            pr[at] += r_diff;
            count[at] += 1.0;
        }
    }
    let to_chroma = |sums: Vec<f32>| {
        sums.iter()
            .zip(&count)
            .map(|(s, n)| quantize(128.0 + 224.0 * s / n))
            .collect()
    };
    YuvPlanes {
        y,
        cb: to_chroma(pb),
        cr: to_chroma(pr),
    }
}

/// Converts Y'CbCr planes of a `width x height` picture back to an RGB frame.
pub(crate) fn yuv_to_rgb(width: u32, height: u32, planes: &YuvPlanes, chroma: Chroma) -> Frame {
    let (w, h) = (width as usize, height as usize);
    let (cw, _) = chroma.plane_size(w, h);
    let block = chroma.block();
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        for col in 0..w {
            let luma = (f32::from(planes.y[row * w + col]) - 16.0) / 219.0;
            let at = (row / block) * cw + col / block;
            let pb = (f32::from(planes.cb[at]) - 128.0) / 224.0;
            let pr = (f32::from(planes.cr[at]) - 128.0) / 224.0;
            let r = luma + 2.0 * (1.0 - KR) * pr;
            let b = luma + 2.0 * (1.0 - KB) * pb;
            let g = (luma - KR * r - KB * b) / KG;
            rgb.extend([r, g, b].map(|v| quantize(v * 255.0)));
        }
    }
    Frame::new(width, height, rgb).expect("one RGB triple per pixel")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: u32, height: u32, pixel: impl Fn(usize, usize) -> [u8; 3]) -> Frame {
        let rgb = (0..height as usize)
            .flat_map(|y| (0..width as usize).map(move |x| (y, x)))
            .flat_map(|(y, x)| pixel(y, x))
            .collect();
        Frame::new(width, height, rgb).unwrap()
    }

    #[test]
    fn reference_colours_match_bt601_tables() {
        // Studio-range BT.601 codes of the primaries (ITU-R BT.601 / SMPTE 170M colour bars
        // at 100%): (Y, Cb, Cr).
        let cases = [
            ([0, 0, 0], (16, 128, 128)),
            ([255, 255, 255], (235, 128, 128)),
            ([255, 0, 0], (81, 90, 240)),
            ([0, 255, 0], (145, 54, 34)),
            ([0, 0, 255], (41, 240, 110)),
        ];
        for (rgb, (y, cb, cr)) in cases {
            let planes = rgb_to_yuv(&frame(1, 1, |_, _| rgb), Chroma::Full);
            assert_eq!(
                (planes.y[0], planes.cb[0], planes.cr[0]),
                (y, cb, cr),
                "{rgb:?}"
            );
        }
    }

    #[test]
    fn every_colour_survives_the_round_trip_within_two_levels() {
        // All 2^24 colours would be slow in debug builds; a 1/8 lattice per channel covers the
        // cube's corners and interior.
        let levels: Vec<u8> = (0..=255).step_by(8).chain([255]).collect();
        let n = levels.len();
        let cube = frame((n * n) as u32, n as u32, |y, x| {
            [levels[y], levels[x / n], levels[x % n]]
        });
        let back = yuv_to_rgb(
            cube.width(),
            cube.height(),
            &rgb_to_yuv(&cube, Chroma::Full),
            Chroma::Full,
        );
        let worst = cube
            .rgb()
            .iter()
            .zip(back.rgb())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 2, "worst round-trip error {worst} levels");
    }

    #[test]
    fn quarter_chroma_is_the_block_mean() {
        // Odd sizes make partial blocks at the right and bottom edges.
        let picture = frame(5, 3, |y, x| [(40 * x) as u8, (60 * y) as u8, 200]);
        let full = rgb_to_yuv(&picture, Chroma::Full);
        let quarter = rgb_to_yuv(&picture, Chroma::Quarter);
        assert_eq!(full.y, quarter.y);
        assert_eq!(quarter.cb.len(), 3 * 2);
        for (by, bx) in [(0, 0), (0, 2), (1, 1), (1, 2)] {
            let members: Vec<usize> = (2 * by..(2 * by + 2).min(3))
                .flat_map(|y| (2 * bx..(2 * bx + 2).min(5)).map(move |x| y * 5 + x))
                .collect();
            for (plane, sub) in [(&full.cb, &quarter.cb), (&full.cr, &quarter.cr)] {
                let mean = members.iter().map(|&i| f32::from(plane[i])).sum::<f32>()
                    / members.len() as f32;
                let got = f32::from(sub[by * 3 + bx]);
                // The mean of rounded values differs from the rounded mean by under one level.
                assert!(
                    (got - mean).abs() <= 1.0,
                    "block ({by}, {bx}): {got} vs {mean}"
                );
            }
        }
    }
}

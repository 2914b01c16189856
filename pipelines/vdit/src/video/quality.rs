//! Fidelity of one video against a reference of the same size: PSNR and SSIM per frame and a
//! temporal-consistency error, the numbers `vdit compare` reports against the dense run.
//!
//! - PSNR per frame over the 8-bit RGB samples (peak 255), capped at [`PSNR_CAP`] dB for
//!   identical frames (whose PSNR is infinite).
//! - SSIM per frame as scikit-image's `structural_similarity(a, b, channel_axis=-1,
//!   data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`: each RGB
//!   channel filtered with a Gaussian of sigma 1.5 truncated at 3.5 sigma (radius 5, borders
//!   reflected half-sample), the SSIM map cropped by the radius and averaged, then the mean of
//!   the three channels.
//! - Temporal error: the mean absolute difference between the two videos' frame-to-frame
//!   changes, `|(b[t] - b[t-1]) - (a[t] - a[t-1])| / 255` over every sample of frames 1..T
//!   (0 for identical motion, whatever the per-frame error).

use super::{Frame, VideoError};
use serde::Serialize;

pub use vdit_core::metrics::PSNR_CAP;

/// Gaussian window of the SSIM, as scikit-image's default with `gaussian_weights`.
const SIGMA: f64 = 1.5;
const RADIUS: usize = 5;

/// How close a video is to its reference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VideoQuality {
    /// PSNR of each frame, dB.
    pub psnr: Vec<f64>,
    /// SSIM of each frame.
    pub ssim: Vec<f64>,
    /// The temporal error (0 = the same frame-to-frame changes).
    pub temporal_error: f64,
}

impl VideoQuality {
    /// Measures `test` against `reference` (same frame count and size, frames at least 11
    /// pixels on each side).
    pub fn measure(reference: &[Frame], test: &[Frame]) -> Result<Self, VideoError> {
        check_same(reference, test)?;
        Ok(Self {
            psnr: reference
                .iter()
                .zip(test)
                .map(|(a, b)| frame_psnr(a, b))
                .collect(),
            ssim: reference
                .iter()
                .zip(test)
                .map(|(a, b)| frame_ssim(a, b))
                .collect::<Result<_, _>>()?,
            temporal_error: temporal_error(reference, test),
        })
    }

    /// Mean PSNR over the frames.
    pub fn psnr_mean(&self) -> f64 {
        mean(self.psnr.iter().copied())
    }

    /// PSNR of the worst frame.
    pub fn psnr_worst(&self) -> f64 {
        self.psnr.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Mean SSIM over the frames.
    pub fn ssim_mean(&self) -> f64 {
        mean(self.ssim.iter().copied())
    }

    /// SSIM of the worst frame.
    pub fn ssim_worst(&self) -> f64 {
        self.ssim.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// The mean of `values` (0 for none).
pub fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

/// Checks that two videos have the same frame count (at least one) and frame sizes.
fn check_same(reference: &[Frame], test: &[Frame]) -> Result<(), VideoError> {
    let sizes =
        |v: &[Frame]| -> Vec<(u32, u32)> { v.iter().map(|f| (f.width(), f.height())).collect() };
    if reference.is_empty() || sizes(reference) != sizes(test) {
        return Err(VideoError::Compare(format!(
            "{} reference frames against {} test frames of other sizes",
            reference.len(),
            test.len()
        )));
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB of `test` against `reference` over all frames and channels
/// (peak 255); infinite when they are identical. Both must have the same frame count and sizes.
pub fn psnr(reference: &[Frame], test: &[Frame]) -> Result<f64, VideoError> {
    check_same(reference, test)?;
    let squared: f64 = reference
        .iter()
        .zip(test)
        .map(|(a, b)| squared_error(a, b))
        .sum();
    let samples: usize = reference.iter().map(|f| f.rgb().len()).sum();
    let mse = squared / samples as f64;
    Ok(10.0 * (255.0 * 255.0 / mse).log10())
}

/// The sum of squared sample differences of two frames of one size.
fn squared_error(reference: &Frame, test: &Frame) -> f64 {
    reference
        .rgb()
        .iter()
        .zip(test.rgb())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

/// PSNR of one frame against its reference, capped at [`PSNR_CAP`].
pub fn frame_psnr(reference: &Frame, test: &Frame) -> f64 {
    let mse = squared_error(reference, test) / reference.rgb().len() as f64;
    vdit_core::metrics::capped_psnr(mse, 255.0)
}

/// SSIM of one frame against its reference (see the module notes).
pub fn frame_ssim(reference: &Frame, test: &Frame) -> Result<f64, VideoError> {
    let (w, h) = (reference.width() as usize, reference.height() as usize);
    if w <= 2 * RADIUS || h <= 2 * RADIUS {
        return Err(VideoError::Compare(format!(
            "SSIM needs frames of at least {0}x{0} pixels, these are {w}x{h}",
            2 * RADIUS + 1
        )));
    }
    let kernel = gaussian_kernel();
    let mut total = 0.0;
    for channel in 0..3 {
        let plane = |frame: &Frame| -> Vec<f64> {
            frame
                .rgb()
                .iter()
                .skip(channel)
                .step_by(3)
                .map(|&v| f64::from(v))
                .collect()
        };
        let (x, y) = (plane(reference), plane(test));
        let product =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(p, q)| p * q).collect() };
        let blur = |v: &[f64]| filter2d(v, w, h, &kernel);
        let (ux, uy) = (blur(&x), blur(&y));
        let (uxx, uyy, uxy) = (
            blur(&product(&x, &x)),
            blur(&product(&y, &y)),
            blur(&product(&x, &y)),
        );
        let c1 = (0.01f64 * 255.0).powi(2);
        let c2 = (0.03f64 * 255.0).powi(2);
        let (mut sum, mut count) = (0.0, 0usize);
        for row in RADIUS..h - RADIUS {
            for col in RADIUS..w - RADIUS {
                let i = row * w + col;
                let (mx, my) = (ux[i], uy[i]);
                let vx = uxx[i] - mx * mx;
                let vy = uyy[i] - my * my;
                let vxy = uxy[i] - mx * my;
                sum += ((2.0 * mx * my + c1) * (2.0 * vxy + c2))
                    / ((mx * mx + my * my + c1) * (vx + vy + c2));
                count += 1;
            }
        }
        total += sum / count as f64;
    }
    Ok(total / 3.0)
}

/// The normalised Gaussian weights from `-RADIUS` to `RADIUS`.
fn gaussian_kernel() -> Vec<f64> {
    let weights: Vec<f64> = (-(RADIUS as i64)..=RADIUS as i64)
        .map(|x| (-0.5 / (SIGMA * SIGMA) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|v| v / sum).collect()
}

/// Index `i` of a line of `n` samples reflected half-sample at the borders (`d c b a | a b c d`).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let folded = i.rem_euclid(2 * n);
    (if folded < n {
        folded
    } else {
        2 * n - 1 - folded
    }) as usize
}

/// A `w` x `h` plane filtered with `kernel` along rows, then along columns.
fn filter2d(plane: &[f64], w: usize, h: usize, kernel: &[f64]) -> Vec<f64> {
    let r = (kernel.len() / 2) as i64;
    let mut rows = vec![0.0; plane.len()];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, wt)| wt * plane[y * w + reflect(x as i64 + k as i64 - r, w)])
                .sum();
        }
    }
    let mut out = vec![0.0; plane.len()];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, wt)| wt * rows[reflect(y as i64 + k as i64 - r, h) * w + x])
                .sum();
        }
    }
    out
}

/// The temporal error of `test` against `reference` (see the module notes).
pub fn temporal_error(reference: &[Frame], test: &[Frame]) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for t in 1..reference.len().min(test.len()) {
        let samples = reference[t]
            .rgb()
            .iter()
            .zip(reference[t - 1].rgb())
            .zip(test[t].rgb().iter().zip(test[t - 1].rgb()));
        for ((&a1, &a0), (&b1, &b0)) in samples {
            let change = (f64::from(b1) - f64::from(b0)) - (f64::from(a1) - f64::from(a0));
            sum += change.abs() / 255.0;
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, f: impl Fn(usize) -> u8) -> Frame {
        Frame::new(w, h, (0..(w * h * 3) as usize).map(f).collect()).unwrap()
    }

    /// Identical frames: PSNR at the cap, SSIM 1, no temporal error.
    #[test]
    fn identical_frames() {
        let a = frame(16, 12, |i| (i * 37 % 251) as u8);
        assert_eq!(frame_psnr(&a, &a), PSNR_CAP);
        assert!((frame_ssim(&a, &a).unwrap() - 1.0).abs() < 1e-12);
        let video = vec![a.clone(), frame(16, 12, |i| (i * 11 % 253) as u8)];
        let q = VideoQuality::measure(&video, &video).unwrap();
        assert_eq!((q.psnr_worst(), q.temporal_error), (PSNR_CAP, 0.0));
    }

    /// A known noise level: every sample off by exactly 5 gives PSNR 10 log10(255^2 / 25);
    /// the same offset on every frame leaves the motion, so the temporal error is 0, while an
    /// offset on the second frame only is a change of 5/255.
    #[test]
    fn known_noise_level() {
        let a = frame(16, 12, |i| 100 + (i % 50) as u8);
        let b = frame(16, 12, |i| {
            let v = 100 + (i % 50) as i32;
            (if i % 2 == 0 { v + 5 } else { v - 5 }) as u8
        });
        let expected = 10.0 * (255.0f64 * 255.0 / 25.0).log10();
        assert!((frame_psnr(&a, &b) - expected).abs() < 1e-12);
        let shifted = frame(16, 12, |i| 105 + (i % 50) as u8);
        assert!(
            (temporal_error(&[a.clone(), a.clone()], &[shifted.clone(), shifted.clone()])).abs()
                < 1e-15
        );
        let e = temporal_error(&[a.clone(), a.clone()], &[a.clone(), shifted]);
        assert!((e - 5.0 / 255.0).abs() < 1e-12, "{e}");
    }

    #[test]
    fn psnr_follows_its_definition() {
        // Every sample off by d gives MSE d^2, so PSNR = 20 log10(255 / d).
        let base: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let shifted: Vec<u8> = base.iter().map(|v| v + 5).collect();
        let a = [
            Frame::new(4, 3, base.clone()).unwrap(),
            Frame::new(4, 3, base).unwrap(),
        ];
        let b = [
            Frame::new(4, 3, shifted.clone()).unwrap(),
            Frame::new(4, 3, shifted).unwrap(),
        ];
        let expected = 20.0 * (255.0f64 / 5.0).log10();
        assert!((psnr(&a, &b).unwrap() - expected).abs() < 1e-9);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!(psnr(&a, &b[..1]).is_err());
        let other_size = [Frame::new(3, 4, vec![0; 36]).unwrap(), a[1].clone()];
        let err = psnr(&a, &other_size).unwrap_err().to_string();
        assert!(err.contains("cannot compare videos"), "{err}");
    }

    /// Reflection at the borders repeats the edge sample, as scipy's `reflect` mode.
    #[test]
    fn reflection() {
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
    }
}

//! Frames as the writers take them (8-bit RGB), their conversion from the VAE's float output in
//! [-1, 1], and frame rates.

use super::VideoError;
use candle_core::{DType, Device, Tensor};
use std::fmt;
use std::str::FromStr;

/// One video frame: `width * height` pixels of 8-bit RGB, row by row, without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Frame {
    /// Wraps an RGB buffer, which must hold exactly `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self, VideoError> {
        let expected = width as usize * height as usize * 3;
        if rgb.len() != expected {
            return Err(VideoError::BufferSize {
                width,
                height,
                expected,
                got: rgb.len(),
            });
        }
        Ok(Self { width, height, rgb })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels: R, G, B bytes, row by row.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }
}

/// One VAE output value as an 8-bit level: `round((clamp(x, -1, 1) + 1) * 127.5)`, halves
/// rounded up, so -1 -> 0, 0 -> 128 and 1 -> 255. NaN gives 0.
pub fn to_u8(x: f32) -> u8 {
    // (x + 1) * 127.5 + 0.5 = x * 127.5 + 128, so rounding is 128 + floor(x * 127.5). The product
    // needs 24 + 8 significant bits and is exact in f64, so no tie is ever rounded the wrong way.
    (128.0 + (f64::from(x.clamp(-1.0, 1.0)) * 127.5).floor()) as u8
}

/// Splits decoded video, a `[3, T, H, W]` or `[1, 3, T, H, W]` tensor of values in [-1, 1] (any
/// float dtype, any device), into `T` RGB frames. The levels are computed where the video is (on
/// the GPU for a GPU decode), so only bytes cross to the host.
pub fn frames_from_tensor(video: &Tensor) -> Result<Vec<Frame>, VideoError> {
    let video = match video.dims() {
        [3, _, _, _] => video.clone(),
        [1, 3, _, _, _] => video.squeeze(0)?,
        dims => return Err(VideoError::TensorShape(dims.to_vec())),
    };
    let (_, frames, height, width) = video.dims4()?;
    if frames > 0 && (height == 0 || width == 0) {
        return Err(VideoError::EmptyFrame {
            width: width as u32,
            height: height as u32,
        });
    }
    let bytes = levels(&video)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let frame_len = width * height * 3;
    bytes
        .chunks_exact(frame_len.max(1))
        .map(|pixels| Frame::new(width as u32, height as u32, pixels.to_vec()))
        .collect()
}

/// The 8-bit levels of video `[3, T, H, W]` as `[T, H, W, 3]` u8 on its device, by [`to_u8`]'s
/// rule: `128 + floor(clamp(x, -1, 1) * 127.5)`. The product is exact in f32 for bf16 and f16
/// values and in f64 for f32 values, so no level differs from [`to_u8`]'s. NaN is an error.
fn levels(video: &Tensor) -> Result<Tensor, VideoError> {
    let wide = match video.dtype() {
        DType::BF16 | DType::F16 => DType::F32,
        _ => DType::F64,
    };
    let x = video.to_dtype(wide)?;
    if x.ne(&x)?.max_all()?.to_scalar::<u8>()? > 0 {
        return Err(VideoError::NotANumber);
    }
    let levels = ((x.clamp(-1.0, 1.0)? * 127.5)?.floor()? + 128.0)?;
    Ok(levels
        .permute((1, 2, 3, 0))?
        .contiguous()?
        .to_dtype(DType::U8)?)
}

/// Frames per second as a reduced fraction, e.g. 16/1 or 30000/1001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    num: u32,
    den: u32,
}

impl FrameRate {
    /// `num / den` frames per second; both must be positive.
    pub fn new(num: u32, den: u32) -> Result<Self, VideoError> {
        if num == 0 || den == 0 {
            return Err(VideoError::BadFrameRate(format!("{num}/{den}")));
        }
        let divisor = gcd(num, den);
        Ok(Self {
            num: num / divisor,
            den: den / divisor,
        })
    }

    /// Numerator of the reduced fraction.
    pub fn num(self) -> u32 {
        self.num
    }

    /// Denominator of the reduced fraction.
    pub fn den(self) -> u32 {
        self.den
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl FromStr for FrameRate {
    type Err = VideoError;

    /// Parses `N` or `N/D`.
    fn from_str(text: &str) -> Result<Self, VideoError> {
        let bad = || VideoError::BadFrameRate(text.to_string());
        let (num, den) = text.trim().split_once('/').unwrap_or((text.trim(), "1"));
        let num = num.trim().parse().map_err(|_| bad())?;
        let den = den.trim().parse().map_err(|_| bad())?;
        Self::new(num, den).map_err(|_| bad())
    }
}

impl fmt::Display for FrameRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `round((clamp(x, -1, 1) + 1) * 255 / 2)` (halves up) in exact integer arithmetic on the
    /// bits of `x`: an independent reference for [`to_u8`].
    fn exact_level(x: f32) -> u8 {
        if x <= -1.0 {
            return 0;
        }
        if x >= 1.0 {
            return 255;
        }
        // x = mantissa * 2^-shift exactly, so (x + 1) * 255 / 2 + 1 / 2
        // = ((mantissa + 2^shift) * 255 + 2^shift) / 2^(shift + 1).
        let bits = x.abs().to_bits();
        let exponent = ((bits >> 23) & 0xff) as i32;
        let shift = 150 - exponent;
        if shift > 100 {
            // |x| < 2^-76 (zero and subnormals included): 128 + floor(127.5 x) is 128 or 127.
            return if x < 0.0 { 127 } else { 128 };
        }
        let mut mantissa = i128::from((bits & 0x7f_ffff) | 0x80_0000);
        if x < 0.0 {
            mantissa = -mantissa;
        }
        let one = 1i128 << shift;
        let numerator = (mantissa + one) * 255 + one;
        (numerator >> (shift + 1)) as u8
    }

    /// The float `ulps` representable steps away from `x` (towards +inf when positive).
    fn nudge(x: f32, ulps: i32) -> f32 {
        let ordered = |v: f32| {
            let bits = v.to_bits() as i32;
            if bits < 0 {
                -(bits & i32::MAX)
            } else {
                bits
            }
        };
        let moved = ordered(x) + ulps;
        if moved < 0 {
            f32::from_bits((-moved) as u32 | 0x8000_0000)
        } else {
            f32::from_bits(moved as u32)
        }
    }

    #[test]
    fn named_values_convert_exactly() {
        let cases: [(f32, u8); 12] = [
            (-1.0, 0),
            (1.0, 255),
            (0.0, 128),
            (-0.0, 128),
            (-2.0, 0),
            (7.5, 255),
            (f32::NEG_INFINITY, 0),
            (f32::INFINITY, 255),
            (0.5, 191),    // 191.25
            (-0.5, 64),    // 63.75
            (-1e-30, 127), // 127.4999...
            (1e-30, 128),
        ];
        for (x, level) in cases {
            assert_eq!(to_u8(x), level, "x = {x}");
            assert_eq!(exact_level(x), level, "reference at x = {x}");
        }
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn rounding_boundaries_convert_exactly() {
        // Each level boundary k + 1/2 lies at x = (2k + 1) / 255 - 1; check the floats on both
        // sides of every boundary.
        for k in 0..255u32 {
            let boundary = (2 * k + 1) as f64 / 255.0 - 1.0;
            let near = boundary as f32;
            let (below, above) = (nudge(near, -2), nudge(near, 2));
            for x in [below, nudge(near, -1), near, nudge(near, 1), above] {
                assert_eq!(to_u8(x), exact_level(x), "x = {x:e} near level {k}.5");
            }
            assert_eq!(exact_level(below), k as u8, "below {k}.5");
            assert_eq!(exact_level(above), k as u8 + 1, "above {k}.5");
        }
    }

    #[test]
    fn random_values_convert_exactly() {
        let values = Tensor::randn(0f32, 0.8, 200_000, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let outside = values.iter().filter(|v| v.abs() > 1.0).count();
        assert!(outside > 10_000, "too few out-of-range samples: {outside}");
        for x in values {
            assert_eq!(to_u8(x), exact_level(x), "x = {x:e}");
        }
    }

    /// The tensor path (run on the video's device) gives [`to_u8`]'s level for every value it
    /// holds, in every dtype: at the level boundaries and on random values.
    #[test]
    fn tensor_levels_equal_the_scalar_rule() {
        let mut values: Vec<f32> = (0..255u32)
            .flat_map(|k| {
                let near = ((2 * k + 1) as f64 / 255.0 - 1.0) as f32;
                (-2..=2).map(move |d| nudge(near, d))
            })
            .collect();
        values.extend(
            Tensor::randn(0f32, 0.8, 30_000, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        values.truncate(values.len() / 3 * 3);
        let n = values.len() / 3;
        let video = Tensor::from_vec(values, (3, 1, 1, n), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let video = video.to_dtype(dtype).unwrap();
            let held: Vec<f32> = video
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let frame = &frames_from_tensor(&video).unwrap()[0];
            for x in 0..n {
                for c in 0..3 {
                    let value = held[c * n + x];
                    assert_eq!(frame.rgb()[x * 3 + c], to_u8(value), "{dtype:?}: {value:e}");
                }
            }
        }
    }

    #[test]
    fn tensor_becomes_frames_in_time_order() {
        // Channel c of pixel (t, y, x) holds a distinct level, recoverable from the frame.
        let (t, h, w) = (3usize, 2usize, 5usize);
        let level = |c: usize, f: usize, y: usize, x: usize| {
            ((c * 7 + f * 31 + y * 11 + x * 3) % 256) as u8
        };
        let mut data = vec![0f32; 3 * t * h * w];
        for c in 0..3 {
            for f in 0..t {
                for y in 0..h {
                    for x in 0..w {
                        let l = level(c, f, y, x) as f32;
                        data[((c * t + f) * h + y) * w + x] = l / 127.5 - 1.0;
                    }
                }
            }
        }
        let video = Tensor::from_vec(data, (1, 3, t, h, w), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let frames = frames_from_tensor(&video.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(frames.len(), t);
            for (f, frame) in frames.iter().enumerate() {
                assert_eq!((frame.width(), frame.height()), (w as u32, h as u32));
                for y in 0..h {
                    for x in 0..w {
                        for c in 0..3 {
                            let got = frame.rgb()[(y * w + x) * 3 + c];
                            let want = level(c, f, y, x);
                            // bf16 keeps 8 significant bits: a level moves by at most 1.
                            let slack = if dtype == DType::F32 { 0 } else { 1 };
                            assert!(
                                got.abs_diff(want) <= slack,
                                "{dtype:?} t{f} y{y} x{x} c{c}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        let squeezed = frames_from_tensor(&video.squeeze(0).unwrap()).unwrap();
        assert_eq!(squeezed, frames_from_tensor(&video).unwrap());
    }

    #[test]
    fn bad_tensors_are_refused() {
        let wrong = Tensor::zeros((4, 2, 8, 8), DType::F32, &Device::Cpu).unwrap();
        let err = frames_from_tensor(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("[4, 2, 8, 8]") && err.contains("[3, T, H, W]"),
            "{err}"
        );
        let empty = Tensor::zeros((3, 2, 0, 8), DType::F32, &Device::Cpu).unwrap();
        let err = frames_from_tensor(&empty).unwrap_err().to_string();
        assert!(err.contains("8x0 is empty"), "{err}");
        let nan = Tensor::new(
            &[[[[0f32, f32::NAN]]], [[[0.0, 0.0]]], [[[0.0, 0.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let err = frames_from_tensor(&nan).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }

    #[test]
    fn frame_buffers_and_rates_are_checked() {
        assert!(Frame::new(2, 2, vec![0; 12]).is_ok());
        let err = Frame::new(2, 2, vec![0; 11]).unwrap_err().to_string();
        assert!(err.contains("needs 12 bytes, got 11"), "{err}");
        let rate: FrameRate = "32/2".parse().unwrap();
        assert_eq!(
            (rate.num(), rate.den(), rate.to_string()),
            (16, 1, "16".to_string())
        );
        let ntsc: FrameRate = "30000/1001".parse().unwrap();
        assert_eq!(ntsc.to_string(), "30000/1001");
        for bad in ["0", "16/0", "abc", "-3", ""] {
            let err = bad.parse::<FrameRate>().unwrap_err().to_string();
            assert!(err.contains("not a positive number"), "{bad}: {err}");
        }
    }
}

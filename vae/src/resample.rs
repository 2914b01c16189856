//! Spatial and temporal 2x resampling between stages.

use crate::conv::{fold_time, unfold_time, CausalConv3d, Conv2d, StridedConv2d, TimeCache};
use crate::frames::{
    halves_to_frames, join_time, last_frames, pad_bottom_right, upsample_nearest2x,
};
use crate::profile;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Decoder upsampling: optionally doubles time with a causal time conv to `2c` channels whose
/// halves become alternate frames, then doubles height and width (nearest) and convolves
/// 3x3 to `c_out` channels.
#[derive(Clone, Debug)]
pub struct Upsample {
    time_conv: Option<CausalConv3d>,
    conv: Conv2d,
}

impl Upsample {
    /// Reads `resample.1` (3x3 conv) and, when `temporal`, `time_conv` (3x1x1 conv to `2c`).
    pub fn new(channels: usize, c_out: usize, temporal: bool, vb: VarBuilder) -> Result<Self> {
        let time_conv = if temporal {
            Some(CausalConv3d::new(
                channels,
                2 * channels,
                (3, 1),
                0,
                vb.pp("time_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            time_conv,
            conv: Conv2d::new(channels, c_out, 3, 1, vb.pp("resample.1"))?,
        })
    }

    /// Runs one chunk `[b, t, c, h, w]` to `[b, t', c_out, 2h, 2w]`: every frame doubled in time
    /// but the stream's first, which is kept once and does not enter the time conv's history
    /// (`t' = 2t`, or `2t - 1` on the first chunk, which may be the whole stream). Uses one
    /// cache slot when temporal.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let x = match &self.time_conv {
            Some(time_conv) => {
                let kept = usize::from(cache.is_first_chunk());
                let history = cache.slot();
                let t = x.dim(1)?;
                if t == kept {
                    x.clone()
                } else {
                    let rest = x.narrow(1, kept, t - kept)?;
                    let doubled = time_conv.forward(&rest, history)?;
                    let doubled = profile::timed(
                        x.device(),
                        || "channel halves to frames".into(),
                        0.0,
                        || halves_to_frames(&doubled),
                    )?;
                    match kept {
                        0 => doubled,
                        _ => join_time(&x.narrow(1, 0, kept)?, &doubled)?,
                    }
                }
            }
            None => x.clone(),
        };
        let b = x.dim(0)?;
        let frames = profile::timed(
            x.device(),
            || "nearest 2x".into(),
            0.0,
            || upsample_nearest2x(&fold_time(&x)?),
        )?;
        unfold_time(&self.conv.forward(&frames)?, b)
    }
}

/// Encoder downsampling: halves height and width with a stride-2 3x3 conv (zero padding on the
/// bottom and right only), then optionally halves time with a stride-2 3x1x1 conv over the
/// previous chunk's last frame and this chunk.
#[derive(Clone, Debug)]
pub struct Downsample {
    /// 3x3, applied with stride 2.
    conv: StridedConv2d,
    time_conv: Option<CausalConv3d>,
}

impl Downsample {
    /// Reads `resample.1` (3x3 stride-2 conv) and, when `temporal`, `time_conv`.
    pub fn new(channels: usize, temporal: bool, vb: VarBuilder) -> Result<Self> {
        let time_conv = if temporal {
            Some(CausalConv3d::new(
                channels,
                channels,
                (3, 1),
                0,
                vb.pp("time_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            conv: StridedConv2d::new(channels, channels, 3, 2, vb.pp("resample.1"))?,
            time_conv,
        })
    }

    /// Runs one chunk `[b, t, c, h, w]` to `[b, t', c, h', w']` with `h' = floor(h / 2)`.
    /// Temporal: the stream's first frame passes through unchanged; every later pair of frames
    /// becomes one, convolved with the frame before it (a first chunk of `1 + 2m` frames, which
    /// may be the whole stream, gives `1 + m`; a later chunk of `2m` frames `m`). Uses one cache
    /// slot when temporal.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let b = x.dim(0)?;
        let frames = self.conv.forward(&pad_bottom_right(&fold_time(x)?)?)?;
        let x = unfold_time(&frames, b)?;
        let Some(time_conv) = &self.time_conv else {
            return Ok(x);
        };
        let previous = cache.slot();
        let out = match previous.take() {
            None if x.dim(1)? >= 3 => join_time(&x.narrow(1, 0, 1)?, &time_conv.convolve(&x, 2)?)?,
            None => x.clone(),
            Some(last) => time_conv.convolve(&join_time(&last, &x)?, 2)?,
        };
        *previous = Some(last_frames(&x, 1)?);
        Ok(out)
    }
}

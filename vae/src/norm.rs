//! The VAE's channel normalisation: each pixel's channel vector scaled to unit L2 norm, times
//! `sqrt(channels)` and a learned per-channel gain (an RMS norm without epsilon inside the root).
//! On CUDA (channels-last) it is one fused kernel, with the SiLU that follows it where asked.

use crate::frames::channels_last;
use crate::profile;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Normalises over the channels of working-layout frames (or images), computed in f32.
#[derive(Clone, Debug)]
pub struct ChannelNorm {
    /// `gamma * sqrt(c)` in the weights' dtype, shaped `[c, 1, 1]` to broadcast over
    /// `[.., c, h, w]` (the CPU path).
    gain: Tensor,
    /// `gamma * sqrt(c)` in f32, `[c]` (the channels-last path's).
    gain_f32: Tensor,
    /// `[1, c]` f32 ones: the sum of squares over channels as a matmul, much faster on the CPU
    /// than a reduction over a middle dim.
    ones: Tensor,
}

impl ChannelNorm {
    /// Smallest norm divided by, as PyTorch's `F.normalize` clamps it.
    const MIN_NORM: f64 = 1e-12;

    /// Reads `gamma`, stored with shape `[c, 1, 1, 1]` for video layers.
    pub fn video(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::from_gamma(channels, vb.get((channels, 1, 1, 1), "gamma")?)
    }

    /// Reads `gamma`, stored with shape `[c, 1, 1]` for per-frame (attention) layers.
    pub fn image(channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::from_gamma(channels, vb.get((channels, 1, 1), "gamma")?)
    }

    fn from_gamma(channels: usize, gamma: Tensor) -> Result<Self> {
        let gain = (gamma.reshape((channels, 1, 1))? * (channels as f64).sqrt())?;
        let gain_f32 = gain.to_dtype(DType::F32)?.flatten_all()?;
        let ones = Tensor::ones((1, channels), DType::F32, gamma.device())?;
        Ok(Self {
            gain,
            gain_f32,
            ones,
        })
    }

    /// Normalises `x` (working-layout frames or images); keeps its dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `SiLU(norm(x))`, fused on CUDA.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if channels_last(x) {
            let label = || {
                format!(
                    "norm{} over {}",
                    if silu { " + SiLU" } else { "" },
                    x.dims().last().unwrap_or(&0)
                )
            };
            return profile::timed(x.device(), label, 0.0, || {
                self.forward_channels_last(x, silu)
            });
        }
        let y = self.forward_channels_first(x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    /// The CUDA path on channels-last `[.., c]`: the fused kernel, or for rows it does not
    /// take (a channel count not a multiple of 8, or above 1024) the same arithmetic composed.
    fn forward_channels_last(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if crate::kernels::norm_takes(x) {
            return crate::kernels::channel_norm(x, &self.gain_f32, silu);
        }
        let x32 = x.to_dtype(DType::F32)?;
        let norm = x32
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .maximum(Self::MIN_NORM)?;
        let y = x32.broadcast_div(&norm)?.broadcast_mul(&self.gain_f32)?;
        let y = if silu { y.silu()? } else { y };
        y.to_dtype(x.dtype())
    }

    /// The CPU path on channels-first `[.., c, h, w]` (frames or images).
    fn forward_channels_first(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let r = dims.len();
        let (c, h, w) = (dims[r - 3], dims[r - 2], dims[r - 1]);
        let images: usize = dims[..r - 3].iter().product();
        let x32 = x.to_dtype(DType::F32)?.reshape((images, c, h, w))?;
        let squares = x32.sqr()?.reshape((images, c, h * w))?;
        let norm = self
            .ones
            .broadcast_matmul(&squares)?
            .sqrt()?
            .maximum(Self::MIN_NORM)?
            .reshape((images, 1, h, w))?;
        x32.broadcast_div(&norm)?
            .to_dtype(x.dtype())?
            .broadcast_mul(&self.gain)?
            .reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// Each output pixel's channel vector is gamma * sqrt(c) * x / |x|; all-zero pixels stay 0.
    #[test]
    fn unit_norm_times_sqrt_channels_and_gamma() -> Result<()> {
        let dev = &Device::Cpu;
        let gamma = Tensor::new(&[0.5f32, 2.0], dev)?.reshape((2, 1, 1, 1))?;
        let vb =
            VarBuilder::from_tensors(HashMap::from([("gamma".into(), gamma)]), DType::F32, dev);
        let norm = ChannelNorm::video(2, vb)?;
        // two pixels: (3, 4) and (0, 0)
        let x = Tensor::new(&[[3f32, 0.0], [4.0, 0.0]], dev)?.reshape((1, 1, 2, 1, 2))?;
        let y: Vec<f32> = norm.forward(&x)?.flatten_all()?.to_vec1()?;
        let s = 2f32.sqrt();
        let expected = [0.5 * s * 0.6, 0.0, 2.0 * s * 0.8, 0.0];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expected:?}");
        }
        Ok(())
    }
}

//! The VAE's channel normalisation: each pixel's channel vector scaled to unit L2 norm, times
//! `sqrt(channels)` and a learned per-channel gain (an RMS norm without epsilon inside the root).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Normalises over the channel dim of `[b, t, c, h, w]`, computed in f32.
#[derive(Clone, Debug)]
pub struct ChannelNorm {
    /// `gamma * sqrt(c)`, shaped `[c, 1, 1]` to broadcast over `[.., c, h, w]`.
    gain: Tensor,
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
        let ones = Tensor::ones((1, channels), DType::F32, gamma.device())?;
        Ok(Self { gain, ones })
    }

    /// Normalises `x` `[b, t, c, h, w]`; keeps its dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let x32 = x.to_dtype(DType::F32)?;
        let squares = x32.sqr()?.reshape((b * t, c, h * w))?;
        let norm = self
            .ones
            .broadcast_matmul(&squares)?
            .sqrt()?
            .maximum(Self::MIN_NORM)?
            .reshape((b, t, 1, h, w))?;
        x32.broadcast_div(&norm)?
            .to_dtype(x.dtype())?
            .broadcast_mul(&self.gain)
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

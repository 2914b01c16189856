//! The VAE's channel normalisation: each pixel's channel vector scaled to unit L2 norm, times
//! `sqrt(channels)` and a learned per-channel gain (an RMS norm without epsilon inside the root).
//! On CUDA (channels-last) it is one fused kernel, with the SiLU that follows it where asked.

use crate::frames::channels_last;
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
            return self.forward_channels_last(x, silu);
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
        if kernel::takes(x) {
            return kernel::channel_norm(x, &self.gain_f32, silu);
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

/// The fused CUDA kernel of `kernels/norm.cu` as a candle operation (no backward).
#[cfg(feature = "cuda")]
mod kernel {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Result, Shape, Tensor};
    use vdit_core::cuda::{check_aligned, dtype_suffix, output, storage_ptr, Module};

    const NORM: Module = vdit_core::kernel_module!("norm");
    /// Rows per CTA (one warp each).
    const ROWS_PER_BLOCK: usize = 8;
    /// Widest row the kernel takes.
    const MAX_CHANNELS: usize = 1024;

    /// True when the kernel takes rows of `x`'s channel count.
    pub fn takes(x: &Tensor) -> bool {
        x.dims()
            .last()
            .is_some_and(|&c| c % 8 == 0 && c <= MAX_CHANNELS)
    }

    /// `x` normalised over its last dim (channels), times `gain` (f32 `[c]`), then SiLU when
    /// `silu`.
    pub fn channel_norm(x: &Tensor, gain: &Tensor, silu: bool) -> Result<Tensor> {
        x.contiguous()?
            .apply_op2_no_bwd(gain, &ChannelNormOp { silu })
    }

    struct ChannelNormOp {
        silu: bool,
    }

    impl CustomOp2 for ChannelNormOp {
        fn name(&self) -> &'static str {
            "vae-channel-norm"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("the channel-norm kernel runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let c = *xl.dims().last().unwrap_or(&0);
            if c % 8 != 0 || c > MAX_CHANNELS || !xl.is_contiguous() || gl.dims() != [c] {
                candle_core::bail!(
                    "channel norm: contiguous channels-last rows of a multiple of 8 channels, at most {MAX_CHANNELS}, and a gain of as many"
                )
            }
            let rows = xl.shape().elem_count() / c;
            let dev = x.device();
            let (out, out_ptr) = output(dev, x.dtype(), rows * c)?;
            let (xp, gp) = (storage_ptr(x, xl)?, storage_ptr(g, gl)?);
            check_aligned(&[xp, gp, out_ptr], "channel norm")?;
            let func = NORM.function(dev, &format!("channel_norm_{}", dtype_suffix(x.dtype())?))?;
            let (rows64, c32, silu) = (rows as i64, c as i32, i32::from(self.silu));
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&func);
            builder
                .arg(&xp)
                .arg(&gp)
                .arg(&out_ptr)
                .arg(&rows64)
                .arg(&c32)
                .arg(&silu);
            let cfg = LaunchConfig {
                grid_dim: (rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1),
                block_dim: (32 * ROWS_PER_BLOCK as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments match channel_norm_*; x and out hold rows * c elements and
            // gain c floats, all 16-byte aligned.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((out, xl.shape().clone()))
        }
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

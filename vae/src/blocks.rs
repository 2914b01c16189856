//! Residual blocks, the single-head spatial attention block and the middle block they form.

use crate::conv::{fold_time, unfold_time, CausalConv3d, Conv2d, TimeCache};
use crate::norm::ChannelNorm;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// norm, SiLU, causal 3x3x3 conv, twice, plus a (1x1x1-projected when widths differ) shortcut.
#[derive(Clone, Debug)]
pub struct ResidualBlock {
    norm1: ChannelNorm,
    conv1: CausalConv3d,
    norm2: ChannelNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    /// Reads `norm1`, `conv1`, `norm2`, `conv2` and, when `c_in != c_out`, `conv_shortcut`.
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if c_in == c_out {
            None
        } else {
            Some(CausalConv3d::new(
                c_in,
                c_out,
                (1, 1),
                0,
                vb.pp("conv_shortcut"),
            )?)
        };
        Ok(Self {
            norm1: ChannelNorm::video(c_in, vb.pp("norm1"))?,
            conv1: CausalConv3d::new(c_in, c_out, (3, 3), 1, vb.pp("conv1"))?,
            norm2: ChannelNorm::video(c_out, vb.pp("norm2"))?,
            conv2: CausalConv3d::new(c_out, c_out, (3, 3), 1, vb.pp("conv2"))?,
            shortcut,
        })
    }

    /// Runs one chunk `[b, t, c_in, h, w]`; uses two cache slots.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let skip = match &self.shortcut {
            Some(conv) => conv.convolve(x, 1)?,
            None => x.clone(),
        };
        let h = self.norm1.forward(x)?.silu()?;
        let h = self.conv1.forward(&h, cache.slot())?;
        let h = self.norm2.forward(&h)?.silu()?;
        let h = self.conv2.forward(&h, cache.slot())?;
        h + skip
    }
}

/// Single-head self-attention over the pixels of each frame (head width = channels), residual.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: ChannelNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    /// Reads `norm`, `to_qkv` (1x1 conv to 3c) and `proj` (1x1 conv).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: ChannelNorm::image(channels, vb.pp("norm"))?,
            to_qkv: Conv2d::new(channels, 3 * channels, 1, 0, vb.pp("to_qkv"))?,
            proj: Conv2d::new(channels, channels, 1, 0, vb.pp("proj"))?,
        })
    }

    /// Attends within each frame of `x` `[b, t, c, h, w]`; softmax in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, c, h, w) = x.dims5()?;
        let frames = fold_time(&self.norm.forward(x)?)?;
        let n = frames.dim(0)?;
        let qkv = self.to_qkv.forward(&frames)?.reshape((n, 3 * c, h * w))?;
        let q = qkv.narrow(1, 0, c)?.transpose(1, 2)?.contiguous()?; // [n, hw, c]
        let k = qkv.narrow(1, c, c)?.contiguous()?; // [n, c, hw]
        let v = qkv.narrow(1, 2 * c, c)?.contiguous()?; // [n, c, hw]
        let scores = (q.matmul(&k)?.to_dtype(DType::F32)? / (c as f64).sqrt())?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let attended = v.matmul(&weights.transpose(1, 2)?.contiguous()?)?; // [n, c, hw]
        let out = self.proj.forward(&attended.reshape((n, c, h, w))?)?;
        unfold_time(&out, b)? + x
    }
}

/// Residual block, attention, residual block, at the lowest resolution.
#[derive(Clone, Debug)]
pub struct MidBlock {
    first: ResidualBlock,
    attention: AttentionBlock,
    second: ResidualBlock,
}

impl MidBlock {
    /// Reads `resnets.0`, `attentions.0`, `resnets.1`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            first: ResidualBlock::new(channels, channels, vb.pp("resnets.0"))?,
            attention: AttentionBlock::new(channels, vb.pp("attentions.0"))?,
            second: ResidualBlock::new(channels, channels, vb.pp("resnets.1"))?,
        })
    }

    /// Runs one chunk; uses four cache slots.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let x = self.first.forward(x, cache)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, cache)
    }
}

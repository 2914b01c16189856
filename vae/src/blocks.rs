//! Residual blocks, the single-head spatial attention block and the middle block they form.

use crate::conv::{fold_time, unfold_time, CausalConv3d, TimeCache};
use crate::frames::{from_tokens, spatial, to_tokens};
use crate::norm::ChannelNorm;
use crate::profile;
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

    /// Runs one chunk of frames (working layout); uses two cache slots.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let skip = match &self.shortcut {
            Some(conv) => conv.convolve(x, 1)?,
            None => x.clone(),
        };
        let h = self.norm1.forward_silu(x)?;
        let h = self.conv1.forward(&h, cache.slot())?;
        let h = self.norm2.forward_silu(&h)?;
        self.conv2.forward_residual(&h, cache.slot(), Some(&skip))
    }
}

/// A 1x1 convolution on tokens `[n, hw, c_in]`: a matmul by the weight, plus the bias.
#[derive(Clone, Debug)]
struct PixelLinear {
    /// `[c_out, c_in]`.
    weight: Tensor,
    /// `[c_out]`.
    bias: Tensor,
}

impl PixelLinear {
    /// Reads a 1x1 conv's `weight` `[c_out, c_in, 1, 1]` and `bias` `[c_out]`.
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb
                .get((c_out, c_in, 1, 1), "weight")?
                .reshape((c_out, c_in))?,
            bias: vb.get(c_out, "bias")?,
        })
    }

    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        tokens
            .broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }
}

/// Single-head self-attention over the pixels of each frame (head width = channels), residual.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: ChannelNorm,
    to_qkv: PixelLinear,
    proj: PixelLinear,
}

impl AttentionBlock {
    /// Reads `norm`, `to_qkv` (1x1 conv to 3c) and `proj` (1x1 conv).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: ChannelNorm::image(channels, vb.pp("norm"))?,
            to_qkv: PixelLinear::new(channels, 3 * channels, vb.pp("to_qkv"))?,
            proj: PixelLinear::new(channels, channels, vb.pp("proj"))?,
        })
    }

    /// Attends within each frame of `x` (working layout); softmax in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        profile::timed(x.device(), || "attention".into(), 0.0, || self.attend(x))
    }

    fn attend(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let (h, w) = spatial(x)?;
        let tokens = to_tokens(&fold_time(&self.norm.forward(x)?)?)?; // [n, hw, c]
        let c = tokens.dim(2)?;
        let qkv = self.to_qkv.forward(&tokens)?;
        let q = qkv.narrow(2, 0, c)?.contiguous()?;
        let k = qkv.narrow(2, c, c)?.contiguous()?;
        let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? / (c as f64).sqrt())?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let attended = weights.matmul(&v)?; // [n, hw, c]
        let out = from_tokens(&self.proj.forward(&attended)?, h, w)?;
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

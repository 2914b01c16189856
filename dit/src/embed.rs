//! Input embeddings: latent patches, diffusion timestep and text.

use crate::config::WanConfig;
use candle_core::{DType, Result, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};

/// Patchify + Conv3d with kernel = stride = patch size, computed exactly as one matmul over
/// unfolded patches.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    /// `[dim, in_channels * pt * ph * pw]`, patch channel order (c, pt, ph, pw).
    weight: Tensor,
    bias: Tensor,
    patch: [usize; 3],
}

impl PatchEmbed {
    /// Reads the Conv3d `weight` `[dim, C, pt, ph, pw]` and `bias` `[dim]`.
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let [pt, ph, pw] = cfg.patch_size;
        let weight = vb.get((cfg.dim(), cfg.in_channels, pt, ph, pw), "weight")?;
        let weight = weight.reshape((cfg.dim(), cfg.in_channels * pt * ph * pw))?;
        Ok(Self {
            weight,
            bias: vb.get(cfg.dim(), "bias")?,
            patch: cfg.patch_size,
        })
    }

    /// `[B, C, T, H, W]` latents to `[B, S, dim]` tokens in t-h-w order.
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = latents.dims5()?;
        let [pt, ph, pw] = self.patch;
        let (gt, gh, gw) = (t / pt, h / ph, w / pw);
        let patches = latents
            .reshape(vec![b, c, gt, pt, gh, ph, gw, pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, gt * gh * gw, c * pt * ph * pw))?
            .to_dtype(self.weight.dtype())?;
        patches
            .broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }
}

/// Sinusoidal embedding of diffusion timesteps, cosines first: `[B] -> [B, dim]` in f32, with
/// frequencies `exp(-ln(10000) * i / (dim/2))`.
pub fn timestep_sinusoid(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10_000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)
}

/// Timestep and text conditioning: the time MLP (kept in f32), its projection to the six
/// per-block modulation vectors, and the text projection.
#[derive(Clone, Debug)]
pub struct ConditionEmbedder {
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
    freq_dim: usize,
    dtype: DType,
}

/// Output of [`ConditionEmbedder::forward`].
pub struct Conditioning {
    /// Time embedding `[B, dim]` (model dtype), used by the output head.
    pub temb: Tensor,
    /// Per-block modulation `[B, 6, dim]` (model dtype).
    pub modulation: Tensor,
    /// Projected text `[B, L, dim]` (model dtype).
    pub context: Tensor,
}

impl ConditionEmbedder {
    /// Reads `time_embedder.*` (in f32), `time_proj.*` and `text_embedder.*`.
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim();
        let time = vb.pp("time_embedder").to_dtype(DType::F32);
        let text = vb.pp("text_embedder");
        Ok(Self {
            time_linear_1: linear(cfg.freq_dim, dim, time.pp("linear_1"))?,
            time_linear_2: linear(dim, dim, time.pp("linear_2"))?,
            time_proj: linear(dim, 6 * dim, vb.pp("time_proj"))?,
            text_linear_1: linear(cfg.text_dim, dim, text.pp("linear_1"))?,
            text_linear_2: linear(dim, dim, text.pp("linear_2"))?,
            freq_dim: cfg.freq_dim,
            dtype: vb.dtype(),
        })
    }

    /// Embeds timesteps `[B]` and text embeddings `[B, L, text_dim]`.
    pub fn forward(&self, timesteps: &Tensor, text: &Tensor) -> Result<Conditioning> {
        let sinusoid = timestep_sinusoid(timesteps, self.freq_dim)?;
        let temb = self
            .time_linear_2
            .forward(&candle_nn::ops::silu(
                &self.time_linear_1.forward(&sinusoid)?,
            )?)?
            .to_dtype(self.dtype)?;
        let (b, dim) = temb.dims2()?;
        let modulation = self
            .time_proj
            .forward(&candle_nn::ops::silu(&temb)?)?
            .reshape((b, 6, dim))?;
        let context = self.text_linear_2.forward(
            &self
                .text_linear_1
                .forward(&text.to_dtype(self.dtype)?)?
                .gelu()?,
        )?;
        Ok(Conditioning {
            temb,
            modulation,
            context,
        })
    }
}

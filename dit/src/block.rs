//! One Wan transformer block: modulated self-attention, cross-attention, modulated FFN.

use crate::attention::{TextCrossAttention, VideoSelfAttention};
use crate::config::WanConfig;
use crate::fused::Epilogue;
use crate::linear::Projection;
use crate::norm::Fp32LayerNorm;
use crate::rope::Rope3d;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use sparse::{CallSite, SelfAttention};
use vdit_core::{Step, TokenGrid};

/// Feed-forward network: Linear, GELU (tanh), Linear.
#[derive(Clone, Debug)]
struct FeedForward {
    up: Projection,
    down: Projection,
}

impl FeedForward {
    fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            up: Projection::new(cfg.dim(), cfg.ffn_dim, vb.pp("net.0.proj"))?,
            down: Projection::new(cfg.ffn_dim, cfg.dim(), vb.pp("net.2"))?,
        })
    }

    /// `down(GELU(up(x)))` followed by `epilogue` (the block's gated residual).
    fn forward(&self, x: &Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
        let hidden = self.up.forward_with(
            x,
            Epilogue {
                gelu: true,
                ..Default::default()
            },
        )?;
        self.down.forward_with(&hidden, epilogue)
    }
}

/// A transformer block with its learned modulation table `[1, 6, dim]` (kept in f32).
#[derive(Clone, Debug)]
pub struct WanBlock {
    norm1: Fp32LayerNorm,
    attn1: VideoSelfAttention,
    norm2: Option<Fp32LayerNorm>,
    attn2: TextCrossAttention,
    norm3: Fp32LayerNorm,
    ffn: FeedForward,
    scale_shift_table: Tensor,
}

/// Inputs shared by every block of one forward pass.
pub struct BlockInputs<'a> {
    /// Per-block modulation from the timestep, `[B, 6, dim]`.
    pub modulation: &'a Tensor,
    /// Projected text, `[B, L, dim]`.
    pub context: &'a Tensor,
    /// RoPE tables of the grid.
    pub rope: &'a Rope3d,
    /// Token grid.
    pub grid: TokenGrid,
    /// The denoising step.
    pub step: Step,
    /// The self-attention implementation.
    pub attention: &'a dyn SelfAttention,
}

impl WanBlock {
    /// Reads one block (`blocks.N` in diffusers names).
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim();
        let norm2 = if cfg.cross_attn_norm {
            Some(Fp32LayerNorm::new(dim, cfg.eps, true, vb.pp("norm2"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: Fp32LayerNorm::new(dim, cfg.eps, false, vb.pp("norm1"))?,
            attn1: VideoSelfAttention::new(cfg, vb.pp("attn1"))?,
            norm2,
            attn2: TextCrossAttention::new(cfg, vb.pp("attn2"))?,
            norm3: Fp32LayerNorm::new(dim, cfg.eps, false, vb.pp("norm3"))?,
            ffn: FeedForward::new(cfg, vb.pp("ffn"))?,
            scale_shift_table: vb
                .to_dtype(DType::F32)
                .get((1, 6, dim), "scale_shift_table")?,
        })
    }

    /// The modulation table (f32 whatever the model dtype).
    pub fn scale_shift_table(&self) -> &Tensor {
        &self.scale_shift_table
    }

    /// True when the block has a VSA gate projection.
    pub fn has_gate(&self) -> bool {
        self.attn1.has_gate()
    }

    /// Runs the block on `x: [B, S, dim]` as block number `layer`.
    pub fn forward(&self, x: &Tensor, layer: usize, inputs: &BlockInputs<'_>) -> Result<Tensor> {
        let table = self
            .scale_shift_table
            .broadcast_add(&inputs.modulation.to_dtype(DType::F32)?)?;
        let m = table.chunk(6, 1)?; // shift, scale, gate (attention); shift, scale, gate (FFN)
        let site = CallSite {
            layer,
            step: inputs.step,
        };

        let h = self.norm1.modulated(x, &m[0], &m[1])?;
        let residual = Epilogue {
            gate: Some(&m[2]),
            residual: Some(x),
            ..Default::default()
        };
        let x = self.attn1.forward(
            &h,
            inputs.rope,
            inputs.grid,
            site,
            inputs.attention,
            residual,
        )?;

        let h = match &self.norm2 {
            Some(norm) => norm.normalized(&x)?,
            None => x.clone(),
        };
        let x = self.attn2.forward(
            &h,
            inputs.context,
            Epilogue {
                residual: Some(&x),
                ..Default::default()
            },
        )?;

        let h = self.norm3.modulated(&x, &m[3], &m[4])?;
        self.ffn.forward(
            &h,
            Epilogue {
                gate: Some(&m[5]),
                residual: Some(&x),
                ..Default::default()
            },
        )
    }
}

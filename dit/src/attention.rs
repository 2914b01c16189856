//! Self-attention (through the sparse seam) and cross-attention to text.

use crate::config::WanConfig;
use crate::fused::{self, Epilogue};
use crate::linear::Projection;
use crate::norm::RmsNorm;
use crate::rope::Rope3d;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use sparse::{AttentionCall, CallSite, SelfAttention, TokenGrid};

/// Query/key/value/output projections with RMSNorm on q and k, shared by both attentions.
#[derive(Clone, Debug)]
struct Projections {
    to_q: Projection,
    to_k: Projection,
    to_v: Projection,
    to_out: Projection,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: usize,
}

impl Projections {
    fn new(cfg: &WanConfig, vb: &VarBuilder) -> Result<Self> {
        let dim = cfg.dim();
        Ok(Self {
            to_q: Projection::new(dim, dim, vb.pp("to_q"))?,
            to_k: Projection::new(dim, dim, vb.pp("to_k"))?,
            to_v: Projection::new(dim, dim, vb.pp("to_v"))?,
            to_out: Projection::new(dim, dim, vb.pp("to_out.0"))?,
            norm_q: RmsNorm::new(dim, cfg.eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, cfg.eps, vb.pp("norm_k"))?,
            heads: cfg.num_heads,
        })
    }

    /// `[B, S, dim]` to `[B, H, S, D]` (a strided view).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, dim) = x.dims3()?;
        x.reshape((b, s, self.heads, dim / self.heads))?
            .transpose(1, 2)
    }

    /// `[B, H, S, D]` back to `[B, S, dim]`, then the output projection and its epilogue.
    fn merge_heads(&self, x: &Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        self.to_out
            .forward_with(&x.transpose(1, 2)?.reshape((b, s, h * d))?, epilogue)
    }

    /// `proj(x)`, RMSNorm over the whole width, split into heads and (when given) rotated:
    /// `[B, H, S, D]`. On the GPU the norm and the rotation are one fused kernel.
    fn normed_heads(
        &self,
        proj: &Projection,
        norm: &RmsNorm,
        x: &Tensor,
        rope: Option<&Rope3d>,
    ) -> Result<Tensor> {
        let y = proj.forward(x)?;
        match rope {
            Some(rope) => {
                let head_dim = y.dim(2)? / self.heads;
                fused::rms_rope(&y, norm.weight(), rope, head_dim, norm.eps())?.transpose(1, 2)
            }
            None => self.split_heads(&norm.forward(&y)?),
        }
    }

    fn query(&self, x: &Tensor, rope: Option<&Rope3d>) -> Result<Tensor> {
        self.normed_heads(&self.to_q, &self.norm_q, x, rope)
    }

    fn key_value(&self, context: &Tensor, rope: Option<&Rope3d>) -> Result<(Tensor, Tensor)> {
        let k = self.normed_heads(&self.to_k, &self.norm_k, context, rope)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        Ok((k, v))
    }
}

/// Self-attention over the video tokens with 3D RoPE; the attention itself is delegated to a
/// [`SelfAttention`] implementation. Carries the optional VSA `to_gate_compress` projection.
#[derive(Clone, Debug)]
pub struct VideoSelfAttention {
    proj: Projections,
    gate_compress: Option<Projection>,
}

impl VideoSelfAttention {
    /// Reads `to_q/k/v`, `to_out.0`, `norm_q/k` and, when present, `to_gate_compress`.
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let proj = Projections::new(cfg, &vb)?;
        let gate_compress = if vb.contains_tensor("to_gate_compress.weight") {
            Some(Projection::new(
                cfg.dim(),
                cfg.dim(),
                vb.pp("to_gate_compress"),
            )?)
        } else {
            None
        };
        Ok(Self {
            proj,
            gate_compress,
        })
    }

    /// True when the block carries a VSA gate projection.
    pub fn has_gate(&self) -> bool {
        self.gate_compress.is_some()
    }

    /// Attends `x: [B, S, dim]` (already normalised and modulated) over itself; the output
    /// projection is followed by `epilogue` (the block's gated residual).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope3d,
        grid: TokenGrid,
        site: CallSite,
        attention: &dyn SelfAttention,
        epilogue: Epilogue<'_>,
    ) -> Result<Tensor> {
        let q = self.proj.query(x, Some(rope))?;
        let (k, v) = self.proj.key_value(x, Some(rope))?;
        let gate = match &self.gate_compress {
            Some(g) => Some(self.proj.split_heads(&g.forward(x)?)?),
            None => None,
        };
        let call = AttentionCall {
            q: &q,
            k: &k,
            v: &v,
            gate: gate.as_ref(),
            grid,
            site,
            first_head: 0,
        };
        self.proj.merge_heads(&attention.attend(&call)?, epilogue)
    }
}

/// Cross-attention from video tokens to the projected text, always exact.
#[derive(Clone, Debug)]
pub struct TextCrossAttention {
    proj: Projections,
}

impl TextCrossAttention {
    /// Reads `to_q/k/v`, `to_out.0` and `norm_q/k`.
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: Projections::new(cfg, &vb)?,
        })
    }

    /// Attends `x: [B, S, dim]` to `context: [B, L, dim]`; the output projection is followed
    /// by `epilogue` (the block's residual).
    pub fn forward(&self, x: &Tensor, context: &Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
        let q = self.proj.query(x, None)?;
        let (k, v) = self.proj.key_value(context, None)?;
        self.proj
            .merge_heads(&sparse::dense::attention(&q, &k, &v)?, epilogue)
    }
}

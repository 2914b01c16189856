//! The UMT5 encoder (google/umt5-xxl's, Wan's text encoder) in transformers' key layout.
//!
//! Pre-norm blocks of self-attention and a gated-GELU feed-forward network. Unlike T5, every
//! block learns its own relative-position bias. Attention logits are not scaled by 1/sqrt(d);
//! logits, bias, mask and softmax are f32, norms are computed in f32.

use super::config::Umt5Config;
use super::position_bias::{bucket_grid, RelativePositionBias};
use candle_core::{DType, Result, Tensor};
use candle_nn::{embedding, linear_no_bias, Embedding, Linear, Module, VarBuilder};

/// T5's layer norm: scale by the root mean square, no mean subtraction, no bias.
#[derive(Clone, Debug)]
pub struct T5LayerNorm {
    /// Scale, kept in f32.
    weight: Tensor,
    eps: f32,
}

impl T5LayerNorm {
    /// Reads `weight` `[dim]` as f32.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.to_dtype(DType::F32).get(dim, "weight")?,
            eps: eps as f32,
        })
    }

    /// Normalises the last dim in f32 and returns `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let normed = candle_nn::ops::rms_norm(
            &x.to_dtype(DType::F32)?.contiguous()?,
            &self.weight,
            self.eps,
        )?;
        normed.to_dtype(x.dtype())
    }
}

/// Multi-head self-attention with an additive relative-position bias and key padding mask.
#[derive(Clone, Debug)]
pub struct Umt5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    position_bias: RelativePositionBias,
    heads: usize,
    head_dim: usize,
}

impl Umt5Attention {
    /// Reads `q`, `k`, `v`, `o` and `relative_attention_bias`.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.inner_dim();
        Ok(Self {
            q: linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            position_bias: RelativePositionBias::new(cfg, vb.pp("relative_attention_bias"))?,
            heads: cfg.num_heads,
            head_dim: cfg.d_kv,
        })
    }

    /// `[B, L, d_model]` to `[B, H, L, d_kv]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        x.reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Attends `x: [B, L, d_model]`; `buckets: [L, L]`, `key_mask: [B, 1, 1, L]` additive f32.
    pub fn forward(&self, x: &Tensor, buckets: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let q = self.split_heads(&self.q.forward(x)?)?;
        let k = self.split_heads(&self.k.forward(x)?)?;
        let v = self.split_heads(&self.v.forward(x)?)?;
        let logits = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&self.position_bias.forward(buckets)?)?
            .broadcast_add(key_mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&logits)?.to_dtype(v.dtype())?;
        let out =
            weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, l, self.heads * self.head_dim))?;
        self.o.forward(&out)
    }
}

/// The gated-GELU feed-forward network: `wo(gelu_tanh(wi_0 x) * wi_1 x)`.
#[derive(Clone, Debug)]
pub struct GatedGeluFfn {
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

impl GatedGeluFfn {
    /// Reads `wi_0`, `wi_1` and `wo`.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            wi_0: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
            wi_1: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
            wo: linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo"))?,
        })
    }

    /// Applies the network to `[B, L, d_model]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.wi_0.forward(x)?.gelu()?;
        self.wo.forward(&(gate * self.wi_1.forward(x)?)?)
    }
}

/// One encoder block: `x + attn(norm(x))`, then `x + ffn(norm(x))`.
#[derive(Clone, Debug)]
pub struct Umt5Block {
    attn_norm: T5LayerNorm,
    attn: Umt5Attention,
    ffn_norm: T5LayerNorm,
    ffn: GatedGeluFfn,
}

impl Umt5Block {
    /// Reads `layer.0.{layer_norm,SelfAttention}` and `layer.1.{layer_norm,DenseReluDense}`.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            attn_norm: T5LayerNorm::new(cfg.d_model, eps, vb.pp("layer.0.layer_norm"))?,
            attn: Umt5Attention::new(cfg, vb.pp("layer.0.SelfAttention"))?,
            ffn_norm: T5LayerNorm::new(cfg.d_model, eps, vb.pp("layer.1.layer_norm"))?,
            ffn: GatedGeluFfn::new(cfg, vb.pp("layer.1.DenseReluDense"))?,
        })
    }

    /// Runs the block on `[B, L, d_model]`.
    pub fn forward(&self, x: &Tensor, buckets: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.attn_norm.forward(x)?, buckets, key_mask)?)?;
        &x + self.ffn.forward(&self.ffn_norm.forward(&x)?)?
    }
}

/// The UMT5 encoder stack: token embedding, blocks, final norm.
#[derive(Clone, Debug)]
pub struct Umt5Encoder {
    embed_tokens: Embedding,
    blocks: Vec<Umt5Block>,
    final_norm: T5LayerNorm,
    cfg: Umt5Config,
}

impl Umt5Encoder {
    /// Reads from a root `vb` in transformers' layout: the embedding from
    /// `encoder.embed_tokens.weight` or, when that is absent (tied weights), `shared.weight`;
    /// then `encoder.block.N.*` and `encoder.final_layer_norm`.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let embed_key = if vb.contains_tensor("encoder.embed_tokens.weight") {
            "encoder.embed_tokens"
        } else {
            "shared"
        };
        let embed_tokens = embedding(cfg.vocab_size, cfg.d_model, vb.pp(embed_key))?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Umt5Block::new(cfg, vb.pp(format!("encoder.block.{i}"))))
            .collect::<Result<_>>()?;
        let final_norm = T5LayerNorm::new(
            cfg.d_model,
            cfg.layer_norm_epsilon,
            vb.pp("encoder.final_layer_norm"),
        )?;
        Ok(Self {
            embed_tokens,
            blocks,
            final_norm,
            cfg: cfg.clone(),
        })
    }

    /// Encodes `input_ids: [B, L]` (u32) with `attention_mask: [B, L]` (non-zero = token, 0 = padding;
    /// padded keys are ignored) into `[B, L, d_model]`, every position included.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let buckets = bucket_grid(l, &self.cfg, input_ids.device())?;
        let key_mask = padding_bias(attention_mask)?.reshape((b, 1, 1, l))?;
        let mut x = self.embed_tokens.forward(input_ids)?;
        for block in &self.blocks {
            x = block.forward(&x, &buckets, &key_mask)?;
        }
        self.final_norm.forward(&x)
    }
}

/// 0 where `mask` is non-zero, -inf where it is zero (f32).
fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let keep = mask.to_dtype(DType::F32)?.ne(0f32)?;
    let zeros = Tensor::zeros(mask.shape(), DType::F32, mask.device())?;
    let blocked = Tensor::full(f32::NEG_INFINITY, mask.shape(), mask.device())?;
    keep.where_cond(&zeros, &blocked)
}

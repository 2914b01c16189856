//! The transformer's element-wise hot paths as single operations. Each runs as one fused CUDA
//! kernel when its operands are bf16/f16 on a GPU without tracked gradients, replacing several
//! candle passes and f32 round trips with one read and one write; everywhere else (the CPU,
//! f32, training) it runs the composed candle path, which is also what the kernels are tested
//! against. Callers never choose: every function works on every device and dtype.

use crate::norm::{gated_residual, modulate};
use crate::rope::Rope3d;
use candle_core::{DType, Result, Tensor};

/// Largest row the fused row kernels take (channels).
#[cfg(feature = "cuda")]
const MAX_DIM: usize = 8192;

/// What follows the matmul of [`linear`]: `residual + act(x Wᵀ + b) * gate`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Apply GELU (tanh approximation) after the bias.
    pub gelu: bool,
    /// Multiply by this f32 `[B, 1, out]` gate.
    pub gate: Option<&'a Tensor>,
    /// Add this `[B, S, out]` tensor last.
    pub residual: Option<&'a Tensor>,
}

#[cfg(feature = "cuda")]
/// True when `t` can go through the kernels: bf16/f16 on a GPU, no tracked gradient, and a
/// last dim of whole 16-byte vectors.
fn on_kernels(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::BF16 | DType::F16)
        && !t.track_op()
        && t.dims().last().is_some_and(|&c| c % 8 == 0)
}

#[cfg(feature = "cuda")]
/// As [`on_kernels`], for the row kernels (one CTA per row): at most 8192 channels, rank 3.
fn on_row_kernels(x: &Tensor) -> bool {
    on_kernels(x) && x.rank() == 3 && x.dims().last().is_some_and(|&d| d <= MAX_DIM)
}

/// `LayerNorm(x) * (1 + scale) + shift` for `x: [B, S, dim]` with `shift, scale: [B, 1, dim]`
/// (f32, any batch stride), computed in f32 and returned in `x`'s dtype (adaLN).
pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_row_kernels(x) {
        return crate::fused_cuda::ln_modulate(x, shift, scale, eps);
    }
    let dim = x.dim(candle_core::D::Minus1)?;
    let ones = Tensor::ones(dim, DType::F32, x.device())?;
    let zeros = Tensor::zeros(dim, DType::F32, x.device())?;
    modulate(&layer_norm_f32(x, &ones, &zeros, eps)?, shift, scale)?.to_dtype(x.dtype())
}

/// `LayerNorm(x) * weight + bias` over the last dim of `x: [B, S, dim]` with f32 `weight` and
/// `bias: [dim]`, computed in f32 and returned in `x`'s dtype.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_row_kernels(x) {
        // The modulation form with a per-channel shift and scale: weight = 1 + (weight - 1).
        return crate::fused_cuda::ln_modulate(x, bias, &(weight - 1.0)?, eps);
    }
    layer_norm_f32(x, weight, bias, eps)?.to_dtype(x.dtype())
}

/// LayerNorm of `x` in f32 (differentiable when a gradient is tracked).
pub fn layer_norm_f32(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let eps = eps as f32;
    if x.track_op() || weight.track_op() {
        candle_nn::ops::layer_norm_slow(&x, weight, bias, eps)
    } else {
        candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps)
    }
}

/// RMSNorm over the last dim of `x` times `weight` (accumulating in f32), in `x`'s dtype.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_row_kernels(x) {
        return crate::fused_cuda::rms_norm(x, weight, eps);
    }
    if x.track_op() || weight.track_op() {
        candle_nn::ops::rms_norm_slow(x, weight, eps as f32)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
    }
}

/// RMSNorm over the last dim of `x: [B, S, heads * head_dim]` times `weight`, then `rope` per
/// head: `[B, S, heads, head_dim]` in `x`'s dtype.
pub fn rms_rope(
    x: &Tensor,
    weight: &Tensor,
    rope: &Rope3d,
    head_dim: usize,
    eps: f64,
) -> Result<Tensor> {
    let (b, s, dim) = x.dims3()?;
    #[cfg(feature = "cuda")]
    if on_row_kernels(x) {
        return crate::fused_cuda::rms_rope(x, weight, rope.cos_sin(), head_dim, eps);
    }
    let heads = rms_norm(x, weight, eps)?
        .reshape((b, s, dim / head_dim, head_dim))?
        .transpose(1, 2)?;
    rope.apply(&heads)?.transpose(1, 2)
}

/// `x Wᵀ (+ b) (then GELU)` for `x: [B, S, K]` and `weight: [N, K]`: `[B, S, N]`. On the GPU
/// through cuBLASLt, whose bias and GELU (tanh) epilogues run inside the matmul.
pub fn lt_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_kernels(x) && x.rank() == 3 && bias.is_none_or(on_kernels) {
        return crate::fused_cuda::lt_linear(x, weight, bias, gelu);
    }
    let y = x.broadcast_matmul(&weight.t()?)?;
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    if gelu {
        y.gelu()
    } else {
        Ok(y)
    }
}

/// `residual + act(y + bias) * gate` for `y, residual: [B, S, n]`, `bias: [n]`, `gate:
/// [B, 1, n]` f32 (any batch stride); `act` is GELU (tanh) when `gelu`. On the GPU one pass
/// with f32 arithmetic.
pub fn linear_epilogue(
    y: &Tensor,
    bias: &Tensor,
    gelu: bool,
    gate: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_kernels(y) && y.rank() == 3 && on_kernels(bias) {
        return crate::fused_cuda::linear_epilogue(y, bias, gelu, gate, residual);
    }
    let y = y.broadcast_add(bias)?;
    let y = if gelu { y.gelu()? } else { y };
    match (gate, residual) {
        (Some(gate), Some(residual)) => gated_residual(residual, &y, gate),
        (None, Some(residual)) => residual + y,
        (Some(gate), None) => y
            .to_dtype(DType::F32)?
            .broadcast_mul(gate)?
            .to_dtype(y.dtype()),
        (None, None) => Ok(y),
    }
}

/// A linear layer `x Wᵀ + b` followed by `epilogue`. On the GPU the bias and GELU run inside
/// the cuBLASLt matmul, and a gate or a residual is one more fused pass.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    epilogue: Epilogue<'_>,
) -> Result<Tensor> {
    if epilogue.gate.is_none() && epilogue.residual.is_none() {
        return lt_linear(x, weight, Some(bias), epilogue.gelu);
    }
    let y = lt_linear(x, weight, None, false)?;
    linear_epilogue(&y, bias, epilogue.gelu, epilogue.gate, epilogue.residual)
}

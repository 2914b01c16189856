//! Dense layers whose bias, activation, gate and residual are one pass on the GPU.
//!
//! `candle_nn::Linear` adds its bias with a broadcast kernel; at video sequence lengths that
//! pass costs several times the matmul itself. A [`Projection`] runs the matmul through cuBLAS
//! and everything after it through [`crate::fused::linear_epilogue`].

use crate::fused;
use crate::norm::gated_residual;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// What follows the matmul of a [`Projection`]: `residual + act(x Wᵀ + b) * gate`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Apply GELU (tanh approximation) after the bias.
    pub gelu: bool,
    /// Multiply by this f32 `[B, 1, out]` gate.
    pub gate: Option<&'a Tensor>,
    /// Add this `[B, S, out]` tensor last.
    pub residual: Option<&'a Tensor>,
}

/// A linear layer `x Wᵀ + b` with `weight: [out, in]` and `bias: [out]`.
#[derive(Clone, Debug)]
pub struct Projection {
    weight: Tensor,
    bias: Tensor,
}

impl Projection {
    /// Reads `weight` `[out, in]` and `bias` `[out]`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    /// `x Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Epilogue::default())
    }

    /// `residual + act(x Wᵀ + b) * gate` (the gate and the residual sum in f32).
    pub fn forward_with(&self, x: &Tensor, epilogue: Epilogue<'_>) -> Result<Tensor> {
        if fused::epilogue_applies(x) && fused::epilogue_applies(&self.bias) && x.rank() == 3 {
            // cuBLASLt runs the bias and GELU inside the matmul; a gate or a residual is one more
            // fused pass.
            if epilogue.gate.is_none() && epilogue.residual.is_none() {
                return fused::lt_linear(x, &self.weight, Some(&self.bias), epilogue.gelu);
            }
            let y = fused::lt_linear(x, &self.weight, None, false)?;
            return fused::linear_epilogue(
                &y,
                &self.bias,
                epilogue.gelu,
                epilogue.gate,
                epilogue.residual,
            );
        }
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        let y = y.broadcast_add(&self.bias)?;
        let y = if epilogue.gelu { y.gelu()? } else { y };
        match (epilogue.gate, epilogue.residual) {
            (Some(gate), Some(residual)) => gated_residual(residual, &y, gate),
            (None, Some(residual)) => residual + y,
            (Some(gate), None) => y
                .to_dtype(DType::F32)?
                .broadcast_mul(gate)?
                .to_dtype(y.dtype()),
            (None, None) => Ok(y),
        }
    }
}

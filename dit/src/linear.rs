//! Dense layers whose bias, activation, gate and residual are one pass on the GPU.
//!
//! `candle_nn::Linear` adds its bias with a broadcast kernel; at video sequence lengths that
//! pass costs several times the matmul itself. A [`Projection`] runs through
//! [`crate::fused::linear`] instead.

use crate::fused::{self, Epilogue};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

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
        fused::linear(x, &self.weight, &self.bias, epilogue)
    }
}

//! Normalisations and adaLN modulation, computed in f32 as Wan specifies.

use crate::fused;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// LayerNorm over the last dim computed in f32, with or without learned affine parameters.
#[derive(Clone, Debug)]
pub struct Fp32LayerNorm {
    weight: Tensor,
    bias: Tensor,
    affine: bool,
    eps: f32,
}

impl Fp32LayerNorm {
    /// An affine norm reads `weight` and `bias` from `vb`; a plain one stores no parameters.
    pub fn new(dim: usize, eps: f64, affine: bool, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            let vb = vb.to_dtype(DType::F32);
            (vb.get(dim, "weight")?, vb.get(dim, "bias")?)
        } else {
            (
                Tensor::ones(dim, DType::F32, vb.device())?,
                Tensor::zeros(dim, DType::F32, vb.device())?,
            )
        };
        Ok(Self {
            weight,
            bias,
            affine,
            eps: eps as f32,
        })
    }

    /// `LayerNorm(x) * (1 + scale) + shift` in f32 (adaLN), returned in `x`'s dtype.
    pub fn modulated(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        if self.affine {
            return modulate(&self.forward(x)?, shift, scale)?.to_dtype(x.dtype());
        }
        fused::ln_modulate(x, shift, scale, self.eps as f64)
    }

    /// `LayerNorm(x)` with its affine parameters, computed in f32 and returned in `x`'s dtype.
    pub fn normalized(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps as f64)
    }

    /// Normalises `x` (any float dtype) and returns f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm_f32(x, &self.weight, &self.bias, self.eps as f64)
    }
}

/// RMSNorm with a learned scale over the whole projected width (across heads), as Wan applies
/// to queries and keys.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Reads `weight` of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
        })
    }

    /// The learned scale.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Epsilon.
    pub fn eps(&self) -> f64 {
        self.eps as f64
    }

    /// Normalises the last dim (accumulating in f32) and scales; keeps `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::rms_norm(x, &self.weight, self.eps as f64)
    }
}

/// adaLN: `normed * (1 + scale) + shift`, everything f32 and broadcast over tokens.
pub fn modulate(normed: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// Gated residual in f32: `(residual + update * gate)` cast back to `residual`'s dtype.
pub fn gated_residual(residual: &Tensor, update: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let sum = residual
        .to_dtype(DType::F32)?
        .add(&update.to_dtype(DType::F32)?.broadcast_mul(gate)?)?;
    sum.to_dtype(residual.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Shift, scale and gate act in that order: (norm * (1 + scale) + shift), then
    /// residual + update * gate.
    #[test]
    fn modulation_order_is_scale_then_shift_then_gate() -> Result<()> {
        let dev = Device::Cpu;
        let normed = Tensor::new(&[[2f32, -1.0]], &dev)?;
        let shift = Tensor::new(&[[10f32, 20.0]], &dev)?;
        let scale = Tensor::new(&[[0.5f32, 3.0]], &dev)?;
        let m: Vec<f32> = modulate(&normed, &shift, &scale)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(m, vec![2.0 * 1.5 + 10.0, -4.0 + 20.0]);
        let residual = Tensor::new(&[[1f32, 1.0]], &dev)?;
        let gate = Tensor::new(&[[0.25f32, -1.0]], &dev)?;
        let r: Vec<f32> = gated_residual(&residual, &normed, &gate)?
            .flatten_all()?
            .to_vec1()?;
        assert_eq!(r, vec![1.5, 2.0]);
        Ok(())
    }
}

//! Gradient clipping by global L2 norm, as PyTorch's `clip_grad_norm_` computes it.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

/// Added to the norm before dividing, as PyTorch does.
const CLIP_EPS: f64 = 1e-6;

/// The global L2 norm of the gradients of `params` (those in `grads`), squared and summed in
/// f64 over all of them joined into one vector (a few operations whatever their number).
pub fn grad_norm(params: &BTreeMap<String, Var>, grads: &GradStore) -> Result<f64> {
    let present: Vec<&Tensor> = params
        .values()
        .filter_map(|var| grads.get(var.as_tensor()))
        .collect();
    if present.is_empty() {
        return Ok(0.0);
    }
    // One transfer from the device for all parameters.
    let total = super::flat::join(present)?
        .to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(total.sqrt())
}

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, and
/// returns the norm before clipping.
///
/// As `torch.nn.utils.clip_grad_norm_`: every gradient is multiplied by
/// `max_norm / (norm + 1e-6)` when that factor is below 1, and left alone otherwise.
///
/// A non-finite norm (a NaN or infinite gradient somewhere) leaves the gradients untouched and
/// is returned as it is: the caller decides, typically by skipping the optimiser step and
/// logging the step (`norm.is_finite()` tells).
pub fn clip_grad_norm(
    params: &BTreeMap<String, Var>,
    grads: &mut GradStore,
    max_norm: f64,
) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::Usage(format!(
            "gradient clipping norm {max_norm} must be a positive number: give e.g. 1.0"
        )));
    }
    let norm = grad_norm(params, grads)?;
    if !norm.is_finite() {
        return Ok(norm);
    }
    let factor = max_norm / (norm + CLIP_EPS);
    if factor < 1.0 {
        for var in params.values() {
            let scaled = match grads.get(var.as_tensor()) {
                Some(grad) => grad.affine(factor, 0.0)?,
                None => continue,
            };
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}

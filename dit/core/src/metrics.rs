//! Error measures for comparing an output with a reference.

use candle_core::{DType, Result, Tensor};

/// Relative L2 error `‖a − b‖ / ‖b‖`, computed in f64 (`b` is the reference).
pub fn relative_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let diff = (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

//! Error measures for comparing an output with a reference.

use candle_core::{DType, Result, Tensor};

/// PSNR of an exact match, reported instead of infinity (any higher value is cut to it too).
pub const PSNR_CAP: f64 = 100.0;

/// PSNR in dB of a mean squared error `mse` over samples whose range spans `peak`, at most
/// [`PSNR_CAP`] (which an error of zero gives).
pub fn capped_psnr(mse: f64, peak: f64) -> f64 {
    if mse <= 0.0 {
        return PSNR_CAP;
    }
    (10.0 * (peak * peak / mse).log10()).min(PSNR_CAP)
}

/// Relative L2 error `‖a − b‖ / ‖b‖`, computed in f64 (`b` is the reference).
pub fn relative_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    let diff = (a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero error is capped; an error as large as the peak is 0 dB; an error of a hundredth
    /// of the peak is 40 dB, for 8-bit samples and for [-1, 1] pixels alike.
    #[test]
    fn capped_psnr_of_known_errors() {
        assert_eq!(capped_psnr(0.0, 255.0), PSNR_CAP);
        assert!(capped_psnr(4.0, 2.0).abs() < 1e-12);
        assert!((capped_psnr(0.02f64.powi(2), 2.0) - 40.0).abs() < 1e-9);
        assert!((capped_psnr(2.55f64.powi(2), 255.0) - 40.0).abs() < 1e-9);
        assert_eq!(capped_psnr(1e-30, 2.0), PSNR_CAP);
    }
}

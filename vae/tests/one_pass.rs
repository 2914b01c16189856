//! Training's one-pass encode and decode against inference's streamed ones, which match
//! diffusers (tests/parity.rs): the same functions, so the same numbers.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use vae::{DecodeOptions, WanVae};

fn tiny() -> Result<WanVae> {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_nrb2");
    Ok(WanVae::load(&folder, DType::F32, &Device::Cpu)?)
}

/// Largest absolute difference, relative to the largest magnitude of `want`.
fn relative_max_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    let peak = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let diff = (got - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(diff / peak.max(f32::MIN_POSITIVE))
}

/// On a fresh random 13-frame video (the first frame and three chunks of 4, through both
/// temporal downsamplings and upsamplings of the Wan 2.1 structure), the one-pass posterior
/// mean equals the streamed encode, and the one-pass decode of fresh random latents (clamped)
/// equals the streamed decode, both to 1e-4 of the largest value (the two sum in different
/// orders; f32 rounding reached 1.5e-5 in 24 draws).
#[test]
fn one_pass_encode_and_decode_equal_the_streamed_ones() -> Result<()> {
    let vae = tiny()?;
    let video = Tensor::rand(-1f32, 1.0, (2, 3, 13, 24, 16), &Device::Cpu)?;
    let (mean, logvar) = vae.encode_posterior(&video)?;
    let streamed = vae.encode(&video)?;
    assert_eq!(mean.dims(), streamed.dims());
    assert_eq!(logvar.dims(), [2, 16, 4, 3, 2]);
    let off = relative_max_diff(&mean, &streamed)?;
    println!("posterior mean off by {off:e}");
    assert!(off <= 1e-4, "posterior mean off by {off:e}");

    let z = Tensor::randn(0f32, 1.0, (2, 16, 4, 3, 2), &Device::Cpu)?;
    let whole = vae.decode_unclamped(&z)?.clamp(-1f32, 1f32)?;
    let streamed = vae.decode(&z, &DecodeOptions::default())?;
    assert_eq!(whole.dims(), [2, 3, 13, 24, 16]);
    let off = relative_max_diff(&whole, &streamed)?;
    println!("decode off by {off:e}");
    assert!(off <= 1e-4, "decode off by {off:e}");
    Ok(())
}

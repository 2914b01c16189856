//! Training's column gather and its adjoint on a CUDA GPU against their CPU versions:
//! `cargo test --release -p vae --features cuda --test columns`.
#![cfg(feature = "cuda")]

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use vae::columns::ShiftColumns;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// For temporal strides 1 and 2, a block that starts inside the frame and one that covers it,
/// and f32 and bf16: the GPU's columns equal the CPU's exactly (they are copies), and the
/// GPU's frame gradients of fresh random column gradients match the CPU's f32 sums of the same
/// (bf16-rounded) values to 1e-5 (f32) or a bf16 rounding of the sum (bf16).
#[test]
fn gpu_columns_and_gradients_match_the_cpu() -> Result<()> {
    let gpu = Device::new_cuda(0)?;
    // 3x3x3 kernel over 10x12 frames padded by one (and a spare row): rows of 14 pixels
    let (row, h_out) = (14, 10);
    for stride in [1, 2] {
        for (start, len) in [(0, h_out * row), (17, 60)] {
            let spec = ShiftColumns {
                taps: 3,
                kernel: 3,
                row,
                stride,
                frames_out: 3,
                start,
                len,
            };
            for dtype in [DType::F32, DType::BF16] {
                let frames = Tensor::randn(0f32, 1.0, (2, 7, 16, 13 * row), &Device::Cpu)?
                    .to_dtype(dtype)?;
                let cpu_frames = Var::from_tensor(&frames.to_dtype(DType::F32)?)?;
                let gpu_frames = Var::from_tensor(&frames.to_device(&gpu)?)?;
                let cpu_columns = spec.gather(cpu_frames.as_tensor())?;
                let gpu_columns = spec.gather(gpu_frames.as_tensor())?;
                assert_eq!(max_abs_diff(&cpu_columns, &gpu_columns)?, 0.0);
                let g =
                    Tensor::randn(0f32, 1.0, cpu_columns.shape(), &Device::Cpu)?.to_dtype(dtype)?;
                let cpu_grad = (&cpu_columns * g.to_dtype(DType::F32)?)?
                    .sum_all()?
                    .backward()?;
                let gpu_grad = (&gpu_columns * g.to_device(&gpu)?)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .backward()?;
                let want = cpu_grad.get(cpu_frames.as_tensor()).expect("CPU gradient");
                let got = gpu_grad.get(gpu_frames.as_tensor()).expect("GPU gradient");
                let peak = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let tolerance = if dtype == DType::F32 { 1e-5 } else { 8e-3 } * peak;
                let off = max_abs_diff(want, got)?;
                println!("stride {stride}, block at {start}, {dtype:?}: gradient off by {off:.2e} (peak {peak:.2})");
                assert!(off <= tolerance, "off by {off}");
            }
        }
    }
    Ok(())
}

//! The transformer on a CUDA GPU in bf16 against diffusers' bf16 outputs (fixtures from
//! tests/fixtures/make_fixtures.py): `cargo test --release -p dit --features cuda --test cuda`.
#![cfg(feature = "cuda")]

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device};
use dit::{load_transformer, LoraSet, Step};
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{AttentionRouter, AttentionSchedule, Dense};
use std::path::PathBuf;
use vdit_core::metrics::relative_l2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn bf16_on_the_gpu_matches_diffusers_in_both_layouts() -> Result<()> {
    let gpu = Device::new_cuda(0)?;
    for (name, folder) in [("tiny_h12", "tiny_h12"), ("odd_h3", "odd_h3_original")] {
        let io = load(fixture(&format!("{name}_io.safetensors")), &Device::Cpu)?;
        let model =
            load_transformer(&fixture(folder), &LoraSet::default(), DType::BF16, &gpu)?.model;
        let run = |attention: &dyn sparse::SelfAttention| -> Result<f64> {
            let out = model.forward(
                &io["latents"].to_dtype(DType::BF16)?.to_device(&gpu)?,
                &io["timesteps"].to_device(&gpu)?,
                &io["text"].to_dtype(DType::BF16)?.to_device(&gpu)?,
                attention,
                Step::SINGLE,
            )?;
            Ok(relative_l2(
                &out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
                &io["out_bf16"],
            )?)
        };
        let err = run(&Dense)?;
        println!("{folder} on the GPU, bf16: relative L2 {err:.2e}");
        assert!(err <= 2e-2, "{folder}: {err:e}");
        // Keep-everything VSA takes the block-sparse path and must agree as well.
        let vsa = AttentionRouter::new(AttentionSchedule::of(Vsa::new(VsaOptions {
            sparsity: 0.0,
            tile: [1, 2, 2],
        })?));
        let err = run(&vsa)?;
        println!("{folder} on the GPU, bf16, VSA keep-all: relative L2 {err:.2e}");
        assert!(err <= 2e-2, "{folder} VSA: {err:e}");
    }
    Ok(())
}

/// Each fused kernel on the GPU (bf16) against the plain candle path on the CPU (f32).
#[test]
fn fused_kernels_match_the_plain_path() -> Result<()> {
    use candle_core::Tensor;
    use dit::fused;
    let gpu = Device::new_cuda(0)?;
    // 384 channels: the row kernels run 48 threads (two warps, the second partly idle)
    let (b, s, heads, d) = (2, 37, 3, 128);
    let dim = heads * d;
    let bf16 = |t: Tensor| -> Result<(Tensor, Tensor)> {
        let cpu = t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
        Ok((cpu.clone(), cpu.to_dtype(DType::BF16)?.to_device(&gpu)?))
    };
    let check = |name: &str, g: &Tensor, c: &Tensor| -> Result<()> {
        let err = relative_l2(&g.to_device(&Device::Cpu)?.to_dtype(DType::F32)?, c)?;
        println!("fused {name}: relative L2 {err:.2e}");
        assert!(err <= 1e-2, "{name}: {err:e}");
        Ok(())
    };
    let (xc, xg) = bf16(Tensor::randn(0.5f32, 3.0, (b, s, dim), &Device::Cpu)?)?;
    let (yc, yg) = bf16(Tensor::randn(0f32, 1.0, (b, s, dim), &Device::Cpu)?)?;
    let table = Tensor::randn(0f32, 0.5, (b, 6, dim), &Device::Cpu)?;
    let m = table.chunk(6, 1)?;
    let mg: Vec<Tensor> = table.to_device(&gpu)?.chunk(6, 1)?;

    // LayerNorm + modulation, per batch row
    let mean = xc.mean_keepdim(2)?;
    let centered = xc.broadcast_sub(&mean)?;
    let normed = centered.broadcast_div(&(centered.sqr()?.mean_keepdim(2)? + 1e-6)?.sqrt()?)?;
    let expected = normed
        .broadcast_mul(&(&m[1] + 1.0)?)?
        .broadcast_add(&m[0])?;
    check(
        "ln_modulate",
        &fused::ln_modulate(&xg, &mg[0], &mg[1], 1e-6)?,
        &expected,
    )?;
    // affine form: weight w, bias c as scale = w - 1, shift = c (per channel)
    let w = Tensor::randn(1f32, 0.2, dim, &Device::Cpu)?;
    let c = Tensor::randn(0f32, 0.2, dim, &Device::Cpu)?;
    let expected = normed.broadcast_mul(&w)?.broadcast_add(&c)?;
    let got = fused::ln_modulate(&xg, &c.to_device(&gpu)?, &(w.to_device(&gpu)? - 1.0)?, 1e-6)?;
    check("ln_affine", &got, &expected)?;

    // linear epilogue: bias only, bias + GELU, and bias * gate + residual
    let (bc, bg) = bf16(Tensor::randn(0f32, 0.5, dim, &Device::Cpu)?)?;
    let biased = yc.broadcast_add(&bc)?;
    check(
        "epilogue bias",
        &fused::linear_epilogue(&yg, &bg, false, None, None)?,
        &biased,
    )?;
    let gelu = (&biased * 0.5)?.mul(
        &((&biased + ((biased.sqr()? * &biased)? * 0.044715)?)? * 0.7978845608028654)?
            .tanh()?
            .affine(1.0, 1.0)?,
    )?;
    check(
        "epilogue bias + gelu",
        &fused::linear_epilogue(&yg, &bg, true, None, None)?,
        &gelu,
    )?;
    let expected = (&xc + biased.broadcast_mul(&m[2])?)?;
    check(
        "epilogue gated residual",
        &fused::linear_epilogue(&yg, &bg, false, Some(&mg[2]), Some(&xg))?,
        &expected,
    )?;

    // cuBLASLt linear with its bias and GELU epilogues: x W^T + b, then GELU
    let (wc, wg) = bf16(Tensor::randn(0f32, 0.1, (2 * dim, dim), &Device::Cpu)?)?;
    let (bc2, bg2) = bf16(Tensor::randn(0f32, 0.5, 2 * dim, &Device::Cpu)?)?;
    let linear = xc.broadcast_matmul(&wc.t()?)?.broadcast_add(&bc2)?;
    check(
        "lt_linear bias",
        &fused::lt_linear(&xg, &wg, Some(&bg2), false)?,
        &linear,
    )?;
    let gelu = (&linear * 0.5)?.mul(
        &((&linear + ((linear.sqr()? * &linear)? * 0.044715)?)? * 0.7978845608028654)?
            .tanh()?
            .affine(1.0, 1.0)?,
    )?;
    check(
        "lt_linear bias + gelu",
        &fused::lt_linear(&xg, &wg, Some(&bg2), true)?,
        &gelu,
    )?;
    check(
        "lt_linear no bias",
        &fused::lt_linear(&xg, &wg, None, false)?,
        &xc.broadcast_matmul(&wc.t()?)?,
    )?;

    // RMSNorm over all heads, then RoPE per head
    let grid = vdit_core::TokenGrid::new(1, 1, s);
    let rope = dit::rope::Rope3d::new(d, grid, &Device::Cpu)?;
    let rope_g = dit::rope::Rope3d::new(d, grid, &gpu)?;
    let weight = Tensor::randn(1f32, 0.2, dim, &Device::Cpu)?;
    let rms = xc
        .broadcast_div(&(xc.sqr()?.mean_keepdim(2)? + 1e-6)?.sqrt()?)?
        .broadcast_mul(&weight)?;
    check(
        "rms_norm",
        &fused::rms_norm(&xg, &weight.to_dtype(DType::BF16)?.to_device(&gpu)?, 1e-6)?,
        &rms,
    )?;
    let expected = rope
        .apply(&rms.reshape((b, s, heads, d))?.transpose(1, 2)?)?
        .transpose(1, 2)?;
    let got = fused::rms_rope(
        &xg,
        &weight.to_dtype(DType::BF16)?.to_device(&gpu)?,
        &rope_g,
        d,
        1e-6,
    )?;
    check("rms_rope", &got, &expected.contiguous()?)?;
    Ok(())
}

/// LoRAs merged on the GPU as the weights load (bf16 model, f32 merge) give the output
/// diffusers' merge gives (tests/fixtures/make_lora_fixtures.py), within bf16 tolerance.
#[test]
fn lora_merged_on_the_gpu_matches_diffusers() -> Result<()> {
    let gpu = Device::new_cuda(0)?;
    let io = load(fixture("tiny_h12_io.safetensors"), &Device::Cpu)?;
    let expected = load(fixture("lora/lora_io.safetensors"), &Device::Cpu)?;
    for (file, scale, key) in [
        ("kohya", 1.0, "out_kohya"),
        ("original", 1.0, "out_original"),
    ] {
        let loras = LoraSet {
            loras: vec![dit::LoraSpec {
                path: fixture(&format!("lora/{file}.safetensors")),
                scale,
            }],
            lenient: false,
        };
        let model = load_transformer(&fixture("tiny_h12"), &loras, DType::BF16, &gpu)?.model;
        let out = model.forward(
            &io["latents"].to_dtype(DType::BF16)?.to_device(&gpu)?,
            &io["timesteps"].to_device(&gpu)?,
            &io["text"].to_dtype(DType::BF16)?.to_device(&gpu)?,
            &Dense,
            Step::SINGLE,
        )?;
        let out = out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let err = relative_l2(&out, &expected[key])?;
        println!("LoRA {file} merged on the GPU, bf16: relative L2 {err:.2e}");
        assert!(err <= 2e-2, "{file}: {err:e}");
    }
    Ok(())
}

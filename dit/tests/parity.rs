//! The transformer against diffusers' WanTransformer3DModel on tiny random configs
//! (fixtures from tests/fixtures/make_fixtures.py).

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device, Tensor};
use dit::{load_transformer, KeyLayout, LoraSet, Step};
use sparse::Dense;
use std::collections::HashMap;
use std::path::PathBuf;
use vdit_core::metrics::relative_l2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn io(name: &str) -> Result<HashMap<String, Tensor>> {
    Ok(load(
        fixture(&format!("{name}_io.safetensors")),
        &Device::Cpu,
    )?)
}

/// Runs the model stored in `folder` on the inputs of `name` in `dtype`; returns the output
/// as f32 and the expected output for that dtype.
fn run(name: &str, folder: &str, dtype: DType) -> Result<(Tensor, Tensor)> {
    let tensors = io(name)?;
    let loaded = load_transformer(&fixture(folder), &LoraSet::default(), dtype, &Device::Cpu)?;
    let out = loaded.model.forward(
        &tensors["latents"].to_dtype(dtype)?,
        &tensors["timesteps"],
        &tensors["text"].to_dtype(dtype)?,
        &Dense,
        Step::SINGLE,
    )?;
    assert_eq!(out.dtype(), dtype);
    let key = if dtype == DType::F32 {
        "out_f32"
    } else {
        "out_bf16"
    };
    Ok((out.to_dtype(DType::F32)?, tensors[key].clone()))
}

fn check(name: &str, folder: &str, dtype: DType, tolerance: f64) -> Result<()> {
    let (out, expected) = run(name, folder, dtype)?;
    assert_eq!(out.dims(), expected.dims());
    let err = relative_l2(&out, &expected)?;
    println!("{folder} {dtype:?}: relative L2 {err:.3e}");
    assert!(
        err <= tolerance,
        "{folder} {dtype:?}: relative L2 {err:.3e} > {tolerance:e}"
    );
    Ok(())
}

#[test]
fn head_dim_12_matches_diffusers_in_f32() -> Result<()> {
    check("tiny_h12", "tiny_h12", DType::F32, 1e-4)
}

#[test]
fn odd_grid_three_heads_matches_diffusers_in_f32() -> Result<()> {
    check("odd_h3", "odd_h3", DType::F32, 1e-4)
}

#[test]
fn head_dim_12_matches_diffusers_in_bf16() -> Result<()> {
    check("tiny_h12", "tiny_h12", DType::BF16, 2e-2)
}

#[test]
fn odd_grid_three_heads_matches_diffusers_in_bf16() -> Result<()> {
    check("odd_h3", "odd_h3", DType::BF16, 2e-2)
}

#[test]
fn original_layout_gives_the_same_result() -> Result<()> {
    for name in ["tiny_h12", "odd_h3"] {
        let original = format!("{name}_original");
        let loaded = load_transformer(
            &fixture(&original),
            &LoraSet::default(),
            DType::F32,
            &Device::Cpu,
        )?;
        assert_eq!(
            loaded.layout,
            KeyLayout::Original {
                prefix: String::new()
            }
        );
        let diffusers = load_transformer(
            &fixture(name),
            &LoraSet::default(),
            DType::F32,
            &Device::Cpu,
        )?;
        assert_eq!(
            loaded.config, diffusers.config,
            "{name}: configs differ between layouts"
        );
        check(name, &original, DType::F32, 1e-4)?;
    }
    Ok(())
}

/// Under bf16 weights the modulation tables stay f32, as diffusers keeps them.
#[test]
fn modulation_tables_stay_f32_under_bf16_weights() -> Result<()> {
    let loaded = load_transformer(
        &fixture("tiny_h12"),
        &LoraSet::default(),
        DType::BF16,
        &Device::Cpu,
    )?;
    assert_eq!(loaded.model.dtype(), DType::BF16);
    for block in loaded.model.blocks() {
        assert_eq!(block.scale_shift_table().dtype(), DType::F32);
    }
    // The f32 table holds values a bf16 copy cannot: the stored f32 values come back exactly.
    let stored = load(
        fixture("tiny_h12/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    let table = &stored["blocks.0.scale_shift_table"];
    let diff = relative_l2(loaded.model.blocks()[0].scale_shift_table(), table)?;
    assert_eq!(diff, 0.0);
    assert!(relative_l2(&table.to_dtype(DType::BF16)?, table)? > 0.0);
    Ok(())
}

/// RoPE tables equal diffusers' WanRotaryPosEmbed for head dims 12 and 128.
#[test]
fn rope_tables_match_diffusers() -> Result<()> {
    let tables = load(fixture("rope_tables.safetensors"), &Device::Cpu)?;
    for head_dim in [12usize, 128] {
        let g: Vec<i64> = tables[&format!("grid_{head_dim}")].to_vec1()?;
        let grid = vdit_core::TokenGrid::new(g[0] as usize, g[1] as usize, g[2] as usize);
        let rope = dit::rope::Rope3d::new(head_dim, grid, &Device::Cpu)?;
        let cos_err = relative_l2(rope.cos(), &tables[&format!("cos_{head_dim}")])?;
        let sin_err = relative_l2(rope.sin(), &tables[&format!("sin_{head_dim}")])?;
        assert!(
            cos_err < 1e-6 && sin_err < 1e-6,
            "head dim {head_dim}: {cos_err:e} {sin_err:e}"
        );
    }
    Ok(())
}

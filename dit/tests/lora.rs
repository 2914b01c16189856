//! LoRA merging against diffusers' reading of each key format, on the tiny_h12 model (fixtures
//! from tests/fixtures/make_lora_fixtures.py: diffusers converts the original and kohya names,
//! the script merges as PEFT's fuse_lora does). The merged transformer's output on tiny_h12's
//! inputs matches within relative L2 1e-4 (f32).

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device, Tensor};
use dit::{load_transformer, LoraSet, LoraSpec, Step};
use sparse::Dense;
use std::collections::HashMap;
use std::path::PathBuf;
use vdit_core::metrics::relative_l2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn lora(name: &str, scale: f64) -> LoraSpec {
    LoraSpec {
        path: fixture(&format!("lora/{name}.safetensors")),
        scale,
    }
}

/// The output of the model in `folder` with `loras` merged, on tiny_h12's inputs.
fn output(folder: &str, loras: &LoraSet) -> Result<Tensor> {
    let io = load(fixture("tiny_h12_io.safetensors"), &Device::Cpu)?;
    let loaded = load_transformer(&fixture(folder), loras, DType::F32, &Device::Cpu)?;
    Ok(loaded.model.forward(
        &io["latents"],
        &io["timesteps"],
        &io["text"],
        &Dense,
        Step::SINGLE,
    )?)
}

fn expected() -> Result<HashMap<String, Tensor>> {
    Ok(load(fixture("lora/lora_io.safetensors"), &Device::Cpu)?)
}

fn check(loras: Vec<LoraSpec>, key: &str, folder: &str) -> Result<()> {
    let set = LoraSet {
        loras,
        lenient: false,
    };
    let out = output(folder, &set)?;
    let expected = expected()?;
    let err = relative_l2(&out, &expected[key])?;
    let change = relative_l2(&expected["out_base"], &expected[key])?;
    println!(
        "{key} ({folder}): relative L2 {err:.2e} (the LoRA changes the output by {change:.2e})"
    );
    // The LoRA must change the output far more than the tolerance, or the test proves nothing.
    assert!(
        change > 1e-2,
        "{key}: the LoRA barely changes the output ({change:.2e})"
    );
    assert!(err <= 1e-4, "{key}: relative L2 {err:.2e}");
    Ok(())
}

/// diffusers/PEFT names, alpha from diffusers' adapter metadata, on attention, FFN, time
/// modulation and output layers.
#[test]
fn peft_format_matches_diffusers() -> Result<()> {
    check(vec![lora("peft", 1.0)], "out_peft", "tiny_h12")
}

/// Original Wan names with alpha, bias differences and a modulation table difference.
#[test]
fn original_format_matches_diffusers() -> Result<()> {
    check(vec![lora("original", 1.0)], "out_original", "tiny_h12")
}

/// kohya/musubi-tuner names (`lora_unet_blocks_0_self_attn_q`) with alpha.
#[test]
fn kohya_format_matches_diffusers() -> Result<()> {
    check(vec![lora("kohya", 1.0)], "out_kohya", "tiny_h12")
}

/// Two LoRAs with their scales add up.
#[test]
fn two_loras_with_scales_compose() -> Result<()> {
    check(
        vec![lora("peft", 0.7), lora("original", -0.5)],
        "out_two",
        "tiny_h12",
    )
}

/// A checkpoint in the original layout takes the same LoRA to the same weights.
#[test]
fn original_layout_checkpoint_takes_the_lora() -> Result<()> {
    check(vec![lora("kohya", 1.0)], "out_kohya", "tiny_h12_original")
}

/// Scale 0 leaves the model as it was, exactly.
#[test]
fn scale_zero_is_the_base_model() -> Result<()> {
    let base = output("tiny_h12", &LoraSet::default())?;
    let zero = LoraSet {
        loras: vec![lora("original", 0.0)],
        lenient: false,
    };
    let out = output("tiny_h12", &zero)?;
    assert_eq!(
        (out - base)?.abs()?.max_all()?.to_scalar::<f32>()?,
        0.0,
        "a LoRA at scale 0 changed the output"
    );
    Ok(())
}

/// Writes `tensors` as a LoRA file in `dir` and returns its spec.
fn write_lora(dir: &std::path::Path, tensors: &[(&str, Tensor)]) -> Result<LoraSpec> {
    let path = dir.join("custom.safetensors");
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, &path)?;
    Ok(LoraSpec { path, scale: 1.0 })
}

/// A key that matches no weight is a one-line error naming it, unless lenient, which leaves
/// it out and lists it; mismatched shapes and a lone half of a pair are refused by name.
#[test]
fn bad_keys_are_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cpu = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (4, 24), &cpu)?;
    let b = Tensor::randn(0f32, 1.0, (24, 4), &cpu)?;
    let spec = write_lora(
        dir.path(),
        &[
            ("blocks.0.attn1.to_q.lora_A.weight", a.clone()),
            ("blocks.0.attn1.to_q.lora_B.weight", b.clone()),
            ("blocks.0.attn1.to_zz.lora_A.weight", a.clone()),
        ],
    )?;
    let strict = LoraSet {
        loras: vec![spec.clone()],
        lenient: false,
    };
    let err = output("tiny_h12", &strict).unwrap_err().to_string();
    assert!(
        err.contains("`blocks.0.attn1.to_zz.lora_A.weight` matches no weight")
            && err.contains("--lora-lenient"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let lenient = LoraSet {
        loras: vec![spec],
        lenient: true,
    };
    let io = load(fixture("tiny_h12_io.safetensors"), &Device::Cpu)?;
    let loaded = load_transformer(&fixture("tiny_h12"), &lenient, DType::F32, &Device::Cpu)?;
    assert_eq!(loaded.lora_ignored.len(), 1);
    assert!(loaded.lora_ignored[0].ends_with("blocks.0.attn1.to_zz.lora_A.weight"));
    drop(io);

    let wrong = Tensor::randn(0f32, 1.0, (4, 40), &cpu)?;
    let spec = write_lora(
        dir.path(),
        &[
            ("blocks.0.attn1.to_q.lora_A.weight", wrong),
            ("blocks.0.attn1.to_q.lora_B.weight", b),
        ],
    )?;
    let set = LoraSet {
        loras: vec![spec],
        lenient: false,
    };
    let err = output("tiny_h12", &set).unwrap_err().to_string();
    assert!(err.contains("does not make the shape [24, 24]"), "{err}");
    let spec = write_lora(dir.path(), &[("blocks.0.attn1.to_q.lora_A.weight", a)])?;
    let set = LoraSet {
        loras: vec![spec],
        lenient: false,
    };
    let err = output("tiny_h12", &set).unwrap_err().to_string();
    assert!(err.contains("has no partner"), "{err}");
    Ok(())
}

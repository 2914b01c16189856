//! Checkpoint files: single vs sharded, config inference, dtype conversion.

use anyhow::Result;
use candle_core::{safetensors, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dit::{load_transformer, LoraSet, Step, WanConfig, WanTransformer};
use sparse::Dense;
use std::collections::HashMap;
use vdit_core::metrics::relative_l2;

/// A small model with head dim 128 (so its config can be inferred from shapes).
fn small_config() -> WanConfig {
    WanConfig {
        num_heads: 1,
        ffn_dim: 32,
        num_layers: 3,
        text_dim: 8,
        freq_dim: 8,
        in_channels: 4,
        out_channels: 4,
        ..WanConfig::wan2_1_1_3b()
    }
}

/// Random weights for `cfg`, as a name -> tensor map in diffusers names.
fn random_weights(cfg: &WanConfig) -> Result<HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    WanTransformer::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let data = varmap.data().lock().unwrap();
    let mut out = HashMap::new();
    for (name, var) in data.iter() {
        let t = Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu)?;
        out.insert(name.clone(), t);
    }
    Ok(out)
}

fn forward(model: &WanTransformer, seed_shift: f64) -> Result<Tensor> {
    let latents = (Tensor::arange(0f32, (4 * 2 * 4 * 6) as f32, &Device::Cpu)?
        .reshape((1, 4, 2, 4, 6))?
        .sin()?
        + seed_shift)?;
    let text = Tensor::ones((1, 3, 8), DType::F32, &Device::Cpu)?;
    let t = Tensor::new(&[500f32], &Device::Cpu)?;
    Ok(model.forward(&latents, &t, &text, &Dense, Step::SINGLE)?)
}

#[test]
fn sharded_and_single_files_load_the_same_model_and_infer_the_config() -> Result<()> {
    let cfg = small_config();
    let weights = random_weights(&cfg)?;
    let dir = tempfile::tempdir()?;

    let single = dir.path().join("single");
    std::fs::create_dir(&single)?;
    safetensors::save(&weights, single.join("model.safetensors"))?;

    let sharded = dir.path().join("sharded");
    std::fs::create_dir(&sharded)?;
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in weights.iter().enumerate() {
        let file = if i % 2 == 0 {
            "part-1.safetensors"
        } else {
            "part-2.safetensors"
        };
        if i % 2 == 0 {
            a.insert(name.clone(), t.clone())
        } else {
            b.insert(name.clone(), t.clone())
        };
        map.insert(name.clone(), serde_json::json!(file));
    }
    safetensors::save(&a, sharded.join("part-1.safetensors"))?;
    safetensors::save(&b, sharded.join("part-2.safetensors"))?;
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )?;

    let one = load_transformer(&single, &LoraSet::default(), DType::F32, &Device::Cpu)?;
    let two = load_transformer(&sharded, &LoraSet::default(), DType::F32, &Device::Cpu)?;
    assert!(one.config_file.is_none(), "config must be inferred");
    assert_eq!(one.config, cfg);
    assert_eq!(two.config, cfg);
    let reference = WanTransformer::new(
        &cfg,
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
    )?;
    let expected = forward(&reference, 0.0)?;
    assert_eq!(relative_l2(&forward(&one.model, 0.0)?, &expected)?, 0.0);
    assert_eq!(relative_l2(&forward(&two.model, 0.0)?, &expected)?, 0.0);
    // A different input gives a different output (the comparison above is not vacuous).
    assert!(relative_l2(&forward(&one.model, 0.5)?, &expected)? > 1e-3);
    Ok(())
}

#[test]
fn bf16_and_f16_checkpoints_load_in_any_dtype() -> Result<()> {
    let cfg = small_config();
    let weights = random_weights(&cfg)?;
    let dir = tempfile::tempdir()?;
    let reference = WanTransformer::new(
        &cfg,
        VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu),
    )?;
    let expected = forward(&reference, 0.0)?;
    for stored in [DType::BF16, DType::F16] {
        let cast: HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(stored).unwrap()))
            .collect();
        let path = dir.path().join(format!("{stored:?}.safetensors"));
        safetensors::save(&cast, &path)?;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let loaded = load_transformer(&path, &LoraSet::default(), dtype, &Device::Cpu)?;
            assert_eq!(loaded.model.dtype(), dtype);
            let err = relative_l2(
                &forward(&loaded.model, 0.0)?.to_dtype(DType::F32)?,
                &expected,
            )?;
            assert!(err < 3e-2, "stored {stored:?} run {dtype:?}: {err}");
        }
    }
    Ok(())
}

//! Latent normalisation, loading errors and bad-input errors.

use anyhow::Result;
use candle_core::{safetensors, DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vae::{DecodeOptions, VaeConfig, WanVae};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tiny() -> Result<WanVae> {
    Ok(WanVae::load(
        &fixture("tiny_nrb2"),
        DType::F32,
        &Device::Cpu,
    )?)
}

fn one_line(err: impl ToString, needle: &str) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(msg.contains(needle), "`{needle}` not in: {msg}");
}

/// denormalize is `x * std + mean` per channel (the config's values) and normalize undoes it.
#[test]
fn normalisation_uses_the_config_statistics() -> Result<()> {
    let vae = tiny()?;
    let cfg = vae.config().clone();
    let x = Tensor::randn(0f32, 1.0, (2, 16, 3, 2, 4), &Device::Cpu)?;
    let raw = vae.denormalize(&x)?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let rs: Vec<f32> = raw.flatten_all()?.to_vec1()?;
    let per_channel = 3 * 2 * 4;
    for (i, (&a, &r)) in xs.iter().zip(&rs).enumerate() {
        let c = (i / per_channel) % 16;
        let expected = a as f64 * cfg.latents_std[c] + cfg.latents_mean[c];
        assert!((r as f64 - expected).abs() < 1e-5, "{i}: {r} vs {expected}");
    }
    let back = vae.normalize(&raw)?;
    let diff = (back - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5);
    assert_eq!(
        vae.normalize(&x.to_dtype(DType::BF16)?)?.dtype(),
        DType::BF16
    );
    Ok(())
}

#[test]
fn wrong_latent_channels_or_rank_are_one_line_errors() -> Result<()> {
    let vae = tiny()?;
    let opts = DecodeOptions::default();
    let eight = Tensor::zeros((1, 8, 2, 3, 3), DType::F32, &Device::Cpu)?;
    one_line(vae.decode(&eight, &opts).unwrap_err(), "8 channels");
    one_line(vae.normalize(&eight).unwrap_err(), "expects 16");
    let rank4 = Tensor::zeros((16, 2, 3, 3), DType::F32, &Device::Cpu)?;
    one_line(vae.decode(&rank4, &opts).unwrap_err(), "5 dims");
    one_line(vae.denormalize(&rank4).unwrap_err(), "5 dims");
    let empty = Tensor::zeros((1, 16, 0, 3, 3), DType::F32, &Device::Cpu)?;
    one_line(vae.decode(&empty, &opts).unwrap_err(), "empty");
    Ok(())
}

#[test]
fn bad_videos_are_one_line_errors() -> Result<()> {
    let vae = tiny()?;
    let video = |dims: (usize, usize, usize, usize, usize)| {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).map(|v| vae.encode(&v).unwrap_err())
    };
    one_line(video((1, 3, 8, 16, 16))?, "1 + 4k frames (e.g. 5 or 9)");
    one_line(video((1, 3, 0, 16, 16))?, "1 + 4k frames");
    one_line(video((1, 4, 5, 16, 16))?, "4 channels");
    one_line(video((1, 3, 5, 4, 16))?, "at least 8x8");
    let rank3 = Tensor::zeros((3, 16, 16), DType::F32, &Device::Cpu)?;
    one_line(vae.encode(&rank3).unwrap_err(), "5 dims");
    Ok(())
}

/// Copies the tiny fixture into a temp folder with its weights passed through `edit`.
fn edited_copy(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>) -> Result<()>,
) -> Result<PathBuf> {
    let src = fixture("tiny_nrb2");
    let mut weights = safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    edit(&mut weights)?;
    let out = dir.join("vae");
    std::fs::create_dir_all(&out)?;
    std::fs::copy(src.join("config.json"), out.join("config.json"))?;
    safetensors::save(&weights, out.join("diffusion_pytorch_model.safetensors"))?;
    Ok(out)
}

fn load_err(path: &Path) -> vae::Error {
    match WanVae::load(path, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_or_misshaped_weights_name_key_shape_and_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let key = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight";
    let missing = edited_copy(&tmp.path().join("a"), |w| {
        w.remove(key);
        Ok(())
    })?;
    let err = load_err(&missing);
    one_line(&err, key);
    one_line(&err, "[16, 8, 1, 1, 1]");
    one_line(&err, "vae");
    let misshaped = edited_copy(&tmp.path().join("b"), |w| {
        w.insert(
            key.to_string(),
            Tensor::zeros((16, 8, 3, 1, 1), DType::F32, &Device::Cpu)?,
        );
        Ok(())
    })?;
    let err = load_err(&misshaped);
    one_line(&err, "[16, 8, 3, 1, 1]");
    one_line(&err, "diffusion_pytorch_model.safetensors");
    Ok(())
}

#[test]
fn wan2_2_configs_and_foreign_weights_are_rejected() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = edited_copy(tmp.path(), |_| Ok(()))?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    cfg["z_dim"] = 48.into();
    cfg["is_residual"] = true.into();
    std::fs::write(dir.join("config.json"), cfg.to_string())?;
    one_line(load_err(&dir), "Wan 2.2");
    one_line(
        VaeConfig::from_file(&dir.join("config.json")).unwrap_err(),
        "Wan 2.1",
    );

    let foreign = tmp.path().join("foreign.safetensors");
    let weights = HashMap::from([(
        "blocks.0.attn1.to_q.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?,
    )]);
    safetensors::save(&weights, &foreign)?;
    one_line(load_err(&foreign), "not a Wan VAE");
    Ok(())
}

/// Without a VAE config beside the weights the full-size Wan 2.1 config is assumed, so tiny
/// weights fail on their first mis-shaped tensor, naming it.
#[test]
fn a_single_file_without_config_assumes_wan2_1() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("Wan2.1_VAE.safetensors");
    std::fs::copy(fixture("tiny_nrb2_original/Wan2.1_VAE.safetensors"), &file)?;
    // a transformer config beside it is not taken for the VAE's
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"dim": 1536, "num_heads": 12}"#,
    )?;
    one_line(load_err(&file), "expected [96, ");
    Ok(())
}

//! Bad model input gives one line on stderr and a non-zero exit code, never a backtrace.

mod t2v_common;

use candle_core::{safetensors, DType, Device, Tensor};
use std::path::{Path, PathBuf};
use t2v_common::fails;

fn dit_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dit/tests/fixtures")
        .join(name)
}

fn copy_fixture(name: &str, to: &Path) {
    for entry in std::fs::read_dir(dit_fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn folder_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["inspect", dir.path().to_str().unwrap()]);
    assert!(err.contains("no .safetensors weights"), "{err}");
}

#[test]
fn missing_folder() {
    let err = fails(&["inspect", "/definitely/not/here"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn unsupported_config() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("tiny_h12", dir.path());
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["image_dim"] = serde_json::json!(1280);
    std::fs::write(&config, json.to_string()).unwrap();
    let err = fails(&["inspect", dir.path().to_str().unwrap()]);
    assert!(
        err.contains("unsupported transformer config") && err.contains("image-to-video"),
        "{err}"
    );
}

#[test]
fn weight_with_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("tiny_h12", dir.path());
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = safetensors::load(&file, &Device::Cpu).unwrap();
    let key = "blocks.1.attn1.to_k.weight";
    tensors.insert(
        key.to_string(),
        Tensor::zeros((24, 23), DType::F32, &Device::Cpu).unwrap(),
    );
    safetensors::save(&tensors, &file).unwrap();
    let err = fails(&["inspect", dir.path().to_str().unwrap()]);
    assert!(
        err.contains(key) && err.contains("[24, 23]") && err.contains("[24, 24]"),
        "{err}"
    );
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert_eq!(err.matches(key).count(), 1, "message repeats itself: {err}");
}

#[test]
fn missing_weight_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("tiny_h12_original", dir.path());
    let file = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = safetensors::load(&file, &Device::Cpu).unwrap();
    tensors.remove("blocks.1.ffn.2.bias");
    safetensors::save(&tensors, &file).unwrap();
    let err = fails(&["inspect", dir.path().to_str().unwrap()]);
    assert!(
        err.contains("missing weight `blocks.1.ffn.2.bias`") && err.contains("[24]"),
        "{err}"
    );
}

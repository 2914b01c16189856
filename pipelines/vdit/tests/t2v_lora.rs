//! `--lora` on `vdit generate` and a job's `lora` key in `vdit batch`, on the tiny random
//! model with LoRA files made here (the merge itself is checked against diffusers in
//! dit/tests/lora.rs).

mod t2v_common;

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use t2v_common::{batch_args, fails, read_json, succeeds, tiny_wan};

/// A random rank-2 LoRA on the first block's self-attention query of the tiny model (hidden
/// size 32), original key names with alpha, written to `dir/NAME.safetensors`.
fn write_lora(dir: &Path, name: &str, extra_key: Option<&str>) -> PathBuf {
    let cpu = Device::Cpu;
    let mut tensors = HashMap::from([
        (
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight".to_string(),
            Tensor::randn(0f32, 1.0, (2, 32), &cpu).unwrap(),
        ),
        (
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight".to_string(),
            Tensor::randn(0f32, 1.0, (32, 2), &cpu).unwrap(),
        ),
        (
            "diffusion_model.blocks.0.self_attn.q.alpha".to_string(),
            Tensor::new(2f32, &cpu).unwrap(),
        ),
    ]);
    if let Some(key) = extra_key {
        tensors.insert(key.to_string(), Tensor::zeros(2, DType::F32, &cpu).unwrap());
    }
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn generate(dir: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "generate",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompt",
        "a red kite",
        "--seed",
        "3",
        "--size",
        "64x48",
        "--frames",
        "5",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--output",
        dir.join(format!("{name}.y4m")).to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A LoRA changes the video and is recorded with its scale; scale 0 gives the plain video; a
/// key that matches nothing is a one-line error naming it, and `--lora-lenient` runs anyway.
#[test]
fn generate_merges_a_lora() {
    let dir = tempfile::tempdir().unwrap();
    let lora = write_lora(dir.path(), "style", None);
    let lora = lora.to_str().unwrap();
    succeeds(&generate(dir.path(), "plain", &[]));
    succeeds(&generate(
        dir.path(),
        "styled",
        &["--lora", &format!("{lora}:1.5")],
    ));
    succeeds(&generate(
        dir.path(),
        "zero",
        &["--lora", &format!("{lora}:0")],
    ));
    let bytes = |name: &str| std::fs::read(dir.path().join(format!("{name}.y4m"))).unwrap();
    assert_ne!(bytes("plain"), bytes("styled"), "the LoRA changed nothing");
    assert_eq!(
        bytes("plain"),
        bytes("zero"),
        "a LoRA at scale 0 changed the video"
    );
    let record = read_json(&dir.path().join("styled.y4m.json"));
    assert_eq!(record["loras"]["loras"][0]["scale"], 1.5);
    assert!(read_json(&dir.path().join("plain.y4m.json"))
        .get("loras")
        .is_none());

    let bad = write_lora(
        dir.path(),
        "bad",
        Some("diffusion_model.blocks.0.self_attn.qq.alpha"),
    );
    let bad = bad.to_str().unwrap();
    let err = fails(&generate(dir.path(), "bad", &["--lora", bad]));
    assert!(
        err.contains("`diffusion_model.blocks.0.self_attn.qq.alpha` matches no weight"),
        "{err}"
    );
    assert!(
        !dir.path().join("bad.y4m").exists(),
        "a refused run wrote a video"
    );
    let out = t2v_common::vdit(&generate(
        dir.path(),
        "bad",
        &["--lora", bad, "--lora-lenient"],
    ));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 LoRA keys match no weight"));
}

/// Jobs with their own LoRAs run with them (the transformer loaded again per set), others with
/// the command line's; a re-run skips them all.
#[test]
fn batch_jobs_choose_their_loras() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_lora(dir.path(), "a", None);
    let b = write_lora(dir.path(), "b", None);
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        format!(
            "{{\"prompt\": \"a kite\", \"seed\": 1, \"id\": \"own\", \"lora\": \"{}:0.5\"}}\n\
             {{\"prompt\": \"a kite\", \"seed\": 1, \"id\": \"flag\"}}\n\
             {{\"prompt\": \"a kite\", \"seed\": 1, \"id\": \"none\", \"lora\": []}}\n",
            b.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let extra = [
        "--size",
        "64x48",
        "--frames",
        "5",
        "--steps",
        "2",
        "--lora",
        a.to_str().unwrap(),
    ];
    let summary = succeeds(&batch_args(&jobs, &out, &extra));
    assert!(summary.contains("3 done"), "{summary}");
    let loras = |id: &str| read_json(&out.join(format!("{id}.y4m.json")))["loras"].clone();
    assert!(loras("own")["loras"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("b.safetensors"));
    assert_eq!(loras("own")["loras"][0]["scale"], 0.5);
    assert!(loras("flag")["loras"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("a.safetensors"));
    assert!(loras("none").is_null());
    let summary = succeeds(&batch_args(&jobs, &out, &extra));
    assert!(summary.contains("0 done, 3 skipped"), "{summary}");
}

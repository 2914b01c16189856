//! Few-step (DMD) sampling: `vdit generate` against FastVideo's sampling loop written over
//! diffusers' transformer (fixture from tests/fixtures/t2v/make_dmd_fixtures.py: the tiny
//! random model, 3 timesteps, given initial and re-noising noise, f32), and a FastWan-style folder
//! taking its defaults.
//!
//! Tolerance: the sampled latents within relative L2 1e-4 and max abs 1e-4.

mod t2v_common;

use candle_core::{safetensors, Device};
use std::path::Path;
use t2v_common::{fails, fixture, read_json, succeeds, tiny_wan};
use vdit_core::metrics::relative_l2;

fn base_args(dir: &Path, model: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "64x48",
        "--frames",
        "9",
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--quiet",
        "--output",
        dir.join("video.y4m").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// The dmd sampler with the fixture's noises gives FastVideo's loop's latents.
#[test]
fn dmd_matches_the_reference_loop() {
    let dir = tempfile::tempdir().unwrap();
    let io = fixture("dmd_io.safetensors");
    let saved = dir.path().join("latents.safetensors");
    let mut args = base_args(dir.path(), &tiny_wan());
    args.extend(
        [
            "--timesteps",
            "1000,757,522",
            "--shift",
            "8",
            "--guidance",
            "1",
            "--latents",
            io.to_str().unwrap(),
            "--prompt-embeds",
            io.to_str().unwrap(),
            "--save-latents",
            saved.to_str().unwrap(),
        ]
        .map(String::from),
    );
    succeeds(&args);
    let expected = safetensors::load(&io, &Device::Cpu).unwrap();
    let ours = safetensors::load(&saved, &Device::Cpu).unwrap();
    let (ours, expected) = (&ours["latents"], &expected["dmd_latents"]);
    let error = relative_l2(ours, expected).unwrap();
    let max = (ours - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("dmd: latents relative L2 {error:.2e}, max abs {max:.2e}");
    assert!(error < 1e-4 && max < 1e-4, "relative L2 {error}, max {max}");
    let record = read_json(&dir.path().join("video.y4m.json"));
    assert_eq!(record["settings"]["scheduler"], "dmd");
    assert_eq!(record["settings"]["steps"], 3);
}

/// A latents file without the re-noising tensors is refused before anything loads.
#[test]
fn dmd_latents_file_needs_step_noises() {
    let dir = tempfile::tempdir().unwrap();
    let io = fixture("pipeline_io.safetensors");
    let mut args = base_args(dir.path(), &tiny_wan());
    args.extend(
        [
            "--timesteps",
            "1000,500",
            "--latents",
            io.to_str().unwrap(),
            "--prompt",
            "a kite",
        ]
        .map(String::from),
    );
    let err = fails(&args);
    assert!(err.contains("step_noises"), "{err}");
}

/// Links every part of the tiny model into `dir`, with `model_index.json` naming `class`.
fn model_folder(dir: &Path, class: &str) {
    for part in [
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    ] {
        std::os::unix::fs::symlink(
            tiny_wan().join(part).canonicalize().unwrap(),
            dir.join(part),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("model_index.json"),
        format!(r#"{{"_class_name": "{class}"}}"#),
    )
    .unwrap();
}

/// A FastVideo DMD folder (`WanDMDPipeline`) runs with FastWan's sampler, timesteps, shift and
/// no guidance; a generation_config.json's `attention` becomes the default method, which the
/// flags still override.
#[test]
fn fastwan_folder_takes_its_defaults() {
    let model = tempfile::tempdir().unwrap();
    model_folder(model.path(), "WanDMDPipeline");
    std::fs::write(
        model.path().join("generation_config.json"),
        r#"{"attention": "vsa:sparsity=0.5"}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut args = base_args(dir.path(), model.path());
    args.extend(["--prompt", "a kite", "--seed", "5"].map(String::from));
    succeeds(&args);
    let record = read_json(&dir.path().join("video.y4m.json"));
    let settings = &record["settings"];
    assert_eq!(settings["scheduler"], "dmd");
    assert_eq!(settings["timesteps"], serde_json::json!([1000, 757, 522]));
    assert_eq!(
        (settings["shift"].as_f64(), settings["guidance"].as_f64()),
        (Some(8.0), Some(1.0))
    );
    assert_eq!(record["attention"]["method"], "vsa");
    assert!(
        record["attention"]["schedule"].to_string().contains("0.5"),
        "{}",
        record["attention"]
    );
    // --steps alone contradicts the folder's timesteps; another sampler leaves them behind
    let err = fails(
        &[
            &args[..],
            &["--steps".into(), "4".into(), "--overwrite".into()],
        ]
        .concat(),
    );
    assert!(
        err.contains("contradicts the dmd sampler's 3 timesteps"),
        "{err}"
    );
    let more = [
        "--scheduler",
        "euler",
        "--steps",
        "2",
        "--attention",
        "dense",
        "--overwrite",
    ];
    succeeds(&[&args[..], &more.map(String::from)[..]].concat());
    let record = read_json(&dir.path().join("video.y4m.json"));
    assert_eq!(record["settings"]["scheduler"], "euler");
    assert!(record["settings"].get("timesteps").is_none());
    assert_eq!(record["attention"]["method"], "dense");
}

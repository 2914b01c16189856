//! `vdit generate` and `vdit calibrate paro` on the tiny random model: validation before any
//! heavy work, missing parts, the record next to the video, seeds, the default model, and PARO
//! calibration at one size used at that size only.

mod t2v_common;

use candle_core::{safetensors, Device};
use std::path::{Path, PathBuf};
use t2v_common::{copy_tree, fails, read_json, small, succeeds, tiny_wan};

/// A copy of the tiny model whose weight files are all garbage: anything that opens a weight
/// file fails.
fn model_with_broken_weights(dir: &Path) -> PathBuf {
    let copy = dir.join("broken-wan");
    copy_tree(&tiny_wan(), &copy);
    for part in ["transformer", "vae", "text_encoder"] {
        for entry in std::fs::read_dir(copy.join(part)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                std::fs::write(&path, b"not safetensors").unwrap();
            }
        }
    }
    copy
}

/// `small(output)` with `--model model` and `flag value` replaced or added.
fn with(model: &Path, output: &Path, changes: &[(&str, &str)]) -> Vec<String> {
    let mut args = small(output);
    args[2] = model.to_str().unwrap().to_string();
    for (flag, value) in changes {
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    args
}

/// Bad settings are reported in one line naming a valid value, before any weight file is opened:
/// the model's weights are garbage, yet the message is about the setting (and the same command
/// with good settings does fail on the weights).
#[test]
fn settings_are_checked_before_any_weights_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_broken_weights(dir.path());
    let output = dir.path().join("video.y4m");
    for (flag, value, message) in [
        (
            "--size",
            "100x64",
            "size 100x64 is not a multiple of 16: use 96x64 or 112x64",
        ),
        ("--frames", "80", "frames 80 is not 4k+1: use 77 or 81"),
        ("--steps", "0", "steps 0 must be from 1 to 1000"),
        ("--steps", "18446744073709551615", "must be from 1 to 1000"),
        ("--guidance", "-1", "guidance -1 must be a number >= 0"),
        ("--shift", "0", "shift 0 must be a positive number"),
    ] {
        let err = fails(&with(&model, &output, &[(flag, value)]));
        assert!(err.contains(message), "{flag} {value}: {err}");
    }
    let err = fails(&with(&model, &output, &[]));
    assert!(
        err.contains("broken-wan"),
        "good settings should reach the weights: {err}"
    );
    assert!(!output.exists() && std::fs::read_dir(dir.path()).unwrap().count() == 1);
}

/// Prompt problems, missing parts, bad latents and bad output folders: one line each, naming the
/// fix.
#[test]
fn input_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-text");
    copy_tree(&tiny_wan(), &model);
    std::fs::remove_dir_all(model.join("text_encoder")).unwrap();
    let output = dir.path().join("video.y4m");
    let err = fails(&with(&model, &output, &[]));
    let looked = model.join("text_encoder");
    assert!(
        err.contains(&format!(
            "no text encoder: {} does not exist",
            looked.display()
        )) && err.contains("--text-encoder DIR"),
        "{err}"
    );
    let mut no_prompt = small(&output);
    let at = no_prompt.iter().position(|a| a == "--prompt").unwrap();
    no_prompt.drain(at..at + 2);
    assert!(fails(&no_prompt).contains("no prompt: give --prompt TEXT"));
    let latents = dir.path().join("latents.safetensors");
    let wrong = candle_core::Tensor::zeros((1, 16, 2, 6, 8), candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), wrong)]),
        &latents,
    )
    .unwrap();
    let err = fails(&with(
        &tiny_wan(),
        &output,
        &[("--latents", latents.to_str().unwrap())],
    ));
    assert!(err.contains("give --seed or --latents, not both"), "{err}");
    let mut args = with(
        &tiny_wan(),
        &output,
        &[("--latents", latents.to_str().unwrap())],
    );
    let at = args.iter().position(|a| a == "--seed").unwrap();
    args.drain(at..at + 2);
    let err = fails(&args);
    assert!(
        err.contains("[1, 16, 2, 6, 8]") && err.contains("[1, 16, 3, 6, 8]"),
        "{err}"
    );
    let err = fails(&with(
        &tiny_wan(),
        &dir.path().join("missing/video.y4m"),
        &[],
    ));
    assert!(err.contains("does not exist (create it first)"), "{err}");
    let err = fails(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(err.contains("no model_index.json"), "{err}");
}

/// The record beside the video has the prompt, seed, every setting, the model, the attention
/// schedule with the density it measured (below 1 for VSA), and every stage's time.
#[test]
fn record_describes_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("kite.gif");
    let stdout = succeeds(&with(
        &tiny_wan(),
        &output,
        &[
            ("--size", "128x128"),
            ("--negative-prompt", "blurry"),
            ("--attention", "vsa"),
            ("--sparsity", "0.5"),
            ("--fps", "8"),
        ],
    ));
    assert!(
        stdout.contains("wrote") && stdout.contains("seed 1"),
        "{stdout}"
    );
    assert!(output.is_file());
    let record = read_json(&dir.path().join("kite.gif.json"));
    assert_eq!(record["prompt"], "a red kite over a windy beach");
    assert_eq!(record["negative_prompt"], "blurry");
    assert_eq!(record["seed"], 1);
    let settings = &record["settings"];
    assert_eq!(settings["size"], "128x128");
    assert_eq!(
        (settings["frames"].as_u64(), settings["steps"].as_u64()),
        (Some(9), Some(2))
    );
    assert_eq!(
        (settings["guidance"].as_f64(), settings["shift"].as_f64()),
        (Some(5.0), Some(3.0))
    );
    assert_eq!(
        (settings["scheduler"].as_str(), settings["fps"].as_u64()),
        (Some("unipc"), Some(8))
    );
    let model = &record["model"];
    assert_eq!(model["transformer"]["layout"], "diffusers");
    assert_eq!(model["transformer"]["config"]["num_layers"], 2);
    assert!(model["vae"]["path"].as_str().unwrap().ends_with("vae"));
    assert_eq!(
        (model["dtype"].as_str(), model["device"].as_str()),
        (Some("f32"), Some("cpu"))
    );
    let attention = &record["attention"];
    assert_eq!(attention["method"], "vsa");
    assert_eq!(attention["schedule"]["default"]["options"]["sparsity"], 0.5);
    let density = attention["density"]["overall"].as_f64().unwrap();
    assert!(density > 0.2 && density < 0.9, "VSA density {density}");
    assert_eq!(
        attention["density"]["per_layer"].as_array().unwrap().len(),
        2
    );
    let timings = &record["timings"];
    for stage in [
        "text_encoding_s",
        "loading_s",
        "denoising_s",
        "decoding_s",
        "writing_s",
        "total_s",
    ] {
        assert!(timings[stage].as_f64().unwrap() >= 0.0, "{stage}");
    }
    assert!(timings["denoising_s"].as_f64().unwrap() > 0.0);
    assert_eq!(record["output"]["frames"], 9);
    let hidden: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

/// The saved latents of a seed are reproducible, and another seed gives others; without
/// --model the default model is used (`VDIT_DEFAULT_MODEL`, which the test helpers set to the
/// tiny one).
#[test]
fn seeds_reproduce_and_the_default_model_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let latents = |seed: &str, name: &str| {
        let mut args = with(
            &tiny_wan(),
            &dir.path().join(format!("{name}.y4m")),
            &[
                ("--seed", seed),
                ("--save-latents", dir.path().join(name).to_str().unwrap()),
            ],
        );
        args.drain(1..3); // no --model
        succeeds(&args);
        safetensors::load(dir.path().join(name), &Device::Cpu).unwrap()["latents"].clone()
    };
    let a = latents("7", "a");
    let b = latents("7", "b");
    let c = latents("8", "c");
    let diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| -> f32 {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(diff(&a, &b), 0.0);
    assert!(diff(&a, &c) > 0.1);
    let record = read_json(&dir.path().join("a.y4m.json"));
    assert!(record["model"]["folder"]
        .as_str()
        .unwrap()
        .ends_with("assets/tiny-wan"));
}

/// `vdit calibrate paro` then `vdit generate --attention paro` at the same size; another size
/// is refused in one line asking to calibrate at that size.
#[test]
fn paro_calibration_is_used_at_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red kite over a windy beach\n\na cat on a wall\n",
    )
    .unwrap();
    let calibration = dir.path().join("paro.safetensors");
    let stdout = succeeds(&[
        "calibrate",
        "paro",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--size",
        "128x128",
        "--frames",
        "9",
        "--steps",
        "2",
        "--density",
        "0.5",
        "--block",
        "16",
        "--step-groups",
        "2",
        "--output",
        calibration.to_str().unwrap(),
        "--quiet",
    ]);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["prompts"], 2);
    assert_eq!(summary["grid"], serde_json::json!([3, 8, 8]));
    let output = dir.path().join("paro.y4m");
    let paro = [
        ("--size", "128x128"),
        ("--attention", "paro"),
        ("--paro-calibration", calibration.to_str().unwrap()),
    ];
    succeeds(&with(&tiny_wan(), &output, &paro));
    let record = read_json(&dir.path().join("paro.y4m.json"));
    let density = record["attention"]["density"]["overall"].as_f64().unwrap();
    assert!(density > 0.3 && density < 0.8, "PARO density {density}");
    assert_eq!(
        record["attention"]["calibration_file"],
        calibration.to_str().unwrap()
    );
    let mut elsewhere = paro;
    elsewhere[0] = ("--size", "64x48");
    let err = fails(&with(&tiny_wan(), &output, &elsewhere));
    assert!(
        err.contains("calibrate at this size")
            && err.contains("128x128, 9 frames")
            && err.contains("64x48, 9 frames"),
        "{err}"
    );
}

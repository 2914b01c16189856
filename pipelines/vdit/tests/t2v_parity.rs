//! The text-to-video pipeline against diffusers' WanPipeline end to end, on the tiny random
//! model (fixtures from tests/fixtures/t2v/make_t2v_fixtures.py: fixed initial latents and
//! prompt embeddings, 64x48 pixels, 9 frames, f32).
//!
//! Tolerances: denoised latents (`--save-latents`, diffusers' output_type="latent") within
//! relative L2 1e-3; decoded frames (PNG output) within 2 of diffusers' 8-bit levels
//! (output_type="np" as floor(255 v + 0.5)), max abs over every pixel and channel.

mod t2v_common;

use candle_core::{safetensors, Device};
use serde::Deserialize;
use t2v_common::{fixture, read_json, succeeds, tiny_wan};
use vdit::video::PngFolderReader;
use vdit_core::metrics::relative_l2;

#[derive(Deserialize)]
struct Case {
    name: String,
    scheduler: String,
    steps: usize,
    guidance: f64,
    frames: bool,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    width: usize,
    height: usize,
    num_frames: usize,
}

fn case(name: &str) -> Case {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    cases.into_iter().find(|c| c.name == name).unwrap()
}

/// Runs the case through `vdit generate`; returns the relative L2 error of the latents and, for
/// cases with frames, the largest 8-bit difference of the video.
fn run(name: &str) -> (f64, Option<u8>) {
    let case = case(name);
    let io = fixture("pipeline_io.safetensors");
    let io_path = io.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("latents.safetensors");
    let frames = dir.path().join("frames");
    let mut args: Vec<String> = [
        "generate",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--size",
        &format!("{}x{}", case.width, case.height),
        "--frames",
        &case.num_frames.to_string(),
        "--steps",
        &case.steps.to_string(),
        "--guidance",
        &case.guidance.to_string(),
        "--scheduler",
        &case.scheduler,
        "--latents",
        &io_path,
        "--save-latents",
        latents.to_str().unwrap(),
        "--output",
        frames.to_str().unwrap(),
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    match (&case.prompt, &case.negative_prompt) {
        (Some(prompt), Some(negative)) => {
            args.extend(["--prompt".into(), prompt.clone()]);
            args.extend(["--negative-prompt".into(), negative.clone()]);
        }
        _ => {
            args.extend(["--prompt-embeds".into(), io_path.clone()]);
            if case.guidance > 1.0 {
                args.extend(["--negative-prompt-embeds".into(), io_path.clone()]);
            }
        }
    }
    succeeds(&args);
    let expected = safetensors::load(&io, &Device::Cpu).unwrap();
    let ours = safetensors::load(&latents, &Device::Cpu).unwrap();
    let error = relative_l2(&ours["latents"], &expected[name]).unwrap();
    let record = read_json(&dir.path().join("frames.json"));
    assert_eq!(record["settings"]["steps"], case.steps);
    if !case.frames {
        return (error, None);
    }
    let reference: Vec<u8> = expected[&format!("{name}_frames")]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut ours = Vec::new();
    for frame in PngFolderReader::open(&frames).unwrap() {
        ours.extend_from_slice(frame.unwrap().rgb());
    }
    assert_eq!(ours.len(), reference.len(), "frame count or size differs");
    let max = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    (error, Some(max))
}

/// UniPC, guidance 5 (prompt and negative prompt as one batch of 2), 4 steps: latents and the
/// decoded video.
#[test]
fn unipc_with_guidance_matches_diffusers() {
    let (error, frames) = run("unipc_cfg");
    eprintln!("unipc_cfg: latents relative L2 {error:.2e}, frames max diff {frames:?}");
    assert!(error < 1e-3, "latents relative L2 {error}");
    assert!(frames.unwrap() <= 2, "frames differ by {frames:?} levels");
}

/// Euler, guidance 3.5, 3 steps.
#[test]
fn euler_with_guidance_matches_diffusers() {
    let (error, _) = run("euler_cfg");
    eprintln!("euler_cfg: latents relative L2 {error:.2e}");
    assert!(error < 1e-3, "latents relative L2 {error}");
}

/// Guidance 1: the prompt alone, no negative branch.
#[test]
fn no_guidance_matches_diffusers() {
    let (error, _) = run("unipc_no_cfg");
    eprintln!("unipc_no_cfg: latents relative L2 {error:.2e}");
    assert!(error < 1e-3, "latents relative L2 {error}");
}

/// Prompt and negative prompt as text, through the tokenizer and the UMT5 encoder.
#[test]
fn text_prompts_match_diffusers() {
    let (error, _) = run("unipc_text");
    eprintln!("unipc_text: latents relative L2 {error:.2e}");
    assert!(error < 1e-3, "latents relative L2 {error}");
}

/// The seeded noise equals an independent Python implementation of the same algorithms.
#[test]
fn seeded_noise_matches_the_reference() {
    let reference = read_json(&fixture("noise.json"));
    let values: Vec<f32> = reference["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let seed = reference["seed"].as_u64().unwrap();
    let ours: Vec<f32> = pipelines::t2v::noise::seeded_noise(seed, &[values.len()])
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in ours.iter().zip(&values) {
        assert!((a - b).abs() <= 1e-6, "{ours:?} vs {values:?}");
    }
}

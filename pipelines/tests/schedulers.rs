//! The flow-matching schedulers against diffusers' FlowMatchEulerDiscreteScheduler and
//! UniPCMultistepScheduler (fixtures from tests/fixtures/schedulers/make_scheduler_fixtures.py).
//!
//! Each case is built from the scheduler's saved diffusers config, then run over the whole
//! trajectory on its own outputs (errors accumulate across steps), with diffusers' random model
//! outputs. Tolerances: timesteps within 1e-4 (UniPC's integers exactly), sigmas within 1e-7,
//! every step's sample within relative L2 1e-5 and max abs 1e-5.

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device, Tensor};
use pipelines::schedulers::{build_scheduler, Scheduler, SchedulerConfig, SchedulerKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use vdit_core::metrics::relative_l2;

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: String,
    num_steps: usize,
    config: serde_json::Value,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/schedulers")
        .join(name)
}

fn cases() -> Result<Vec<Case>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture(
        "cases.json",
    ))?)?)
}

fn trajectories() -> Result<HashMap<String, Tensor>> {
    Ok(load(fixture("trajectories.safetensors"), &Device::Cpu)?)
}

fn kind(name: &str) -> SchedulerKind {
    match name {
        "euler" => SchedulerKind::Euler,
        "unipc" => SchedulerKind::UniPc,
        other => panic!("unknown kind {other}"),
    }
}

/// Builds the case's scheduler from its config written as a scheduler_config.json file.
fn build(case: &Case) -> Result<Box<dyn Scheduler>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&case.config)?)?;
    let cfg = SchedulerConfig::from_file(&path)?;
    assert_eq!(cfg.class, Some(kind(&case.kind)), "{}", case.name);
    Ok(build_scheduler(
        kind(&case.kind),
        &cfg,
        case.num_steps,
        &Device::Cpu,
    )?)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Runs every case of `kind_name` and checks schedule and trajectory.
fn check_kind(kind_name: &str) -> Result<()> {
    let tensors = trajectories()?;
    let mut checked = 0;
    for case in cases()?.iter().filter(|c| c.kind == kind_name) {
        let name = &case.name;
        let get = |key: &str| tensors[&format!("{name}.{key}")].clone();
        let mut scheduler = build(case)?;
        assert_eq!(scheduler.init_noise_sigma(), 1.0);
        let timesteps: Vec<f64> = get("timesteps").to_vec1()?;
        let sigmas: Vec<f64> = get("sigmas").to_dtype(DType::F64)?.to_vec1()?;
        let t_err = max_diff(scheduler.timesteps(), &timesteps);
        let s_err = max_diff(scheduler.sigmas(), &sigmas);
        let t_tol = if kind_name == "unipc" { 0.0 } else { 1e-4 };
        assert!(
            t_err <= t_tol,
            "{name}: timesteps off by {t_err:e}: {:?} vs {timesteps:?}",
            scheduler.timesteps()
        );
        assert!(s_err <= 1e-7, "{name}: sigmas off by {s_err:e}");
        let mut sample = get("sample");
        let mut worst = (0f64, 0f64);
        for i in 0..case.num_steps {
            sample = scheduler.step(&get(&format!("model_output.{i}")), i, &sample)?;
            assert_eq!(sample.dtype(), DType::F32);
            let expected = get(&format!("prev_sample.{i}"));
            let rel = relative_l2(&sample, &expected)?;
            let abs = max_abs(&sample, &expected)?;
            assert!(
                rel <= 1e-5 && abs <= 1e-5,
                "{name} step {i}: relative L2 {rel:.3e}, max abs {abs:.3e} > 1e-5"
            );
            worst = (worst.0.max(rel), worst.1.max(abs));
        }
        println!(
            "{name}: timesteps max diff {t_err:.1e}, sigmas {s_err:.1e}, steps worst relative L2 \
             {:.2e}, max abs {:.2e}",
            worst.0, worst.1
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} {kind_name} cases");
    Ok(())
}

#[test]
fn euler_matches_diffusers() -> Result<()> {
    check_kind("euler")
}

#[test]
fn unipc_matches_diffusers() -> Result<()> {
    check_kind("unipc")
}

/// `wan_default` gives the same schedule and trajectory as diffusers' Wan UniPC config.
#[test]
fn wan_default_matches_the_wan_fixture() -> Result<()> {
    let tensors = trajectories()?;
    let mut scheduler = build_scheduler(
        SchedulerKind::UniPc,
        &SchedulerConfig::wan_default(5.0),
        4,
        &Device::Cpu,
    )?;
    let expected: Vec<f64> = tensors["unipc_wan_shift5_4.timesteps"].to_vec1()?;
    assert_eq!(scheduler.timesteps(), expected.as_slice());
    let mut sample = tensors["unipc_wan_shift5_4.sample"].clone();
    for i in 0..4 {
        let out = &tensors[&format!("unipc_wan_shift5_4.model_output.{i}")];
        sample = scheduler.step(out, i, &sample)?;
    }
    let err = relative_l2(&sample, &tensors["unipc_wan_shift5_4.prev_sample.3"])?;
    assert!(err <= 1e-5, "relative L2 {err:e}");
    Ok(())
}

/// UniPC keeps history, so steps out of order, past the end or of the wrong shape are errors.
#[test]
fn misuse_is_an_error() -> Result<()> {
    let cfg = SchedulerConfig::wan_default(3.0);
    let mut unipc = build_scheduler(SchedulerKind::UniPc, &cfg, 3, &Device::Cpu)?;
    let x = Tensor::ones((1, 2, 3), DType::F32, &Device::Cpu)?;
    let err = unipc.step(&x, 1, &x).unwrap_err().to_string();
    assert!(err.contains("expected step 0"), "{err}");
    unipc.step(&x, 0, &x)?;
    let wrong = Tensor::ones((1, 2, 4), DType::F32, &Device::Cpu)?;
    assert!(unipc.step(&wrong, 1, &x).is_err());
    let mut euler = build_scheduler(SchedulerKind::Euler, &cfg, 3, &Device::Cpu)?;
    let err = euler.step(&x, 3, &x).unwrap_err().to_string();
    assert!(err.contains("past the schedule"), "{err}");
    assert!(build_scheduler(SchedulerKind::Euler, &cfg, 0, &Device::Cpu).is_err());
    Ok(())
}

/// As in diffusers, Euler returns the model output's dtype and UniPC the sample's.
#[test]
fn output_dtypes_follow_diffusers() -> Result<()> {
    let cfg = SchedulerConfig::wan_default(3.0);
    let sample = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
    let velocity = Tensor::ones((2, 3), DType::BF16, &Device::Cpu)?;
    let mut euler = build_scheduler(SchedulerKind::Euler, &cfg, 2, &Device::Cpu)?;
    assert_eq!(euler.step(&velocity, 0, &sample)?.dtype(), DType::BF16);
    let mut unipc = build_scheduler(SchedulerKind::UniPc, &cfg, 2, &Device::Cpu)?;
    assert_eq!(unipc.step(&velocity, 0, &sample)?.dtype(), DType::F32);
    Ok(())
}

//! Multi-device generation on the CPU: ranks are threads exchanging through host memory, so
//! the split logic (sequence parallelism with padding, guidance on separate ranks, both at once)
//! runs in CI. The latents must match a one-device run and the density must count every head
//! and pass once.

mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny;
use dit::LoraSet;
use pipelines::t2v::parallel::Placement;
use pipelines::t2v::{
    read_tensor, FrameSink, Job, Loaded, ModelContext, NoiseSource, Outcome, ParallelPlan,
    PromptCache, PromptInput, SettingOverrides, Silent, SinkError,
};
use sparse::{MethodSpec, Registry};
use std::path::Path;
use vdit_core::metrics::relative_l2;

/// Drops the frames.
struct Discard;

impl FrameSink for Discard {
    fn push(&mut self, _: &Tensor) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A 2-step generation of the tiny model (2 heads) at 112x112, 9 frames: 3x7x7 = 147
/// tokens, which do not divide among 2 ranks.
fn job(context: &ModelContext, method: &str, latents: &Path) -> anyhow::Result<Job> {
    let settings = context.settings(&SettingOverrides {
        size: Some("112x112".parse()?),
        frames: Some(9),
        steps: Some(2),
        guidance: Some(4.0),
        ..Default::default()
    })?;
    let spec: MethodSpec = method.parse()?;
    Ok(Job::plan(
        context,
        settings,
        PromptInput {
            prompt: Some("a red kite".to_string()),
            negative_prompt: Some("fog".to_string()),
            ..Default::default()
        },
        NoiseSource::Seed(11),
        Registry::builtin().schedule(&spec)?,
        Some(latents.to_path_buf()),
        LoraSet::default(),
    )?)
}

fn run(
    context: &ModelContext,
    prompts: &PromptCache,
    placement: &Placement,
    method: &str,
    latents: &Path,
) -> anyhow::Result<(Tensor, Outcome)> {
    let loaded = Loaded::load_on(
        context,
        &LoraSet::default(),
        DType::F32,
        placement,
        &mut Silent,
    )?;
    let job = job(context, method, latents)?;
    let outcome = loaded.run(&job, prompts, &mut Discard, &mut Silent)?;
    Ok((read_tensor(latents, "latents")?, outcome))
}

#[test]
fn every_split_matches_one_device() -> anyhow::Result<()> {
    let context = ModelContext::new(&tiny())?;
    let dir = tempfile::tempdir()?;
    let probe = job(&context, "dense", &dir.path().join("probe"))?;
    let prompts = context.encode(&probe.texts(), DType::F32, &Device::Cpu, &mut Silent)?;
    let heads = context.config()?.num_heads;
    for method in [
        "dense",
        "vsa:sparsity=0.5",
        "vmoba:chunk_kind=spatial,chunk=3x4",
        "sparsed:select_ratio=0.5",
    ] {
        let one = dir.path().join("one.safetensors");
        let (reference, single) = run(
            &context,
            &prompts,
            &Placement::single(&Device::Cpu),
            method,
            &one,
        )?;
        // (devices, --sp, --cfg-parallel): sequence only, guidance only, both.
        for (devices, sp, cfg) in [(2, Some(2), None), (2, None, Some(true)), (4, None, None)] {
            let plan = ParallelPlan::choose(devices, sp, cfg, true, heads)?;
            let placement = Placement::new(vec![Device::Cpu; devices], plan)?;
            let path = dir
                .path()
                .join(format!("{devices}-{sp:?}-{cfg:?}.safetensors"));
            let (latents, split) = run(&context, &prompts, &placement, method, &path)?;
            let err = relative_l2(&latents, &reference)?;
            assert!(err < 1e-4, "{method} on {plan:?}: relative L2 {err:e}");
            let (a, b) = (split.density.overall(), single.density.overall());
            assert!(
                (a - b).abs() < 1e-9,
                "{method} on {plan:?}: density {a} vs {b}"
            );
            assert_eq!(
                split.density.flops, single.density.flops,
                "{method} on {plan:?}"
            );
            assert_eq!(split.rank_pairs.len(), devices);
            let total: f64 = split.rank_pairs.iter().sum();
            assert_eq!(
                total, single.rank_pairs[0],
                "{method} on {plan:?}: pairs per rank"
            );
        }
    }
    Ok(())
}

/// Dense attention that fails on the ranks holding heads past the first.
struct FailsPastHeadZero;

impl sparse::AttentionMethod for FailsPastHeadZero {
    fn name(&self) -> &'static str {
        "fails-past-head-zero"
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn attend(&self, call: &sparse::MethodCall<'_>) -> candle_core::Result<sparse::Attended> {
        let c = call.call;
        if c.first_head > 0 {
            candle_core::bail!("out of memory (injected)")
        }
        Ok(sparse::Attended::dense(sparse::dense::attention(
            c.q, c.k, c.v,
        )?))
    }
}

#[test]
fn a_failing_rank_ends_the_run_with_its_error() -> anyhow::Result<()> {
    let context = ModelContext::new(&tiny())?;
    let dir = tempfile::tempdir()?;
    let mut job = job(&context, "dense", &dir.path().join("latents.safetensors"))?;
    job.schedule = sparse::AttentionSchedule::of(FailsPastHeadZero);
    let prompts = context.encode(&job.texts(), DType::F32, &Device::Cpu, &mut Silent)?;
    let plan = ParallelPlan::choose(2, Some(2), None, true, 2)?;
    let placement = Placement::new(vec![Device::Cpu; 2], plan)?;
    let loaded = Loaded::load_on(
        &context,
        &LoraSet::default(),
        DType::F32,
        &placement,
        &mut Silent,
    )?;
    let started = std::time::Instant::now();
    let error = loaded
        .run(&job, &prompts, &mut Discard, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("rank 1 (cpu) failed") && error.contains("out of memory (injected)"),
        "{error}"
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "the failure took {:?} to end the run",
        started.elapsed()
    );
    // The run stays failed: the next job says so at once instead of waiting on a dead rank.
    let again = loaded
        .run(&job, &prompts, &mut Discard, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(again.contains("failed earlier"), "{again}");
    assert!(!dir.path().join("latents.safetensors").exists());
    Ok(())
}

//! The training loop on the tiny preset (CPU): it learns, it resumes exactly, and its folder
//! loads in the engine.

mod train_common;

use candle_core::{DType, Device, Tensor};
use sparse::Registry;
use train::optim::read_loss_csv;
use train::run::{train_dit, DitStage};
use train_common::{tiny, tiny_base, StopAfter};

fn dit_stage(base: &std::path::Path, dir: &std::path::Path, steps: u64) -> DitStage {
    DitStage {
        common: tiny(dir, steps, 4, 2e-3),
        base: base.to_path_buf(),
        from_scratch: false,
        clips: 16,
        attention: "dense".parse().expect("dense"),
        sparsity_ramp: 0,
        caption_dropout: 0.1,
        replica_devices: vec![],
    }
}

/// Each step's loss, by step, from a run's loss.csv.
fn losses(dir: &std::path::Path) -> anyhow::Result<Vec<(u64, f64)>> {
    Ok(read_loss_csv(&dir.join("loss.csv"))?
        .into_iter()
        .map(|r| (r.step, r.loss))
        .collect())
}

/// Checks that two finished runs of `steps` steps agree: each step's loss within `loss_tol`
/// (relative), every shipped transformer weight within `weight_tol`; prints both measures.
fn assert_runs_agree(
    one: &std::path::Path,
    other: &std::path::Path,
    steps: usize,
    loss_tol: f64,
    weight_tol: f32,
) -> anyhow::Result<()> {
    let (a, b) = (losses(one)?, losses(other)?);
    assert_eq!((a.len(), b.len()), (steps, steps));
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        eprintln!("step {step}: loss {x} and {y}");
        assert!(
            (x - y).abs() <= loss_tol * x.abs(),
            "step {step}: loss {x} against {y}"
        );
    }
    let shipped = |dir: &std::path::Path| -> anyhow::Result<Vec<(String, Tensor)>> {
        let file = dir.join("model/transformer/diffusion_pytorch_model.safetensors");
        let mut tensors: Vec<_> = candle_core::safetensors::load(file, &Device::Cpu)?
            .into_iter()
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tensors)
    };
    let mut worst = 0f32;
    for ((name, x), (_, y)) in shipped(one)?.iter().zip(shipped(other)?) {
        let difference = (x.to_dtype(DType::F32)? - y.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            difference <= weight_tol,
            "{name}: weights differ by {difference}"
        );
        worst = worst.max(difference);
    }
    eprintln!("shipped weights differ by at most {worst}");
    Ok(())
}

/// A run stopped after 3 of 6 steps and resumed (reading its encoded clips back from its
/// folder) gives the same losses, step by step and bit for bit, as an uninterrupted run, and
/// the same shipped weights.
#[test]
fn resume_repeats_an_uninterrupted_run() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let base = tiny_base(root.path())?;
    let registry = Registry::builtin();
    let straight = dit_stage(&base, &root.path().join("straight"), 6);
    train_dit(&straight, &registry, &mut StopAfter(None, 0))?;
    let mut split = dit_stage(&base, &root.path().join("split"), 6);
    let first = train_dit(&split, &registry, &mut StopAfter(Some(3), 0))?;
    assert!(!first.finished && first.steps == 3, "{first:?}");
    let cache = split.common.run_dir.join(train::latent_set::CACHE_FILE);
    let written = std::fs::metadata(&cache)?.modified()?;
    split.common.resume = true;
    let second = train_dit(&split, &registry, &mut StopAfter(None, 0))?;
    assert!(second.finished && second.steps == 6, "{second:?}");
    // the resumed run read its encoded clips back rather than encoding (and writing) them again
    assert_eq!(std::fs::metadata(&cache)?.modified()?, written);
    let a = losses(&straight.common.run_dir)?;
    assert_eq!(a.len(), 6);
    assert_eq!(a, losses(&split.common.run_dir)?);
    let weights = |dir: &std::path::Path| {
        std::fs::read(dir.join("model/transformer/diffusion_pytorch_model.safetensors"))
    };
    assert_eq!(
        weights(&straight.common.run_dir)?,
        weights(&split.common.run_dir)?
    );
    Ok(())
}

/// Training lowers the loss (the mean of the last 10 of 80 steps against the first 10, each a
/// fresh draw of clips, noise levels and noise); the trained folder loads in the engine.
#[test]
fn training_lowers_the_loss_and_the_folder_generates() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let base = tiny_base(root.path())?;
    let registry = Registry::builtin();
    let mut stage = dit_stage(&base, &root.path().join("run"), 80);
    stage.caption_dropout = 0.0;
    let outcome = train_dit(&stage, &registry, &mut StopAfter(None, 0))?;
    let rows = read_loss_csv(&stage.common.run_dir.join("loss.csv"))?;
    let mean = |rows: &[train::optim::LossRow]| {
        rows.iter().map(|r| r.loss).sum::<f64>() / rows.len() as f64
    };
    let (early, late) = (mean(&rows[..10]), mean(&rows[70..]));
    assert!(late < 0.85 * early, "loss {early} -> {late}");
    assert!(stage.common.run_dir.join("loss.png").is_file());
    // the step's phases are timed, and together take no more than the whole step
    let p = outcome.phases;
    let phases = [p.forward, p.backward, p.clip, p.optimiser, p.ema];
    assert!(p.forward > 0.0 && p.backward > 0.0 && phases.iter().all(|&s| s >= 0.0));
    let sum: f64 = phases.iter().sum();
    assert!(
        sum <= outcome.seconds_per_step,
        "{p:?} against {} s/step",
        outcome.seconds_per_step
    );

    // the folder is a model the pipeline loads and runs
    let spec = pipelines::t2v::ModelSpec {
        folder: Some(outcome.model_dir.clone()),
        ..Default::default()
    };
    let context = pipelines::t2v::ModelContext::new(&spec)?;
    assert_eq!(context.config()?.num_layers, 1);
    // and pads prompts to the model's text length, as training did, not to Wan's 512
    let folder = &outcome.model_dir;
    let cache = pipelines::t2v::PromptCache::encode(
        &folder.join("text_encoder"),
        &folder.join("tokenizer"),
        &["a red circle moves up"],
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
        &mut pipelines::t2v::Silent,
    )?;
    let input = pipelines::t2v::PromptInput {
        prompt: Some("a red circle moves up".into()),
        ..Default::default()
    };
    let text_dim = context.config()?.text_dim;
    let conditioning = input.conditioning(false, &cache, text_dim)?;
    assert_eq!(
        conditioning.cond.dims(),
        [1, train::recipe::TEXT_LEN, text_dim]
    );
    Ok(())
}

/// A VAE run `from` a model folder starts from its VAE: one step at the warm-up's learning
/// rate of 0 leaves the weights as they were, so the folder it writes holds the base's VAE
/// tensor for tensor; a folder without a VAE is a one-line error.
#[test]
fn a_vae_run_from_a_folder_starts_from_its_weights() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let base = tiny_base(root.path())?;
    let stage = train::run::VaeStage {
        common: tiny(&root.path().join("again"), 1, 1, 1e-3),
        crop: 32,
        crop_frames: 5,
        kl_weight: 1e-4,
        from: Some(base.clone()),
    };
    let outcome = train::run::train_vae(&stage, &mut StopAfter(None, 0))?;
    let file = "vae/diffusion_pytorch_model.safetensors";
    let read = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu)
    };
    let (before, after) = (read(&base)?, read(&outcome.model_dir)?);
    assert_eq!(before.len(), after.len());
    for (name, tensor) in &before {
        let same = (tensor.to_dtype(candle_core::DType::F32)?
            - after[name].to_dtype(candle_core::DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
        assert_eq!(same, 0.0, "{name} changed");
    }
    let mut missing = stage.clone();
    missing.common.run_dir = root.path().join("missing");
    missing.from = Some(root.path().join("nowhere"));
    let err = train::run::train_vae(&missing, &mut StopAfter(None, 0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--from") && !err.contains('\n'), "{err}");
    Ok(())
}

/// Two replicas (threads on the CPU, exchanging through host memory) that split a batch of 4
/// train as one device with the whole batch: the same loss at every step and the same shipped
/// weights, up to the order of floating-point sums (relative 1e-5 on the losses, 1e-5 on the
/// weights after 4 AdamW steps; measured: 1e-7 and 0). A stop asked after step 2 takes effect
/// at the next exchange, on both replicas, and resuming finishes the same run.
#[test]
fn two_replicas_train_as_one_device_with_the_whole_batch() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let base = tiny_base(root.path())?;
    let registry = Registry::builtin();
    let whole = dit_stage(&base, &root.path().join("whole"), 4);
    train_dit(&whole, &registry, &mut StopAfter(None, 0))?;
    let mut pair = dit_stage(&base, &root.path().join("pair"), 4);
    pair.replica_devices = vec![Device::Cpu];
    let stopped = train_dit(&pair, &registry, &mut StopAfter(Some(2), 0))?;
    assert!(!stopped.finished && stopped.steps == 3, "{stopped:?}");
    pair.common.resume = true;
    let done = train_dit(&pair, &registry, &mut StopAfter(None, 0))?;
    assert!(done.finished && done.steps == 4, "{done:?}");
    assert_runs_agree(&whole.common.run_dir, &pair.common.run_dir, 4, 1e-5, 1e-5)?;
    // a batch the replicas cannot share evenly is refused in one line
    let mut odd = dit_stage(&base, &root.path().join("odd"), 1);
    odd.common.batch = 3;
    odd.replica_devices = vec![Device::Cpu];
    let err = train_dit(&odd, &registry, &mut StopAfter(None, 0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not split evenly over 2 devices"),
        "{err}"
    );
    Ok(())
}

/// On two GPUs (NCCL in a build with it), replicas splitting a batch of 8 train as one GPU
/// with the whole batch, within bf16's rounding (relative 1e-2 on each step's loss, 1e-2 on
/// the shipped weights after 4 steps; the exact identity is the CPU test's). Needs a machine
/// with two GPUs: with one, it says so and checks nothing.
#[test]
#[cfg(feature = "cuda")]
fn two_gpus_train_as_one_with_the_whole_batch() -> anyhow::Result<()> {
    let Ok(second) = Device::new_cuda(1) else {
        eprintln!("skipped: this machine has one GPU");
        return Ok(());
    };
    let root = tempfile::tempdir()?;
    let base = tiny_base(root.path())?;
    let registry = Registry::builtin();
    let mut whole = dit_stage(&base, &root.path().join("whole"), 4);
    whole.common.batch = 8;
    whole.common.device = Device::new_cuda(0)?;
    train_dit(&whole, &registry, &mut StopAfter(None, 0))?;
    let mut pair = dit_stage(&base, &root.path().join("pair"), 4);
    pair.common.batch = 8;
    pair.common.device = Device::new_cuda(0)?;
    pair.replica_devices = vec![second];
    let done = train_dit(&pair, &registry, &mut StopAfter(None, 0))?;
    assert!(done.finished && done.steps == 4, "{done:?}");
    assert_runs_agree(&whole.common.run_dir, &pair.common.run_dir, 4, 1e-2, 1e-2)
}

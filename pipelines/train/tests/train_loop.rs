//! The training loop on the tiny preset (CPU): it learns, it resumes exactly, and its folder
//! loads in the engine.

mod train_common;

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
    }
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
    let losses = |dir: &std::path::Path| -> anyhow::Result<Vec<(u64, f64)>> {
        Ok(read_loss_csv(&dir.join("loss.csv"))?
            .into_iter()
            .map(|r| (r.step, r.loss))
            .collect())
    };
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

//! Ulysses sequence parallelism: the transformer split over 2 and 3 ranks (threads exchanging
//! through a `LocalGroup`) gives the output of the whole model, for every attention method,
//! including token counts that do not divide among the ranks; on the CPU in f32, and with the
//! `cuda` feature also on one GPU in bf16 (the ranks' threads sharing it, so the fused kernels
//! and the GPU attention paths run on token runs and head runs).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use dit::{load_transformer, LoraSet, Step, WanTransformer};
use sparse::paro::{Paro, ParoOptions, ParoRecorder};
use sparse::sparsed::{Sparsed, SparsedOptions};
use sparse::vmoba::{Vmoba, VmobaOptions};
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{AttentionMethod, AttentionRouter, AttentionSchedule, Dense, TokenGrid};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vdit_core::metrics::relative_l2;
use vdit_core::parallel::{GroupHealth, LocalGroup};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Where and in what precision a check runs, and the relative L2 it allows.
#[derive(Clone)]
struct Run {
    device: Device,
    dtype: DType,
    tolerance: f64,
}

fn cpu() -> Run {
    Run {
        device: Device::Cpu,
        dtype: DType::F32,
        tolerance: 1e-5,
    }
}

fn model(name: &str, run: &Run) -> Result<WanTransformer> {
    let loras = LoraSet::default();
    let model = load_transformer(&fixture(name), &loras, run.dtype, &run.device)?.model;
    // The ranks' threads read the weights from streams of their own.
    run.device.synchronize()?;
    Ok(model)
}

/// Fresh inputs: latents `[batch, 16, t, h, w]`, timesteps and text of the model's width.
fn inputs(model: &WanTransformer, batch: usize, thw: [usize; 3], run: &Run) -> Result<[Tensor; 3]> {
    let dev = Device::Cpu;
    let [t, h, w] = thw;
    let latents = Tensor::randn(0f32, 1., (batch, 16, t, h, w), &dev)?;
    let timesteps = (Tensor::rand(0f32, 1000., batch, &dev)?).floor()?;
    let text = Tensor::randn(0f32, 1., (batch, 5, model.config().text_dim), &dev)?;
    let on = |x: Tensor, dtype| x.to_dtype(dtype)?.to_device(&run.device);
    let io = [
        on(latents, run.dtype)?,
        on(timesteps, DType::F32)?,
        on(text, run.dtype)?,
    ];
    run.device.synchronize()?;
    Ok(io)
}

/// A PARO calibration of `model` on `inputs`, recorded through one dense forward.
fn paro(model: &WanTransformer, io: &[Tensor; 3]) -> Result<Arc<dyn AttentionMethod>> {
    let grid = model.token_grid(io[0].dims())?;
    let options = ParoOptions {
        density: 0.5,
        block: 4,
        step_groups: 1,
    };
    let recorder = ParoRecorder::new(grid, options)?;
    model.forward(&io[0], &io[1], &io[2], &recorder, Step::SINGLE)?;
    Ok(Arc::new(Paro::new(Arc::new(recorder.finish()?), None)))
}

fn methods(model: &WanTransformer, io: &[Tensor; 3]) -> Result<Vec<Arc<dyn AttentionMethod>>> {
    Ok(vec![
        Arc::new(Dense),
        Arc::new(Vsa::new(VsaOptions {
            sparsity: 0.5,
            ..Default::default()
        })?),
        Arc::new(Vmoba::new(VmobaOptions {
            temporal_chunk: 1,
            spatial_chunk: [1, 2],
            st_chunk: [1, 1, 2],
            ..Default::default()
        })?),
        Arc::new(Sparsed::new(SparsedOptions {
            select: 0.5,
            block: 4,
        })?),
        paro(model, io)?,
    ])
}

/// The output of `model` split over `ranks` threads, from rank 0 (every rank's must agree).
fn split_forward(
    model: &WanTransformer,
    io: &[Tensor; 3],
    schedule: &AttentionSchedule,
    ranks: usize,
) -> Result<Tensor> {
    let group = LocalGroup::new(ranks, Duration::from_secs(60), GroupHealth::new());
    let outputs = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|comm| {
                let router = AttentionRouter::new(schedule.for_another_rank());
                s.spawn(move || {
                    model.forward_split(&io[0], &io[1], &io[2], &router, Step::SINGLE, Some(&comm))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect::<candle_core::Result<Vec<_>>>()
    })?;
    for other in &outputs[1..] {
        assert_eq!(relative_l2(other, &outputs[0])?, 0.0, "ranks disagree");
    }
    Ok(outputs[0].clone())
}

fn check_every_method(
    name: &str,
    ranks: usize,
    batch: usize,
    thw: [usize; 3],
    run: &Run,
) -> Result<()> {
    let model = model(name, run)?;
    let io = inputs(&model, batch, thw, run)?;
    let grid: TokenGrid = model.token_grid(io[0].dims())?;
    for method in methods(&model, &io)? {
        let schedule = AttentionSchedule::new(Arc::clone(&method));
        let whole = model.forward(
            &io[0],
            &io[1],
            &io[2],
            &AttentionRouter::new(schedule.for_another_rank()),
            Step::SINGLE,
        )?;
        let split = split_forward(&model, &io, &schedule, ranks)?;
        let f32_cpu = |x: &Tensor| x.to_dtype(DType::F32)?.to_device(&Device::Cpu);
        let err = relative_l2(&f32_cpu(&split)?, &f32_cpu(&whole)?)?;
        println!(
            "{name} over {ranks} ranks on {:?}, {}: {err:.2e}",
            run.device.location(),
            method.name()
        );
        assert!(
            err < run.tolerance,
            "{name}, {} tokens over {ranks} ranks, {}: {err:e}",
            grid.len(),
            method.name()
        );
    }
    Ok(())
}

#[test]
fn two_ranks_match_one_with_tokens_that_divide_and_that_do_not() -> Result<()> {
    // 2 heads; 3x4x4 = 48 tokens, then 3x5x3 = 45; a batch of 2 as guidance runs it.
    check_every_method("tiny_h12", 2, 2, [3, 8, 8], &cpu())?;
    check_every_method("tiny_h12", 2, 2, [3, 10, 6], &cpu())
}

#[test]
fn three_ranks_match_one_with_tokens_that_do_not_divide() -> Result<()> {
    // 3 heads; 5x1x5 = 25 tokens: runs of 9, 9 and 7 + 2 padding.
    check_every_method("odd_h3", 3, 1, [5, 2, 10], &cpu())
}

/// The same on one GPU in bf16; the split and the whole model run the same kernels, so they
/// differ only where matrix products of other sizes round differently.
#[cfg(feature = "cuda")]
#[test]
fn on_one_gpu_the_ranks_match_the_whole_model() -> Result<()> {
    let gpu = Run {
        device: Device::new_cuda(0)?,
        dtype: DType::BF16,
        tolerance: 1e-2,
    };
    check_every_method("tiny_h12", 2, 2, [3, 10, 6], &gpu)?;
    check_every_method("odd_h3", 3, 1, [5, 2, 10], &gpu)
}

#[test]
fn heads_that_do_not_divide_are_refused_naming_the_degrees_that_work() -> Result<()> {
    let model = model("tiny_h12", &cpu())?;
    let io = inputs(&model, 1, [1, 4, 4], &cpu())?;
    let error = split_forward(&model, &io, &AttentionSchedule::new(Arc::new(Dense)), 3)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("2 attention heads") && error.contains("1, 2"),
        "{error}"
    );
    Ok(())
}

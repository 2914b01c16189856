//! `vdit calibrate paro`: dense generations on a few prompts, recorded by
//! [`sparse::paro::ParoRecorder`], become a PARO calibration file (per-head axis orders and
//! static block masks) for `vdit generate --attention paro` at the same size.

use super::bars::Bars;
use super::options::{ModelArgs, RuntimeArgs, SettingArgs};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use pipelines::t2v::{
    check_parent, token_grid, Component, Denoiser, ModelContext, NoiseSource, PromptInput,
};
use sparse::paro::{ParoOptions, ParoRecorder};
use std::path::PathBuf;
use std::time::Instant;
use vdit_core::output::{check_new, Claim};

/// Arguments of `vdit calibrate`.
#[derive(Args)]
pub struct CalibrateArgs {
    #[command(subcommand)]
    what: Calibration,
}

#[derive(Subcommand)]
enum Calibration {
    /// PARO: records each layer's and head's block-pooled attention under the 6 axis orders
    /// during dense generations, picks each head's order and stores per-head orders and static
    /// block masks for a target density (optionally per timestep group).
    Paro(ParoArgs),
}

/// Arguments of `vdit calibrate paro`.
#[derive(Args)]
struct ParoArgs {
    /// Prompts to calibrate on, one per line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    prompts: PathBuf,
    /// Negative prompt of every generation (with guidance > 1).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Seed of the first prompt's noise; prompt i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of block pairs each head keeps, in (0, 1].
    #[arg(long, default_value_t = 0.25)]
    density: f64,
    /// Block size in tokens.
    #[arg(long, default_value_t = 64)]
    block: usize,
    /// Timestep groups with their own masks (1: one mask for all steps).
    #[arg(long, default_value_t = 1)]
    step_groups: usize,
    /// Calibration file to write.
    #[arg(long, default_value = "paro.safetensors")]
    output: PathBuf,
    /// Generation settings (the calibration is valid for this size and frame count only).
    #[command(flatten)]
    settings: SettingArgs,
    /// The model.
    #[command(flatten)]
    model: ModelArgs,
    /// Device and dtype.
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Replace an existing calibration file (only once the new one is complete).
    #[arg(long)]
    overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Runs the chosen calibration.
pub fn run(args: CalibrateArgs) -> Result<()> {
    match args.what {
        Calibration::Paro(args) => paro(args),
    }
}

fn paro(args: ParoArgs) -> Result<()> {
    let started = Instant::now();
    let context = ModelContext::new(&args.model.spec())?;
    let settings = context.settings(&args.settings.overrides(None)?)?;
    let text = std::fs::read_to_string(&args.prompts)
        .with_context(|| format!("cannot read the prompts file {}", args.prompts.display()))?;
    let prompts: Vec<PromptInput> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| PromptInput {
            prompt: Some(l.to_string()),
            negative_prompt: args.negative_prompt.clone(),
            ..Default::default()
        })
        .collect();
    if prompts.is_empty() {
        bail!("{} has no prompts (one per line)", args.prompts.display());
    }
    let options = ParoOptions {
        density: args.density,
        block: args.block,
        step_groups: args.step_groups,
    };
    let config = context.config()?;
    let grid = token_grid(&settings, config)?;
    let recorder = ParoRecorder::new(grid, options)?;
    context
        .paths
        .require(&[Component::TextEncoder, Component::Tokenizer])?;
    check_parent(&args.output)?;
    let _claim = Claim::acquire(&args.output)?;
    check_new(&args.output, args.overwrite)?;
    let (device, dtype) = args.runtime.open()?;
    let mut bars = Bars::new(args.quiet);
    let texts: Vec<&str> = prompts
        .iter()
        .flat_map(|p| p.texts_to_encode(settings.guided()))
        .collect();
    let encoded = context.encode(&texts, dtype, &device, &mut bars)?;
    let transformer = context.paths.get(Component::Transformer)?;
    let denoiser = Denoiser::load(transformer, &dit::LoraSet::default(), dtype, &device)?;
    let shape = settings.latent_shape(config.in_channels);
    for (i, prompt) in prompts.iter().enumerate() {
        bars.set_prefix(&format!("[{}/{}]", i + 1, prompts.len()));
        let conditioning = prompt.conditioning(settings.guided(), &encoded, config.text_dim)?;
        let noise = NoiseSource::Seed(args.seed.wrapping_add(i as u64))
            .noise(&shape, settings.renoise_steps())?;
        denoiser.denoise(
            &noise,
            &conditioning,
            &settings,
            &context.scheduler,
            &recorder,
            &mut bars,
        )?;
    }
    let calibration = recorder.finish()?;
    calibration.save(&args.output)?;
    say!(
        "{}",
        serde_json::json!({
            "output": args.output,
            "prompts": prompts.len(),
            "size": settings.size,
            "frames": settings.frames,
            "steps": settings.steps,
            "grid": [grid.t, grid.h, grid.w],
            "layers": calibration.layers,
            "heads": calibration.heads,
            "block": calibration.block,
            "density": calibration.density,
            "step_groups": calibration.groups,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

//! `vdit generate`: one prompt to one video, with a JSON record beside it.

use super::bars::Bars;
use super::options::{warn_ignored, LoraArgs, ModelArgs, ParallelArgs, RuntimeArgs, SettingArgs};
use crate::render::{open_writer, render};
use anyhow::{bail, Result};
use clap::Args;
use pipelines::t2v::{
    check_fits, device_name, record_path, Job, Loaded, ModelContext, NoiseSource, PromptInput,
};
use sparse::{MethodSpec, Registry};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::time::Instant;
use vdit_core::memory::available_bytes;
use vdit_core::output::{check_new, Claim};

/// Arguments of `vdit generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// What the video shows.
    #[arg(long)]
    pub prompt: Option<String>,
    /// What it should not show (used when guidance > 1; default empty, as diffusers).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Seed of the initial noise (default: a random one, written in the record). The noise is
    /// drawn on the CPU, so a seed gives the same noise on every device.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Video to write: .mp4, .gif, .y4m, or a folder (no extension) for PNG frames. The record
    /// goes to OUTPUT.json.
    #[arg(long, default_value = default_output())]
    pub output: PathBuf,
    /// Frame rate of the video (default: the model's, else 16).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Generation settings.
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Attention method and options (the flags come from the method registry).
    #[arg(skip)]
    pub attention: MethodSpec,
    /// Whether `--attention` was given (else the model's default method applies).
    #[arg(skip)]
    pub attention_named: bool,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRAs.
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Device and dtype.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Several GPUs.
    #[command(flatten)]
    pub parallel: ParallelArgs,
    /// Initial latents instead of seeded noise: safetensors with `latents` [1, 16, T, H/8, W/8]
    /// (T = (frames - 1) / 4 + 1).
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// Prompt embeddings instead of --prompt: safetensors with `prompt_embeds` [1, L, text_dim].
    #[arg(long, value_name = "FILE")]
    pub prompt_embeds: Option<PathBuf>,
    /// Negative prompt embeddings: safetensors with `negative_prompt_embeds` [1, L, text_dim].
    #[arg(long, value_name = "FILE")]
    pub negative_prompt_embeds: Option<PathBuf>,
    /// Also save the denoised latents before VAE decoding (safetensors, `latents`), what
    /// diffusers returns with output_type="latent".
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// Replace an existing video, record or --save-latents file (each only once its
    /// replacement is complete; a failed run leaves them as they were).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `video.mp4`, or `video.y4m` in a build without FFmpeg.
fn default_output() -> &'static str {
    if cfg!(feature = "ffmpeg") {
        "video.mp4"
    } else {
        "video.y4m"
    }
}

/// A seed from the process's random hasher keys and the clock.
fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Checks everything, encodes the prompts, loads the model, generates, writes the video and its
/// record, and prints what was written.
pub fn run(args: GenerateArgs, registry: &Registry) -> Result<()> {
    let started = Instant::now();
    let context = ModelContext::new(&args.model.spec())?;
    let settings = context.settings(&args.settings.overrides(args.fps)?)?;
    let noise = match (&args.latents, args.seed) {
        (Some(_), Some(_)) => bail!("give --seed or --latents, not both"),
        (Some(path), None) => NoiseSource::Latents(path.clone()),
        (None, seed) => NoiseSource::Seed(seed.unwrap_or_else(random_seed)),
    };
    let prompts = PromptInput {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        prompt_embeds: args.prompt_embeds,
        negative_prompt_embeds: args.negative_prompt_embeds,
    };
    let schedule = registry.schedule(&context.attention(&args.attention, args.attention_named)?)?;
    let job = Job::plan(
        &context,
        settings,
        prompts,
        noise,
        schedule,
        args.save_latents,
        args.lora.set(),
    )?;
    // Held until the record is written: a second run on the same output stops here.
    let _claim = Claim::acquire(&args.output)?;
    check_new(&record_path(&args.output), args.overwrite)?;
    if let Some(latents) = &job.save_latents {
        check_new(latents, args.overwrite)?;
    }
    let heads = context.config()?.num_heads;
    let (placement, dtype) = args
        .parallel
        .open(&args.runtime, job.settings.guided(), heads)?;
    let device = placement.main().clone();
    let need = context.memory_need(&job.settings, !job.texts().is_empty(), dtype)?;
    check_fits(&need, available_bytes(&device)?, &device_name(&device))?;
    let writer = open_writer(&job, &args.output, args.overwrite)?;
    let mut bars = Bars::new(args.quiet);
    let encoded = context.encode(&job.texts(), dtype, &device, &mut bars)?;
    let mut loaded = Loaded::load_on(&context, &job.loras, dtype, &placement, &mut bars)?;
    warn_ignored(loaded.lora_ignored());
    loaded.kernel = args.runtime.kernel()?;
    let (outcome, video) = render(&loaded, &job, &encoded, writer, &args.output, &mut bars)?;
    say!("{video}");
    let seed = match job.noise {
        NoiseSource::Seed(seed) => format!("seed {seed}, "),
        NoiseSource::Latents(_) => String::new(),
    };
    say!(
        "{}attention {} at density {:.3}, {:.1} s in all; record in {}",
        seed,
        job.schedule.default.name(),
        outcome.density.overall(),
        started.elapsed().as_secs_f64(),
        record_path(&args.output).display()
    );
    Ok(())
}

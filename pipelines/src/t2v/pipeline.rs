//! The text-to-video pipeline: the sampling loop with classifier-free guidance around the
//! transformer, then the VAE decoding streamed into a [`FrameSink`].

use crate::error::{fail, ResultExt};
use crate::schedulers::{build_scheduler, FewStepDmd, Scheduler, SchedulerConfig};
use crate::t2v::files::{all_finite, read_tensor, save_tensor};
use crate::t2v::model::{Component, ModelPaths};
use crate::t2v::noise::seeded_noise;
use crate::t2v::parallel::{Placement, RankJob, RankLinks, Ranks};
use crate::t2v::progress::{unit_done, Progress, Stage};
use crate::t2v::prompts::{Conditioning, PromptInput};
use crate::t2v::settings::Settings;
use crate::t2v::sink::FrameSink;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use dit::{LoadedTransformer, LoraSet, Step, WanConfig};
use serde::Serialize;
use sparse::{AttentionRouter, AttentionSchedule, DensityReport, SelfAttention};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vae::{DecodeOptions, WanVae};

/// Where the initial latents (and the dmd sampler's re-noising) come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseSource {
    /// Standard normal noise from this seed ([`crate::t2v::noise`]); re-noising step `i` (from
    /// 1) draws from the seed `seed + i * 0x9E3779B97F4A7C15` (wrapping).
    Seed(u64),
    /// The tensor `latents` of this safetensors file, `[1, 16, T, H/8, W/8]`, and for the dmd
    /// sampler `step_noises`, `[steps - 1, 1, 16, T, H/8, W/8]`.
    Latents(PathBuf),
}

/// The noise of one generation: the initial latents and one tensor per re-noising.
#[derive(Clone, Debug)]
pub struct Noise {
    /// The initial latents, f32 on the CPU.
    pub initial: Tensor,
    /// What the dmd sampler adds after each step but the last (empty for the other samplers).
    pub renoise: Vec<Tensor>,
}

/// The odd constant that spaces the seeds of re-noising steps (2^64 over the golden ratio).
const STEP_SEED_STRIDE: u64 = 0x9e37_79b9_7f4a_7c15;

impl NoiseSource {
    /// The initial latents of `shape` and `renoise_steps` tensors to re-noise with.
    pub fn noise(&self, shape: &[usize], renoise_steps: usize) -> Result<Noise> {
        let initial = self.initial_latents(shape)?;
        let renoise = match self {
            Self::Seed(seed) => (1..=renoise_steps as u64)
                .map(|i| seeded_noise(seed.wrapping_add(i.wrapping_mul(STEP_SEED_STRIDE)), shape))
                .collect::<candle_core::Result<Vec<_>>>()?,
            Self::Latents(path) if renoise_steps > 0 => {
                let all = read_tensor(path, "step_noises")?;
                let mut want = vec![renoise_steps];
                want.extend_from_slice(shape);
                if all.dims() != want {
                    fail!(
                        Input,
                        "`step_noises` in {} has shape {:?}; {renoise_steps} re-noising steps of \
                         these latents need {want:?}",
                        path.display(),
                        all.dims()
                    );
                }
                let all = all.to_dtype(DType::F32)?;
                (0..renoise_steps)
                    .map(|i| all.get(i))
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
            Self::Latents(_) => Vec::new(),
        };
        Ok(Noise { initial, renoise })
    }

    /// The initial latents of `shape`, f32 on the CPU; a file's tensor must have that shape.
    pub fn initial_latents(&self, shape: &[usize]) -> Result<Tensor> {
        match self {
            Self::Seed(seed) => Ok(seeded_noise(*seed, shape)?),
            Self::Latents(path) => {
                let latents = read_tensor(path, "latents")?;
                if latents.dims() != shape {
                    fail!(
                        Input,
                        "`latents` in {} has shape {:?}; this size and frame count need {shape:?}",
                        path.display(),
                        latents.dims()
                    );
                }
                Ok(latents.to_dtype(DType::F32)?)
            }
        }
    }
}

/// One generation, checked and ready to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// Size, frames, steps, guidance, sampler...
    pub settings: Settings,
    /// The prompt and negative prompt (texts or embedding files).
    pub prompts: PromptInput,
    /// The initial latents.
    pub noise: NoiseSource,
    /// Which attention runs where.
    pub schedule: AttentionSchedule,
    /// Where to save the denoised latents (`latents`, before VAE decoding), if anywhere.
    pub save_latents: Option<PathBuf>,
    /// The LoRAs merged into the transformer for it.
    pub loras: LoraSet,
}

/// The diffusion transformer and the sampling loop around it, on one device or as rank 0 of
/// a multi-device run ([`crate::t2v::parallel`]).
pub struct Denoiser {
    transformer: LoadedTransformer,
    path: PathBuf,
    /// This rank's collectives (none on one device).
    links: RankLinks,
    /// The other ranks of a multi-device run.
    ranks: Option<Ranks>,
    placement: Placement,
}

impl Denoiser {
    /// Loads the transformer at `path` with `loras` merged into it, in `dtype` on `device`.
    pub fn load(path: &Path, loras: &LoraSet, dtype: DType, device: &Device) -> Result<Self> {
        let transformer = dit::load_transformer(path, loras, dtype, device)
            .with_context(|| format!("cannot load the transformer from {}", path.display()))?;
        Ok(Self {
            transformer,
            path: path.to_path_buf(),
            links: RankLinks::single(),
            ranks: None,
            placement: Placement::single(device),
        })
    }

    /// Loads the transformer on every device of `placement`: rank 0 here, the others on
    /// threads of their own ([`Ranks`]), all at once.
    pub fn load_on(
        path: &Path,
        loras: &LoraSet,
        dtype: DType,
        placement: &Placement,
    ) -> Result<Self> {
        if placement.plan.devices == 1 {
            return Self::load(path, loras, dtype, placement.main());
        }
        let mut links = RankLinks::connect(placement)?.into_iter();
        let mine = links.next().expect("rank 0 links");
        let others = &placement.devices[1..];
        // The other ranks load while this one does.
        let ranks = Ranks::start(links.collect(), others, path, loras, dtype);
        let loaded = Self::load(path, loras, dtype, placement.main());
        let ranks = ranks.loaded()?;
        Ok(Self {
            links: mine,
            ranks: Some(ranks),
            placement: placement.clone(),
            ..loaded?
        })
    }

    /// The devices of the run and how it splits over them.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The transformer's configuration.
    pub fn config(&self) -> &WanConfig {
        &self.transformer.config
    }

    /// The loaded transformer (its layout and config source included).
    pub fn transformer(&self) -> &LoadedTransformer {
        &self.transformer
    }

    /// Where the weights were loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the sampling loop from `noise` (initial latents `[1, C, T, H, W]`, any device) on
    /// one device and returns the denoised latents, f32 on the model's device, with the seconds
    /// each step took (the device is synchronised after each step, so the times are the
    /// device's). With guidance the prompt and the negative prompt run as one batch of 2 and the
    /// velocity is `uncond + guidance * (cond - uncond)`. Latents and the guidance arithmetic
    /// stay in f32 whatever the model's dtype. A multi-device denoiser runs through
    /// [`Denoiser::denoise_routed`].
    pub fn denoise(
        &self,
        noise: &Noise,
        text: &Conditioning,
        settings: &Settings,
        scheduler: &SchedulerConfig,
        attention: &dyn SelfAttention,
        progress: &mut dyn Progress,
    ) -> Result<(Tensor, Vec<f64>)> {
        if self.ranks.is_some() {
            fail!(
                Usage,
                "this transformer is spread over {} devices: denoise through denoise_routed",
                self.placement.plan.devices
            );
        }
        let links = &self.links;
        self.sample(
            noise,
            &text.batch()?,
            settings,
            scheduler,
            attention,
            links,
            progress,
        )
    }

    /// [`Denoiser::denoise`] on every device of the run: ranks 1.. get fresh copies of
    /// `router` and their reports are returned (rank 0's is left in `router`); none on one
    /// device.
    pub fn denoise_routed(
        &self,
        noise: &Noise,
        text: &Conditioning,
        settings: &Settings,
        scheduler: &SchedulerConfig,
        router: &AttentionRouter,
        progress: &mut dyn Progress,
    ) -> Result<(Tensor, Vec<f64>, Vec<DensityReport>)> {
        let batch = text.batch()?.to_device(&Device::Cpu)?;
        if let Some(ranks) = &self.ranks {
            if let Some(failure) = self.links.failure() {
                fail!(
                    Model,
                    "the multi-GPU run failed earlier ({failure}): start it again"
                );
            }
            ranks.dispatch(|| {
                Ok(RankJob {
                    noise: noise.clone(),
                    text: batch.clone(),
                    settings: settings.clone(),
                    scheduler: scheduler.clone(),
                    router: router.for_another_rank(),
                })
            })?;
        }
        let mine = self.sample(
            noise,
            &batch,
            settings,
            scheduler,
            router,
            &self.links,
            progress,
        );
        let Some(ranks) = &self.ranks else {
            let (latents, steps) = mine?;
            return Ok((latents, steps, Vec::new()));
        };
        if let Err(e) = &mine {
            self.links.fail(&format!("rank 0 failed: {e}"));
        }
        let theirs = ranks.collect();
        if let Some(failure) = self.links.failure() {
            // The first failure is the cause; the other ranks stopped because of it.
            return match mine {
                Err(Error::Interrupted) => Err(Error::Interrupted),
                _ => Err(Error::Model(format!("multi-GPU run stopped: {failure}"))),
            };
        }
        let (latents, steps) = mine?;
        let theirs = theirs.into_iter().collect::<Result<Vec<_>>>()?;
        Ok((latents, steps, theirs))
    }

    /// The sampling loop of one rank: the text batch `[cond; uncond]` or `cond` (any device),
    /// this rank's part of each forward pass through `links`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sample(
        &self,
        noise: &Noise,
        text: &Tensor,
        settings: &Settings,
        scheduler: &SchedulerConfig,
        attention: &dyn SelfAttention,
        links: &RankLinks,
        progress: &mut dyn Progress,
    ) -> Result<(Tensor, Vec<f64>)> {
        let model = &self.transformer.model;
        let (device, dtype) = (model.device().clone(), model.dtype());
        let config = settings.scheduler_config(scheduler);
        let mut scheduler: Box<dyn Scheduler> =
            match (settings.scheduler.kind(), &settings.timesteps) {
                (Some(kind), _) => build_scheduler(kind, &config, settings.steps, &device)?,
                (None, Some(timesteps)) => Box::new(FewStepDmd::new(
                    &config,
                    timesteps,
                    noise.renoise.clone(),
                    &device,
                )?),
                (None, None) => return Err(crate::t2v::SettingsError::NoTimesteps.into()),
            };
        let timesteps = scheduler.timesteps().to_vec();
        let mut latents = (noise.initial.to_device(&device)?.to_dtype(DType::F32)?
            * scheduler.init_noise_sigma())?;
        let guided = text.dim(0)? == 2;
        let context = links.text(text)?.to_device(&device)?.to_dtype(dtype)?;
        let batch = context.dim(0)?;
        progress.begin(Stage::Denoising, timesteps.len());
        let mut step_seconds = Vec::with_capacity(timesteps.len());
        for (index, &t) in timesteps.iter().enumerate() {
            let started = Instant::now();
            let input = latents.to_dtype(dtype)?;
            let input = if batch == 2 {
                Tensor::cat(&[&input, &input], 0)?
            } else {
                input
            };
            let timestep = Tensor::full(t as f32, batch, &device)?;
            let step = Step::new(index, timesteps.len());
            let velocity = model
                .forward_split(
                    &input,
                    &timestep,
                    &context,
                    attention,
                    step,
                    links.sequence.as_deref(),
                )?
                .to_dtype(DType::F32)?;
            let velocity = links.guide(velocity, guided, settings.guidance)?;
            latents = scheduler.step(&velocity, index, &latents)?;
            if !all_finite(&latents)? {
                fail!(
                    Model,
                    "the latents became NaN or infinite at step {} of {}: the model overflows \
                     in {dtype:?} (try --dtype f32) or its weights are damaged",
                    index + 1,
                    timesteps.len()
                );
            }
            step_seconds.push(started.elapsed().as_secs_f64());
            unit_done(progress)?;
        }
        progress.end();
        Ok((latents, step_seconds))
    }
}

/// Seconds spent in each stage of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Encoding this generation's prompts (0 when embeddings were given or already encoded).
    pub text_encoding_s: f64,
    /// Loading the text encoder, the transformer and the VAE (in a batch: once, for every job).
    pub loading_s: f64,
    /// The sampling loop.
    pub denoising_s: f64,
    /// VAE decoding.
    pub decoding_s: f64,
    /// Converting and writing frames, and finishing the file.
    pub writing_s: f64,
}

/// What a generation measured.
#[derive(Debug)]
pub struct Outcome {
    /// Attention density over the sampling loop.
    pub density: DensityReport,
    /// Query-key pairs each rank computed (one entry on one device): how evenly a
    /// multi-device run spread the attention.
    pub rank_pairs: Vec<f64>,
    /// Seconds of each denoising step.
    pub step_seconds: Vec<f64>,
    /// Most GPU memory in use at once during the generation, in bytes (`None` on the CPU).
    pub peak_gpu_bytes: Option<u64>,
    /// Time of each stage (text encoding and loading left for the caller to fill, and the
    /// sink's finishing to add to the writing time).
    pub timings: Timings,
}

/// A loaded Wan text-to-video model: transformer, VAE and scheduler settings.
pub struct TextToVideo {
    /// The transformer and sampling loop.
    pub denoiser: Denoiser,
    /// The VAE.
    pub vae: WanVae,
    /// The scheduler settings of the model (its file, or Wan's default).
    pub scheduler: SchedulerConfig,
    vae_path: PathBuf,
}

impl TextToVideo {
    /// Loads the transformer (with `loras` merged into it) and the VAE of `paths` in `dtype`:
    /// the transformer on every device of `placement`, the VAE on rank 0's.
    pub fn load(
        paths: &ModelPaths,
        loras: &LoraSet,
        dtype: DType,
        placement: &Placement,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        paths.require(&[Component::Transformer, Component::Vae])?;
        let scheduler = paths.scheduler_config()?;
        progress.begin(Stage::Loading, 2);
        let transformer = paths.get(Component::Transformer)?;
        let denoiser = Denoiser::load_on(transformer, loras, dtype, placement)?;
        progress.advance();
        let vae_path = paths.get(Component::Vae)?.to_path_buf();
        let vae = WanVae::load(&vae_path, dtype, placement.main())
            .with_context(|| format!("cannot load the VAE from {}", vae_path.display()))?;
        progress.advance();
        progress.end();
        Ok(Self {
            denoiser,
            vae,
            scheduler,
            vae_path,
        })
    }

    /// Where the VAE was loaded from.
    pub fn vae_path(&self) -> &Path {
        &self.vae_path
    }

    /// This model with the transformer loaded again with `loras` merged (the old transformer is
    /// dropped first, so two never share the memory); nothing is loaded when they are the
    /// LoRAs it has.
    pub fn with_loras(self, loras: &LoraSet, progress: &mut dyn Progress) -> Result<Self> {
        if self.denoiser.transformer().loras == *loras {
            return Ok(self);
        }
        let Self {
            denoiser,
            vae,
            scheduler,
            vae_path,
        } = self;
        let (path, dtype, placement) = (
            denoiser.path().to_path_buf(),
            denoiser.transformer().model.dtype(),
            denoiser.placement().clone(),
        );
        drop(denoiser);
        progress.begin(Stage::Loading, 1);
        let denoiser = Denoiser::load_on(&path, loras, dtype, &placement)?;
        progress.advance();
        progress.end();
        Ok(Self {
            denoiser,
            vae,
            scheduler,
            vae_path,
        })
    }

    /// Runs `job` with the embeddings `text` and the attention `router` (reset first), decoding
    /// into `sink` chunk by chunk.
    pub fn generate(
        &self,
        job: &Job,
        text: &Conditioning,
        router: &AttentionRouter,
        sink: &mut dyn FrameSink,
        progress: &mut dyn Progress,
    ) -> Result<Outcome> {
        let shape = job
            .settings
            .latent_shape(self.denoiser.config().in_channels);
        let noise = job.noise.noise(&shape, job.settings.renoise_steps())?;
        router.reset();
        router.take_report()?;
        let device = self.denoiser.transformer().model.device().clone();
        vdit_core::memory::reset_peak(&device)?;
        let started = Instant::now();
        let (latents, step_seconds, others) = self.denoiser.denoise_routed(
            &noise,
            text,
            &job.settings,
            &self.scheduler,
            router,
            progress,
        )?;
        let mut density = router.take_report()?;
        let mut rank_pairs = vec![density.computed()];
        for other in &others {
            rank_pairs.push(other.computed());
            density.merge(other);
        }
        let denoising_s = started.elapsed().as_secs_f64();
        if let Some(path) = &job.save_latents {
            save_tensor(path, "latents", &latents.to_device(&Device::Cpu)?)?;
        }
        let started = Instant::now();
        let writing_s = self.decode_into(&latents, sink, progress)?;
        let decoding_s = started.elapsed().as_secs_f64() - writing_s;
        Ok(Outcome {
            density,
            rank_pairs,
            step_seconds,
            peak_gpu_bytes: vdit_core::memory::peak_bytes(&device)?,
            timings: Timings {
                denoising_s,
                decoding_s,
                writing_s,
                ..Default::default()
            },
        })
    }

    /// Decodes DiT-space `latents` one latent frame at a time into `sink`; returns the seconds
    /// spent in the sink.
    fn decode_into(
        &self,
        latents: &Tensor,
        sink: &mut dyn FrameSink,
        progress: &mut dyn Progress,
    ) -> Result<f64> {
        let z = self.vae.denormalize(latents)?;
        progress.begin(Stage::Decoding, z.dim(2)?);
        let mut writing = 0.0;
        let mut sink_error = None;
        let mut interrupted = false;
        let decoded = self
            .vae
            .decode_streaming(&z, &DecodeOptions::default(), &mut |chunk| {
                let started = Instant::now();
                let pushed = sink.push(&chunk);
                writing += started.elapsed().as_secs_f64();
                pushed.map_err(|e| {
                    let message = e.to_string();
                    sink_error = Some(e);
                    candle_core::Error::Msg(message)
                })?;
                if unit_done(progress).is_err() {
                    interrupted = true;
                    return Err("interrupted".into());
                }
                Ok(())
            });
        progress.end();
        match (decoded, sink_error) {
            (_, Some(e)) => Err(Error::Sink(e)),
            (Err(_), None) if interrupted => Err(Error::Interrupted),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => Ok(writing),
        }
    }
}

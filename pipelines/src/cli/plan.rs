//! What `vdit generate` and `vdit batch` share: checking a generation against the model before
//! any heavy work, encoding prompts, and running a checked generation into a video and its
//! record.

use super::method_args::MethodName;
use super::options::{AttentionChoice, ModelArgs};
use crate::schedulers::SchedulerConfig;
use crate::t2v::{
    check_parent, check_schedule, record_path, token_grid, Component, Job, ModelIdentity,
    ModelPaths, NoiseSource, Outcome, PromptCache, PromptInput, Record, SettingOverrides, Settings,
    TextToVideo,
};
use crate::video::{FrameRate, VideoWriter};
use anyhow::Result;
use candle_core::{DType, Device};
use dit::WanConfig;
use sparse::AttentionRouter;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A model located, with its small JSON files read; no weights are touched until
/// [`ModelContext::config`] reads the transformer's headers.
pub struct ModelContext {
    /// Where its parts are.
    pub paths: ModelPaths,
    /// The scheduler settings of the model.
    pub scheduler: SchedulerConfig,
    /// The model's default generation settings.
    pub defaults: SettingOverrides,
    config: OnceCell<WanConfig>,
}

impl ModelContext {
    /// Locates the model and reads its scheduler config and default settings.
    pub fn new(args: &ModelArgs) -> Result<Self> {
        let paths = args.spec().resolve()?;
        Ok(Self {
            scheduler: paths.scheduler_config()?,
            defaults: paths.generation_defaults()?,
            config: OnceCell::new(),
            paths,
        })
    }

    /// The transformer's configuration (read once, from `config.json` or the weights' headers).
    pub fn config(&self) -> Result<&WanConfig> {
        if let Some(config) = self.config.get() {
            return Ok(config);
        }
        let (config, _) = self.paths.transformer_config()?;
        Ok(self.config.get_or_init(|| config))
    }

    /// The settings of a generation given `overrides` over the model's defaults, validated.
    pub fn settings(&self, overrides: &SettingOverrides) -> Result<Settings> {
        Ok(self.defaults.then(overrides).resolve(&self.scheduler)?)
    }

    /// Encodes `texts` with the model's text encoder (then dropped), or nothing when empty.
    pub fn encode(
        &self,
        texts: &[&str],
        dtype: DType,
        device: &Device,
        progress: &mut dyn crate::t2v::Progress,
    ) -> Result<PromptCache> {
        if texts.is_empty() {
            return Ok(PromptCache::default());
        }
        PromptCache::encode(
            self.paths.get(Component::TextEncoder)?,
            self.paths.get(Component::Tokenizer)?,
            texts,
            dtype,
            device,
            progress,
        )
    }
}

/// A generation checked against the model.
pub struct Planned {
    /// The generation.
    pub job: Job,
    /// The attention method's name.
    pub method: String,
    /// The PARO calibration file, with `--attention paro`.
    pub calibration: Option<PathBuf>,
}

impl Planned {
    /// Checks settings, prompts, attention, initial latents and output folders against the
    /// model: every error a generation can foresee, before anything heavy is loaded.
    pub fn new(
        context: &ModelContext,
        settings: Settings,
        prompts: PromptInput,
        noise: NoiseSource,
        attention: &AttentionChoice,
        save_latents: Option<PathBuf>,
    ) -> Result<Self> {
        prompts.validate()?;
        let needed = [Component::Transformer, Component::Vae];
        context.paths.require(&needed)?;
        if !prompts.texts_to_encode(settings.guided()).is_empty() {
            context
                .paths
                .require(&[Component::TextEncoder, Component::Tokenizer])?;
        }
        let schedule = attention.schedule()?;
        let config = context.config()?;
        check_schedule(&schedule, token_grid(&settings, config)?, config)?;
        if let NoiseSource::Latents(_) = noise {
            noise.initial_latents(&settings.latent_shape(config.in_channels))?;
        }
        if let Some(path) = &save_latents {
            check_parent(path)?;
        }
        let calibration = match attention.attention {
            MethodName::Paro => attention.method.paro_calibration.clone(),
            _ => None,
        };
        Ok(Self {
            job: Job {
                settings,
                prompts,
                noise,
                schedule,
                save_latents,
            },
            method: attention.name(),
            calibration,
        })
    }

    /// The texts the text encoder must encode for it.
    pub fn texts(&self) -> Vec<&str> {
        self.job.prompts.texts_to_encode(self.job.settings.guided())
    }

    /// Opens the video writer at `output` (a temporary name until the video is complete).
    pub fn open_writer(&self, output: &Path) -> Result<VideoWriter> {
        let size = self.job.settings.size;
        Ok(VideoWriter::open(
            output,
            size.width as u32,
            size.height as u32,
            FrameRate::new(self.job.settings.fps, 1)?,
        )?)
    }
}

/// A loaded model with what its records say about it.
pub struct Loaded {
    /// The model.
    pub model: TextToVideo,
    /// Its identity for the records.
    pub identity: ModelIdentity,
    /// Seconds loading took.
    pub seconds: f64,
}

impl Loaded {
    /// Loads the transformer and the VAE.
    pub fn load(
        context: &ModelContext,
        dtype: DType,
        device: &Device,
        progress: &mut dyn crate::t2v::Progress,
    ) -> Result<Self> {
        let started = Instant::now();
        let model = TextToVideo::load(&context.paths, dtype, device, progress)?;
        let identity = ModelIdentity::new(&context.paths, &model, dtype, device);
        Ok(Self {
            model,
            identity,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Runs `planned` into `writer` (opened at `output`), then writes the record next to it.
    pub fn run(
        &self,
        planned: &Planned,
        prompts: &PromptCache,
        writer: VideoWriter,
        output: &Path,
        progress: &mut dyn crate::t2v::Progress,
    ) -> Result<Outcome> {
        let job = &planned.job;
        let text = job.prompts.conditioning(
            job.settings.guided(),
            prompts,
            self.model.denoiser.config().text_dim,
        )?;
        let router = AttentionRouter::new(job.schedule.clone()).map_err(anyhow::Error::msg)?;
        let mut outcome = self.model.generate(job, &text, &router, writer, progress)?;
        outcome.timings.text_encoding_s = prompts.seconds(&planned.texts());
        outcome.timings.loading_s = prompts.loading_seconds() + self.seconds;
        Record::new(
            job,
            &outcome,
            &self.identity,
            &planned.method,
            planned.calibration.as_deref(),
        )
        .save(&record_path(output))?;
        Ok(outcome)
    }
}

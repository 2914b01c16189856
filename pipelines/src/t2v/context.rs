//! A generation from request to frames: the model located and its small files read
//! ([`ModelContext`]), a [`Job`] checked against it before any heavy work ([`Job::plan`]),
//! prompts encoded, the model loaded once ([`Loaded`]) and jobs run into frame sinks.

use crate::schedulers::SchedulerConfig;
use crate::t2v::memory::{estimate, text_encoder_parameters, MemoryNeed};
use crate::t2v::{
    check_parent, check_schedule, token_grid, Component, FrameSink, Job, ModelIdentity, ModelPaths,
    ModelSpec, NoiseSource, Outcome, Progress, PromptCache, PromptInput, SettingOverrides,
    Settings, TextToVideo,
};
use crate::Result;
use candle_core::{DType, Device};
use dit::WanConfig;
use sparse::{AttentionRouter, AttentionSchedule, ForwardKernel};
use std::cell::OnceCell;
use std::path::PathBuf;
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
    /// The text encoder's parameter count (`None` when it overflows), read once.
    text_parameters: OnceCell<Option<u64>>,
}

impl ModelContext {
    /// Locates the model and reads its scheduler config and default settings.
    pub fn new(spec: &ModelSpec) -> Result<Self> {
        let paths = spec.resolve()?;
        Ok(Self {
            scheduler: paths.scheduler_config()?,
            defaults: paths.generation_defaults()?,
            config: OnceCell::new(),
            text_parameters: OnceCell::new(),
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

    /// What a generation with `settings` needs in memory in `dtype`, the text encoder's weights
    /// included when `encodes` (its `config.json` when there is one, else umt5-xxl's sizes).
    pub fn memory_need(
        &self,
        settings: &Settings,
        encodes: bool,
        dtype: DType,
    ) -> Result<MemoryNeed> {
        let text = if encodes {
            self.text_encoder_parameters()?
        } else {
            None
        };
        estimate(settings, self.config()?, text, dtype)
    }

    /// The text encoder's parameters, from its `config.json` when there is one, else
    /// umt5-xxl's sizes (read once: a batch asks for every job).
    fn text_encoder_parameters(&self) -> Result<Option<u64>> {
        if let Some(&parameters) = self.text_parameters.get() {
            return Ok(parameters);
        }
        let config_file = self
            .paths
            .get(Component::TextEncoder)
            .ok()
            .map(|dir| dir.join("config.json"))
            .filter(|file| file.is_file());
        let config = match config_file {
            Some(file) => umt5::Umt5Config::from_file(&file)?,
            None => umt5::Umt5Config::umt5_xxl(),
        };
        Ok(*self
            .text_parameters
            .get_or_init(|| text_encoder_parameters(&config)))
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
        progress: &mut dyn Progress,
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

impl Job {
    /// Checks settings, prompts, the attention schedule, initial latents and output folders
    /// against the model: every error a generation can foresee, before anything heavy is
    /// loaded.
    pub fn plan(
        context: &ModelContext,
        settings: Settings,
        prompts: PromptInput,
        noise: NoiseSource,
        schedule: AttentionSchedule,
        save_latents: Option<PathBuf>,
    ) -> Result<Self> {
        prompts.validate()?;
        context
            .paths
            .require(&[Component::Transformer, Component::Vae])?;
        if !prompts.texts_to_encode(settings.guided()).is_empty() {
            context
                .paths
                .require(&[Component::TextEncoder, Component::Tokenizer])?;
        }
        let config = context.config()?;
        check_schedule(&schedule, token_grid(&settings, config)?, config)?;
        if let NoiseSource::Latents(_) = noise {
            noise.initial_latents(&settings.latent_shape(config.in_channels))?;
        }
        if let Some(path) = &save_latents {
            check_parent(path)?;
        }
        Ok(Self {
            settings,
            prompts,
            noise,
            schedule,
            save_latents,
        })
    }

    /// The texts the text encoder must encode for it.
    pub fn texts(&self) -> Vec<&str> {
        self.prompts.texts_to_encode(self.settings.guided())
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
    /// Forward attention kernel family on the GPU.
    pub kernel: ForwardKernel,
}

impl Loaded {
    /// Loads the transformer and the VAE.
    pub fn load(
        context: &ModelContext,
        dtype: DType,
        device: &Device,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let started = Instant::now();
        let model = TextToVideo::load(&context.paths, dtype, device, progress)?;
        let identity = ModelIdentity::new(&context.paths, &model, dtype, device);
        Ok(Self {
            model,
            identity,
            seconds: started.elapsed().as_secs_f64(),
            kernel: ForwardKernel::Auto,
        })
    }

    /// Runs `job` with its prompts from `prompts`, decoding into `sink`; the outcome's timings
    /// include this job's text encoding and the loading.
    pub fn run(
        &self,
        job: &Job,
        prompts: &PromptCache,
        sink: &mut dyn FrameSink,
        progress: &mut dyn Progress,
    ) -> Result<Outcome> {
        let text = job.prompts.conditioning(
            job.settings.guided(),
            prompts,
            self.model.denoiser.config().text_dim,
        )?;
        let router = AttentionRouter::new(job.schedule.clone()).with_kernel(self.kernel);
        let mut outcome = self.model.generate(job, &text, &router, sink, progress)?;
        outcome.timings.text_encoding_s = prompts.seconds(&job.texts());
        outcome.timings.loading_s = prompts.loading_seconds() + self.seconds;
        Ok(outcome)
    }
}

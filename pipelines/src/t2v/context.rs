//! A generation from request to frames: the model located and its small files read
//! ([`ModelContext`]), a [`Job`] checked against it before any heavy work ([`Job::plan`]),
//! prompts encoded, the model loaded once ([`Loaded`]) and jobs run into frame sinks.

use crate::error::ResultExt;
use crate::schedulers::SchedulerConfig;
use crate::t2v::memory::{estimate, text_encoder_parameters, MemoryNeed};
use crate::t2v::model::TransformerInfo;
use crate::t2v::parallel::Placement;
use crate::t2v::{
    check_parent, check_schedule, token_grid, Component, FrameSink, Job, ModelIdentity, ModelPaths,
    ModelSpec, NoiseSource, Outcome, Progress, PromptCache, PromptInput, SettingOverrides,
    Settings, TextToVideo,
};
use crate::Result;
use candle_core::{DType, Device};
use dit::{LoraSet, WanConfig};
use sparse::{AttentionRouter, AttentionSchedule, ForwardKernel, MethodSpec};
use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;
use std::time::Instant;

/// The VSA sparsity a transformer trained with VSA runs at by default (FastVideo's FastWan
/// inference setting).
pub const VSA_TRAINED_SPARSITY: f64 = 0.8;

/// A model located, with its small JSON files read; no weights are touched until
/// [`ModelContext::config`] reads the transformer's headers.
pub struct ModelContext {
    /// Where its parts are.
    pub paths: ModelPaths,
    /// The scheduler settings of the model.
    pub scheduler: SchedulerConfig,
    /// The model's default generation settings.
    pub defaults: SettingOverrides,
    /// The attention method the model's `generation_config.json` names, if any.
    default_attention: Option<MethodSpec>,
    /// What the transformer's headers say, read once.
    transformer: OnceCell<TransformerInfo>,
    /// The text encoder's parameter count (`None` when it overflows), read once.
    text_parameters: OnceCell<Option<u64>>,
    /// LoRA sets found to fit the transformer.
    checked_loras: RefCell<Vec<LoraSet>>,
}

impl ModelContext {
    /// Locates the model and reads its scheduler config and default settings.
    pub fn new(spec: &ModelSpec) -> Result<Self> {
        let paths = spec.resolve()?;
        let (defaults, attention) = paths.generation_defaults()?;
        let default_attention = match attention {
            Some(text) => Some(
                text.parse::<MethodSpec>()
                    .context("the attention of the model's generation_config.json")?,
            ),
            None => None,
        };
        Ok(Self {
            scheduler: paths.scheduler_config()?,
            defaults,
            default_attention,
            transformer: OnceCell::new(),
            text_parameters: OnceCell::new(),
            checked_loras: RefCell::new(Vec::new()),
            paths,
        })
    }

    /// The transformer's configuration (read once, from `config.json` or the weights' headers).
    pub fn config(&self) -> Result<&WanConfig> {
        Ok(&self.transformer_info()?.config)
    }

    /// What the transformer's headers say (read once).
    fn transformer_info(&self) -> Result<&TransformerInfo> {
        if let Some(info) = self.transformer.get() {
            return Ok(info);
        }
        let info = self.paths.transformer_config()?;
        Ok(self.transformer.get_or_init(|| info))
    }

    /// The attention of a run: `given` when the method was named, else the model's default
    /// (its `generation_config.json`'s `attention`, else VSA at sparsity [`VSA_TRAINED_SPARSITY`]
    /// for a transformer trained with VSA's gates, else dense) with `given`'s option values
    /// over the default's.
    pub fn attention(&self, given: &MethodSpec, named: bool) -> Result<MethodSpec> {
        if named {
            return Ok(given.clone());
        }
        let default = match &self.default_attention {
            Some(spec) => spec.clone(),
            None if self.transformer_info()?.vsa_gates => {
                let mut vsa = MethodSpec::named("vsa");
                vsa.options
                    .set("sparsity", VSA_TRAINED_SPARSITY.to_string());
                vsa
            }
            None => return Ok(given.clone()),
        };
        Ok(MethodSpec {
            name: default.name,
            options: default.options.then(&given.options),
        })
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

    /// Checks that every LoRA of `loras` fits the transformer (headers only, once per set).
    fn check_loras(&self, loras: &LoraSet) -> Result<()> {
        if loras.is_empty() {
            return Ok(());
        }
        let mut checked = self.checked_loras.borrow_mut();
        if !checked.contains(loras) {
            dit::lora::check(loras, self.paths.get(Component::Transformer)?)?;
            checked.push(loras.clone());
        }
        Ok(())
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
        loras: LoraSet,
    ) -> Result<Self> {
        prompts.validate()?;
        context
            .paths
            .require(&[Component::Transformer, Component::Vae])?;
        context.check_loras(&loras)?;
        if !prompts.texts_to_encode(settings.guided()).is_empty() {
            context
                .paths
                .require(&[Component::TextEncoder, Component::Tokenizer])?;
        }
        let config = context.config()?;
        check_schedule(&schedule, token_grid(&settings, config)?, config)?;
        if let NoiseSource::Latents(_) = noise {
            noise.noise(
                &settings.latent_shape(config.in_channels),
                settings.renoise_steps(),
            )?;
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
            loras,
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
    /// Time every attention call (the device synchronised around each), reported in the
    /// outcome's density report.
    pub time_attention: bool,
}

impl Loaded {
    /// Loads the transformer (with `loras` merged) and the VAE.
    pub fn load(
        context: &ModelContext,
        loras: &LoraSet,
        dtype: DType,
        device: &Device,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        Self::load_on(context, loras, dtype, &Placement::single(device), progress)
    }

    /// [`Loaded::load`] with the transformer on every device of `placement` (the VAE on rank
    /// 0's).
    pub fn load_on(
        context: &ModelContext,
        loras: &LoraSet,
        dtype: DType,
        placement: &Placement,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let started = Instant::now();
        let model = TextToVideo::load(&context.paths, loras, dtype, placement, progress)?;
        let device = placement.main();
        let identity = ModelIdentity::new(&context.paths, &model, dtype, device);
        Ok(Self {
            model,
            identity,
            seconds: started.elapsed().as_secs_f64(),
            kernel: ForwardKernel::Auto,
            time_attention: false,
        })
    }

    /// This model with the transformer's LoRAs set to `loras` (loaded again only when they
    /// change); the loading time is added to [`Loaded::seconds`].
    pub fn with_loras(self, loras: &LoraSet, progress: &mut dyn Progress) -> Result<Self> {
        let started = Instant::now();
        let model = self.model.with_loras(loras, progress)?;
        Ok(Self {
            model,
            seconds: self.seconds + started.elapsed().as_secs_f64(),
            ..self
        })
    }

    /// LoRA keys left out as `--lora-lenient` allows (`FILE: KEY`).
    pub fn lora_ignored(&self) -> &[String] {
        &self.model.denoiser.transformer().lora_ignored
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
        if self.model.denoiser.transformer().loras != job.loras {
            crate::error::fail!(
                Usage,
                "the job asks for other LoRAs than the loaded transformer has: load them first \
                 (Loaded::with_loras)"
            );
        }
        let router = AttentionRouter::new(job.schedule.clone())
            .with_kernel(self.kernel)
            .with_timing(self.time_attention);
        let mut outcome = self.model.generate(job, &text, &router, sink, progress)?;
        outcome.timings.text_encoding_s = prompts.seconds(&job.texts());
        outcome.timings.loading_s = prompts.loading_seconds() + self.seconds;
        Ok(outcome)
    }
}

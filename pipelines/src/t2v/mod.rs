//! Text to video with Wan 2.1, following diffusers' `WanPipeline`.
//!
//! A generation runs in this order, each stage only after everything before it was checked:
//! 1. [`Settings`] are resolved (Wan's defaults, the model's `generation_config.json`, flags)
//!    and validated, the attention schedule is checked against the token grid
//!    ([`check_schedule`]), the model's parts are located ([`ModelSpec::resolve`]) and the
//!    output opened under a temporary name;
//! 2. the prompt and negative prompt are encoded ([`PromptCache::encode`]), after which the
//!    text encoder is dropped and its memory freed, or embeddings are read from files;
//! 3. the transformer and the VAE are loaded ([`TextToVideo::load`]), the transformer on every
//!    GPU of a multi-GPU run ([`parallel`]);
//! 4. initial noise comes from the seed ([`noise`], drawn on the CPU so it does not depend on
//!    the device) or from a latents file, and the scheduler's loop runs the transformer with the
//!    prompt and negative prompt as one batch of 2 ([`Denoiser::denoise`]), or split over the
//!    GPUs ([`Denoiser::denoise_routed`]);
//! 5. the VAE decodes one latent frame at a time straight into the video writer, and the
//!    [`Record`] is written next to the video.

mod attention;
mod context;
mod files;
mod memory;
mod model;
pub mod noise;
pub mod parallel;
mod pipeline;
mod progress;
mod prompts;
mod record;
mod resume;
mod settings;
mod sink;

pub use attention::{check_schedule, token_grid};
pub use context::{Loaded, ModelContext, VSA_TRAINED_SPARSITY};
pub use files::{check_parent, read_tensor, save_tensor, save_text};
pub use memory::{check_fits, estimate as estimate_memory, MemoryNeed};
pub use model::{
    default_model_folder, Component, Located, ModelPaths, ModelSpec, TransformerInfo,
    DEFAULT_MODEL_ENV, DMD_PIPELINE_CLASS,
};
pub use parallel::ParallelPlan;
pub use pipeline::{Denoiser, Job, Noise, NoiseSource, Outcome, TextToVideo, Timings};
pub use progress::{Progress, Silent, Stage};
pub use prompts::{trim_padding, Conditioning, PromptCache, PromptInput};
pub use record::{device_name, layout_name, record_path, ModelIdentity, Record};
pub use resume::{output_bytes, output_state, OutputState};
pub use settings::{
    parse_timesteps, Sampler, SettingOverrides, Settings, SettingsError, Size, SIZE_MULTIPLE,
    VAE_SPATIAL, VAE_TEMPORAL,
};
pub use sink::{FrameSink, SinkError};

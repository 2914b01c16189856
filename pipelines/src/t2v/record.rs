//! The JSON record written next to every video (`VIDEO.json`): what was asked, with which model
//! and attention, the density attention computed and the time each stage took.

use crate::t2v::files::save_text;
use crate::t2v::model::{Located, ModelPaths};
use crate::t2v::parallel::Placement;
use crate::t2v::pipeline::{Job, NoiseSource, Outcome, TextToVideo, Timings};
use crate::t2v::prompts::PromptInput;
use crate::t2v::settings::Settings;
use crate::Result;
use candle_core::{DType, Device};
use dit::{KeyLayout, LoraSet};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The record of one generation.
#[derive(Serialize)]
pub struct Record {
    /// vdit's version.
    pub vdit_version: &'static str,
    /// The job's fingerprint ([`Job::fingerprint`]): a re-run skips the job only while it is
    /// unchanged and the video still has the size in `output.bytes`.
    pub fingerprint: String,
    /// The video written.
    pub output: Value,
    /// Prompt and negative prompt (texts or embedding files).
    #[serde(flatten)]
    pub prompts: PromptInput,
    /// The seed of the initial noise (`None` when latents were given).
    pub seed: Option<u64>,
    /// The file the initial latents came from, if any.
    pub latents_file: Option<PathBuf>,
    /// Where the denoised latents were saved, if anywhere.
    pub saved_latents: Option<PathBuf>,
    /// Every generation setting.
    pub settings: Settings,
    /// The model: paths, layouts, configurations, dtype and device.
    pub model: Value,
    /// The LoRAs merged into the transformer.
    #[serde(skip_serializing_if = "LoraSet::is_empty")]
    pub loras: LoraSet,
    /// The attention schedule and the density it computed.
    pub attention: Value,
    /// Most GPU memory in use at once during the generation (GiB; `None` on the CPU).
    pub peak_gpu_gib: Option<f64>,
    /// Seconds per stage (and of each denoising step) and in all.
    pub timings: Value,
}

impl Record {
    /// The record of `job`, run by `model` as `outcome`, written to the video `output` describes
    /// (its path, bytes, frames, size, frame rate and encoding).
    pub fn new(job: &Job, outcome: &Outcome, model: &ModelIdentity, output: Value) -> Self {
        let (seed, latents_file) = match &job.noise {
            NoiseSource::Seed(seed) => (Some(*seed), None),
            NoiseSource::Latents(path) => (None, Some(path.clone())),
        };
        let Timings {
            text_encoding_s,
            loading_s,
            denoising_s,
            decoding_s,
            writing_s,
        } = outcome.timings;
        Self {
            vdit_version: env!("CARGO_PKG_VERSION"),
            fingerprint: job.fingerprint(&model.paths),
            output,
            prompts: job.prompts.clone(),
            seed,
            latents_file,
            saved_latents: job.save_latents.clone(),
            settings: job.settings.clone(),
            model: model.json.clone(),
            loras: job.loras.clone(),
            attention: json!({
                "method": job.schedule.default.name(),
                "calibration_file": job.schedule.default.calibration_file(),
                "schedule": job.schedule.describe(),
                "density": {
                    "overall": outcome.density.overall(),
                    "per_layer": outcome.density.layer_densities(),
                },
                "pairs_per_rank": (outcome.rank_pairs.len() > 1).then_some(&outcome.rank_pairs),
            }),
            peak_gpu_gib: outcome.peak_gpu_bytes.map(vdit_core::memory::gib),
            timings: json!({
                "denoising_steps_s": outcome.step_seconds,
                "text_encoding_s": text_encoding_s,
                "loading_s": loading_s,
                "denoising_s": denoising_s,
                "decoding_s": decoding_s,
                "writing_s": writing_s,
                "total_s": text_encoding_s + loading_s + denoising_s + decoding_s + writing_s,
            }),
        }
    }

    /// Writes the record as pretty JSON to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_text(path, &(serde_json::to_string_pretty(self)? + "\n"))
    }
}

/// Where a video's record goes: the output path with `.json` appended (`kite.mp4.json`; a
/// PNG frame folder `frames/` gets `frames.json`).
pub fn record_path(output: &Path) -> PathBuf {
    let trimmed = output
        .to_string_lossy()
        .trim_end_matches(std::path::MAIN_SEPARATOR)
        .to_string();
    PathBuf::from(format!("{trimmed}.json"))
}

/// The identity of a loaded model as JSON, computed once per load, and where its parts are.
#[derive(Clone, Debug)]
pub struct ModelIdentity {
    json: Value,
    paths: ModelPaths,
}

impl ModelIdentity {
    /// Paths, key layout and configuration of the transformer, the VAE's configuration, the
    /// text parts' paths, and where and how the model runs.
    pub fn new(paths: &ModelPaths, model: &TextToVideo, dtype: DType, device: &Device) -> Self {
        let transformer = model.denoiser.transformer();
        let c = &transformer.config;
        let v = model.vae.config();
        let path_of = |l: &Located| match l {
            Located::Found(p) => Some(p.clone()),
            Located::Missing(_) => None,
        };
        let json = json!({
            "folder": paths.folder,
            "transformer": {
                "path": model.denoiser.path(),
                "layout": layout_name(&transformer.layout),
                "config_file": transformer.config_file,
                "config": {
                    "patch_size": c.patch_size, "num_heads": c.num_heads, "head_dim": c.head_dim,
                    "in_channels": c.in_channels, "out_channels": c.out_channels,
                    "text_dim": c.text_dim, "freq_dim": c.freq_dim, "ffn_dim": c.ffn_dim,
                    "num_layers": c.num_layers, "cross_attn_norm": c.cross_attn_norm, "eps": c.eps,
                },
            },
            "vae": {
                "path": model.vae_path(),
                "config": {
                    "base_dim": v.base_dim, "decoder_base_dim": v.decoder_base_dim,
                    "z_dim": v.z_dim, "dim_mult": v.dim_mult, "num_res_blocks": v.num_res_blocks,
                },
            },
            "text_encoder": path_of(&paths.text_encoder),
            "tokenizer": path_of(&paths.tokenizer),
            "scheduler_config": paths.scheduler_config,
            "generation_config": paths.generation_config,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "device": device_name(device),
            "parallel": parallel_json(model.denoiser.placement()),
        });
        Self {
            json,
            paths: paths.clone(),
        }
    }
}

/// The devices and split of a multi-device run (`null` on one device).
fn parallel_json(placement: &Placement) -> Value {
    if placement.plan.devices == 1 {
        return Value::Null;
    }
    let devices: Vec<String> = placement.devices.iter().map(device_name).collect();
    json!({
        "devices": devices,
        "sequence_parallel": placement.plan.sequence,
        "guidance_parallel": placement.plan.guidance_split,
    })
}

/// `diffusers`, `original`, or `original (prefix ...)`.
pub fn layout_name(layout: &KeyLayout) -> String {
    match layout {
        KeyLayout::Diffusers => "diffusers".to_string(),
        KeyLayout::Original { prefix } if prefix.is_empty() => "original".to_string(),
        KeyLayout::Original { prefix } => format!("original (prefix `{prefix}`)"),
    }
}

/// `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records sit next to their video, folders included.
    #[test]
    fn record_paths() {
        assert_eq!(
            record_path(Path::new("out/kite.mp4")),
            Path::new("out/kite.mp4.json")
        );
        assert_eq!(record_path(Path::new("frames/")), Path::new("frames.json"));
    }
}

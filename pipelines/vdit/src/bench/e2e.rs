//! `vdit bench e2e`: whole generations, as a user runs them, on a full-size pipeline folder made by
//! `pipelines/vdit/bench/make_random_wan.py` (random weights, initial latents and prompt
//! embeddings in `inputs.safetensors`): the model loaded once, then one generation per attention
//! spec, each timed per stage (loading, every denoising step, decoding, writing) with its peak
//! GPU memory, its final latents compared with diffusers' (`e2e_diffusers.py` writes them as
//! `diffusers_latents.safetensors` in the output folder).

use super::median;
use crate::render::{open_writer, render};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use dit::LoraSet;
use pipelines::t2v::{
    output_state, read_tensor, Job, Loaded, ModelContext, ModelSpec, NoiseSource, OutputState,
    PromptCache, PromptInput, SettingOverrides, Silent,
};
use serde_json::json;
use sparse::{MethodSpec, Registry};
use std::path::Path;
use vdit_core::memory::gib;
use vdit_core::metrics::relative_l2;

/// The inputs file of a pipeline folder: `latents`, `prompt_embeds`, `negative_prompt_embeds`.
const INPUTS: &str = "inputs.safetensors";
/// diffusers' final latents for the same inputs, in the output folder.
const DIFFUSERS_LATENTS: &str = "diffusers_latents.safetensors";

/// Runs one generation per spec of `specs` with the pipeline at `model` into `out`; returns a
/// row per generation.
pub fn run(
    model: &Path,
    settings: &SettingOverrides,
    specs: &[MethodSpec],
    registry: &Registry,
    (device, dtype): (&Device, DType),
    out: &Path,
) -> Result<Vec<serde_json::Value>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let context = ModelContext::new(&ModelSpec {
        folder: Some(model.to_path_buf()),
        ..Default::default()
    })?;
    let settings = context.settings(settings)?;
    let inputs = model.join(INPUTS);
    let prompts = PromptInput {
        prompt_embeds: Some(inputs.clone()),
        negative_prompt_embeds: Some(inputs.clone()),
        ..Default::default()
    };
    let reference = out.join(DIFFUSERS_LATENTS);
    let reference = if reference.is_file() {
        Some(read_tensor(&reference, "latents")?)
    } else {
        None
    };
    let loaded = Loaded::load(&context, &LoraSet::default(), dtype, device, &mut Silent)?;
    let mut rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let label = spec.to_string();
        let name: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let latents = out.join(format!("latents-{i}-{name}.safetensors"));
        let job = Job::plan(
            &context,
            settings.clone(),
            prompts.clone(),
            NoiseSource::Latents(inputs.clone()),
            registry.schedule(spec)?,
            Some(latents.clone()),
            LoraSet::default(),
        )?;
        let video = out.join(format!("e2e-{i}-{name}.y4m"));
        // A benchmark's own outputs from an earlier run are replaced; anything else is refused.
        if let OutputState::Foreign(reason) = output_state(&video, "") {
            anyhow::bail!(reason);
        }
        let writer = open_writer(&job, &video, true)?;
        let (outcome, _) = render(
            &loaded,
            &job,
            &PromptCache::default(),
            writer,
            &video,
            &mut Silent,
        )?;
        let l2 = match &reference {
            Some(reference) => Some(relative_l2(&read_tensor(&latents, "latents")?, reference)?),
            None => None,
        };
        let t = outcome.timings;
        let steps = &outcome.step_seconds;
        let row = json!({
            "attention": label,
            "size": settings.size, "frames": settings.frames, "steps": settings.steps,
            "guidance": settings.guidance,
            "loading_s": t.loading_s,
            "first_step_s": steps.first(),
            "step_s_median": median(steps),
            "denoising_s": t.denoising_s,
            "decoding_s": t.decoding_s,
            "writing_s": t.writing_s,
            "generation_s": t.denoising_s + t.decoding_s + t.writing_s,
            "density": outcome.density.overall(),
            "peak_gib": outcome.peak_gpu_bytes.map(gib),
            "rel_l2_vs_diffusers": l2,
        });
        say!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

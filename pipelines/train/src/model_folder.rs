//! Writing what training makes as a model folder the engine loads like any diffusers Wan
//! pipeline: `model_index.json`, `scheduler/`, `vae/`, `text_encoder/`, `tokenizer/`,
//! `transformer/` and vdit's `generation_config.json`. A folder is assembled beside its target
//! and renamed into place; an existing target is replaced only when vdit's training made it.

use crate::error::{Error, Result};
use crate::recipe;
use candle_core::{DType, Tensor};
use dit::WanConfig;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use umt5::Umt5Config;
use vae::VaeConfig;

/// Key of `model_index.json` that marks a folder written by vdit's training.
const MARKER: &str = "_vdit_trained";

/// A model's weights by name and the JSON config beside them.
pub struct Part<'a> {
    /// The part's `config.json`.
    pub config: Value,
    /// Its weights (stored in [`recipe::SHIPPED_DTYPE`]).
    pub weights: &'a BTreeMap<String, Tensor>,
}

/// The base every trained model folder shares: the VAE, the text encoder and its tokenizer.
pub struct Base<'a> {
    /// The VAE.
    pub vae: Part<'a>,
    /// The text encoder.
    pub text_encoder: Part<'a>,
    /// The tokenizer's words, in id order.
    pub words: &'a [String],
}

/// The VAE part of `config` with `weights`.
pub fn vae_part<'a>(config: &VaeConfig, weights: &'a BTreeMap<String, Tensor>) -> Part<'a> {
    Part {
        config: recipe::vae_config_json(config),
        weights,
    }
}

/// The text encoder part of `config` with `weights`.
pub fn text_part<'a>(config: &Umt5Config, weights: &'a BTreeMap<String, Tensor>) -> Part<'a> {
    Part {
        config: recipe::text_config_json(config),
        weights,
    }
}

/// The transformer part of `config` with `weights`.
pub fn transformer_part<'a>(config: &WanConfig, weights: &'a BTreeMap<String, Tensor>) -> Part<'a> {
    Part {
        config: recipe::dit_config_json(config),
        weights,
    }
}

/// What the folder's `model_index.json` records about its making (free-form).
pub type Provenance = Value;

/// Writes a model folder at `dir`: the base, and the transformer when given (without one the
/// folder is a base for `vdit train dit`). `generation` is its `generation_config.json`.
pub fn write(
    dir: &Path,
    base: &Base<'_>,
    transformer: Option<&Part<'_>>,
    generation: &Value,
    provenance: Provenance,
) -> Result<()> {
    check_replaceable(dir)?;
    let staging = sibling(dir, "partial");
    if staging.exists() {
        check_replaceable(&staging)?;
        remove(&staging)?;
    }
    let mut index = recipe::model_index_json();
    index[MARKER] = provenance;
    write_json(&staging.join("model_index.json"), &index)?;
    write_json(&staging.join("generation_config.json"), generation)?;
    write_json(
        &staging.join("scheduler").join("scheduler_config.json"),
        &recipe::scheduler_config_json(crate::recipe::FLOW_SHIFT),
    )?;
    write_json(
        &staging.join("tokenizer").join("tokenizer.json"),
        &recipe::tokenizer_json(base.words),
    )?;
    write_part(
        &staging.join("vae"),
        &base.vae,
        "diffusion_pytorch_model.safetensors",
    )?;
    write_part(
        &staging.join("text_encoder"),
        &base.text_encoder,
        "model.safetensors",
    )?;
    if let Some(transformer) = transformer {
        write_part(
            &staging.join("transformer"),
            transformer,
            "diffusion_pytorch_model.safetensors",
        )?;
    }
    if dir.exists() {
        let old = sibling(dir, "old");
        if old.exists() {
            remove(&old)?;
        }
        std::fs::rename(dir, &old).map_err(|e| Error::io("replace", dir, e))?;
        std::fs::rename(&staging, dir).map_err(|e| Error::io("write", dir, e))?;
        remove(&old)
    } else {
        std::fs::rename(&staging, dir).map_err(|e| Error::io("write", dir, e))
    }
}

/// Whether `dir` is a model folder vdit's training wrote.
pub fn is_trained_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("model_index.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|index| index.get(MARKER).is_some())
}

/// Refuses a `dir` that exists and was not written by vdit's training.
fn check_replaceable(dir: &Path) -> Result<()> {
    if dir.exists() && !is_trained_folder(dir) {
        return Err(Error::Usage(format!(
            "{} exists and was not written by vdit train; choose another --out or move it away",
            dir.display()
        )));
    }
    Ok(())
}

/// `dir` with `.suffix` appended to its name.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn remove(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::io("write", path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io("write", path, e))
}

fn write_part(dir: &Path, part: &Part<'_>, file: &str) -> Result<()> {
    write_json(&dir.join("config.json"), &part.config)?;
    let tensors = part
        .weights
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.to_dtype(recipe::SHIPPED_DTYPE)?
                    .to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect::<Result<HashMap<String, Tensor>>>()?;
    let path = dir.join(file);
    candle_core::safetensors::save(&tensors, &path).map_err(|e| Error::io("write", &path, e))
}

/// Reads a part's weights (any dtype) as f32 tensors by name.
pub fn read_weights(file: &Path) -> Result<BTreeMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .map_err(|e| Error::io("read", file, e))?;
    tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect()
}

//! Loading a transformer from a folder or file in either key layout.

use crate::config::WanConfig;
use crate::error::Error;
use crate::layout::KeyLayout;
use crate::lora::{LoraMerge, LoraSet};
use crate::model::WanTransformer;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdit_core::weights::{Checkpoint, WeightPatch};

/// A loaded transformer and what was learned about its files.
pub struct LoadedTransformer {
    /// The model.
    pub model: WanTransformer,
    /// Its configuration.
    pub config: WanConfig,
    /// Key layout of the files.
    pub layout: KeyLayout,
    /// Where the configuration came from (`None`: inferred from the weights).
    pub config_file: Option<PathBuf>,
    /// The LoRAs merged into the weights.
    pub loras: LoraSet,
    /// LoRA keys left out because they match no weight (`FILE: KEY`, with `lenient`).
    pub lora_ignored: Vec<String>,
}

/// Loads a Wan transformer from a folder (diffusers `transformer/` or an original release
/// folder) or a single safetensors file, with the LoRAs of `loras` merged into its weights.
/// The config comes from `config.json` beside the weights when there is one, else it is
/// inferred from the weight shapes (head dim 128).
pub fn load_transformer(
    path: &Path,
    loras: &LoraSet,
    dtype: DType,
    device: &Device,
) -> Result<LoadedTransformer, Error> {
    let checkpoint = Arc::new(Checkpoint::open(path)?);
    let layout = KeyLayout::detect(&checkpoint)?;
    let (config, config_file) = read_config(path, &checkpoint, &layout)?;
    let merge = match loras.is_empty() {
        true => None,
        false => Some(Arc::new(LoraMerge::plan(loras, &checkpoint, &layout)?)),
    };
    let patch = merge.clone().map(|m| m as Arc<dyn WeightPatch>);
    let vb = checkpoint.patched_var_builder(layout.rename(), patch, dtype, device);
    let model = WanTransformer::new(&config, vb)?;
    if let Some(merge) = &merge {
        merge.check_all_merged()?;
    }
    Ok(LoadedTransformer {
        model,
        config,
        layout,
        config_file,
        loras: loras.clone(),
        lora_ignored: merge.map(|m| m.ignored().to_vec()).unwrap_or_default(),
    })
}

/// The configuration of the transformer at `path` (a folder or a file in it): `config.json`
/// beside the weights when there is one (its path returned too), else inferred from
/// `checkpoint`'s shapes.
pub fn read_config(
    path: &Path,
    checkpoint: &Checkpoint,
    layout: &KeyLayout,
) -> Result<(WanConfig, Option<PathBuf>), Error> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let config_path = dir.join("config.json");
    if config_path.is_file() {
        Ok((WanConfig::from_file(&config_path)?, Some(config_path)))
    } else {
        Ok((infer_config(checkpoint, layout)?, None))
    }
}

/// Reads the hyper-parameters off the weight shapes; assumes head dim 128 (all Wan 2.1 sizes).
pub fn infer_config(checkpoint: &Checkpoint, layout: &KeyLayout) -> Result<WanConfig, Error> {
    let rename = layout.rename();
    let shape = |name: &str| -> Result<Vec<usize>, Error> {
        let key = rename(name);
        checkpoint.shape(&key).ok_or_else(|| {
            Error::Layout(format!(
                "no config.json beside {} and weight `{key}` is missing, so the model size cannot be inferred",
                checkpoint.origin().display()
            ))
        })
    };
    let patch = shape("patch_embedding.weight")?;
    let [dim, in_channels, pt, ph, pw] = patch[..] else {
        return Err(Error::Layout(format!(
            "patch_embedding.weight has shape {patch:?}, expected 5 dims"
        )));
    };
    let freq_dim = shape("condition_embedder.time_embedder.linear_1.weight")?[1];
    let text_dim = shape("condition_embedder.text_embedder.linear_1.weight")?[1];
    let ffn_dim = shape("blocks.0.ffn.net.0.proj.weight")?[0];
    let out_channels = shape("proj_out.weight")?[0] / (pt * ph * pw);
    let num_layers = (0..)
        .take_while(|i| checkpoint.contains(&rename(&format!("blocks.{i}.attn1.to_q.weight"))))
        .count();
    const HEAD_DIM: usize = 128;
    if dim % HEAD_DIM != 0 {
        return Err(Error::Layout(format!(
            "no config.json beside {}: hidden size {dim} is not a multiple of 128, so the head \
             count cannot be inferred; add a config.json",
            checkpoint.origin().display()
        )));
    }
    let config = WanConfig {
        patch_size: [pt, ph, pw],
        num_heads: dim / HEAD_DIM,
        head_dim: HEAD_DIM,
        in_channels,
        out_channels,
        text_dim,
        freq_dim,
        ffn_dim,
        num_layers,
        cross_attn_norm: checkpoint.contains(&rename("blocks.0.norm2.weight")),
        eps: 1e-6,
    };
    config.validate()?;
    Ok(config)
}

//! `vdit inspect`: what a transformer checkpoint is.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;

/// Arguments of `vdit inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Transformer weights: a diffusers `transformer/` folder, an original-release folder, or a
    /// .safetensors file.
    pub transformer: PathBuf,
}

/// Loads the transformer (memory-mapped, bf16) and prints its layout and configuration as JSON.
pub fn run(args: InspectArgs) -> Result<()> {
    let loaded = dit::load_transformer(
        &args.transformer,
        &dit::LoraSet::default(),
        DType::BF16,
        &Device::Cpu,
    )
    .with_context(|| {
        format!(
            "cannot load the transformer from {}",
            args.transformer.display()
        )
    })?;
    let parameters = vdit_core::Checkpoint::open(&args.transformer)?.num_parameters();
    let c = &loaded.config;
    let layout = pipelines::t2v::layout_name(&loaded.layout);
    let report = serde_json::json!({
        "path": args.transformer,
        "layout": layout,
        "config_source": loaded.config_file.as_ref().map(|p| p.display().to_string())
            .unwrap_or_else(|| "inferred from weight shapes".to_string()),
        "heads": c.num_heads,
        "head_dim": c.head_dim,
        "dim": c.dim(),
        "ffn_dim": c.ffn_dim,
        "layers": c.num_layers,
        "text_dim": c.text_dim,
        "patch_size": c.patch_size,
        "parameters": parameters,
        "vsa_gate": loaded.model.blocks().iter().any(|b| b.has_gate()),
    });
    say!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

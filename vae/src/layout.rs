//! The two key layouts Wan VAE checkpoints come in, and the renaming between them.
//!
//! Model code asks for diffusers `AutoencoderKLWan` names. The original release
//! (`Wan2.1_VAE.pth`, usually converted to safetensors) names the same tensors differently:
//! `encoder.conv1`, `encoder.downsamples.N`, `decoder.upsamples.N` (one flat list per decoder),
//! `middle.0/1/2`, `head.0/2`, `residual.0/2/3/6` inside residual blocks, and `conv1`/`conv2`
//! for the quantisation convs.

use crate::error::Error;
use vdit_core::weights::{Checkpoint, KeyRename};

/// Naming convention of a VAE checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// diffusers `AutoencoderKLWan` names.
    Diffusers,
    /// The original Wan release's names.
    Original,
}

const DIFFUSERS_PROBE: &str = "decoder.conv_in.weight";
const ORIGINAL_PROBE: &str = "decoder.conv1.weight";

impl KeyLayout {
    /// Detects the layout from the stored keys.
    pub fn detect(checkpoint: &Checkpoint) -> Result<Self, Error> {
        if checkpoint.contains(DIFFUSERS_PROBE) {
            Ok(Self::Diffusers)
        } else if checkpoint.contains(ORIGINAL_PROBE) {
            Ok(Self::Original)
        } else {
            Err(Error::Layout(format!(
                "the weights in {} are not a Wan VAE: found neither `{DIFFUSERS_PROBE}` \
                 (diffusers layout) nor `{ORIGINAL_PROBE}` (original layout)",
                checkpoint.origin().display()
            )))
        }
    }

    /// The renaming from diffusers names to this layout's stored names; the original layout's
    /// flat decoder list depends on `num_res_blocks`.
    pub fn rename(self, num_res_blocks: usize) -> KeyRename {
        match self {
            Self::Diffusers => Box::new(str::to_string),
            Self::Original => Box::new(move |name| original_name(name, num_res_blocks)),
        }
    }
}

/// Rewrites a diffusers VAE key into the original release's name (unknown keys unchanged).
pub fn original_name(name: &str, num_res_blocks: usize) -> String {
    name.rsplit_once('.')
        .and_then(|(module, param)| {
            let parts: Vec<&str> = module.split('.').collect();
            let renamed = original_module(&parts, num_res_blocks)?;
            Some(format!("{renamed}.{param}"))
        })
        .unwrap_or_else(|| name.to_string())
}

fn original_module(parts: &[&str], num_res_blocks: usize) -> Option<String> {
    // each decoder stage holds num_res_blocks + 1 residual blocks, then one upsampler slot
    let flat = |stage: &str, offset: usize| -> Option<usize> {
        Some(stage.parse::<usize>().ok()? * (num_res_blocks + 2) + offset)
    };
    Some(match parts {
        ["quant_conv"] => "conv1".to_string(),
        ["post_quant_conv"] => "conv2".to_string(),
        [coder, "conv_in"] => format!("{coder}.conv1"),
        [coder, "norm_out"] => format!("{coder}.head.0"),
        [coder, "conv_out"] => format!("{coder}.head.2"),
        [coder, "mid_block", "resnets", i, leaf] => {
            let slot = if *i == "0" { 0 } else { 2 };
            format!("{coder}.middle.{slot}.{}", residual_leaf(leaf))
        }
        [coder, "mid_block", "attentions", "0", rest @ ..] => {
            format!("{coder}.middle.1.{}", rest.join("."))
        }
        ["encoder", "down_blocks", n, leaf] => {
            format!("encoder.downsamples.{n}.{}", residual_leaf(leaf))
        }
        ["encoder", "down_blocks", n, rest @ ..] => {
            format!("encoder.downsamples.{n}.{}", rest.join("."))
        }
        ["decoder", "up_blocks", stage, "resnets", j, leaf] => {
            let index = flat(stage, j.parse().ok()?)?;
            format!("decoder.upsamples.{index}.{}", residual_leaf(leaf))
        }
        ["decoder", "up_blocks", stage, "upsamplers", "0", rest @ ..] => {
            let index = flat(stage, num_res_blocks + 1)?;
            format!("decoder.upsamples.{index}.{}", rest.join("."))
        }
        _ => return None,
    })
}

/// Original names of a residual block's layers (its `residual` Sequential and `shortcut`).
fn residual_leaf(leaf: &str) -> &str {
    match leaf {
        "norm1" => "residual.0",
        "conv1" => "residual.2",
        "norm2" => "residual.3",
        "conv2" => "residual.6",
        "conv_shortcut" => "shortcut",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::original_name;

    #[test]
    fn diffusers_names_map_to_original_names() {
        let cases = [
            ("quant_conv.weight", "conv1.weight"),
            ("post_quant_conv.bias", "conv2.bias"),
            ("encoder.conv_in.weight", "encoder.conv1.weight"),
            ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
            ("encoder.conv_out.bias", "encoder.head.2.bias"),
            (
                "encoder.mid_block.resnets.1.norm2.gamma",
                "encoder.middle.2.residual.3.gamma",
            ),
            (
                "decoder.mid_block.attentions.0.to_qkv.weight",
                "decoder.middle.1.to_qkv.weight",
            ),
            (
                "encoder.down_blocks.4.conv_shortcut.weight",
                "encoder.downsamples.4.shortcut.weight",
            ),
            (
                "encoder.down_blocks.5.resample.1.weight",
                "encoder.downsamples.5.resample.1.weight",
            ),
            (
                "encoder.down_blocks.8.time_conv.bias",
                "encoder.downsamples.8.time_conv.bias",
            ),
            (
                "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
                "decoder.upsamples.4.shortcut.bias",
            ),
            (
                "decoder.up_blocks.2.resnets.2.conv2.weight",
                "decoder.upsamples.10.residual.6.weight",
            ),
            (
                "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
                "decoder.upsamples.3.time_conv.weight",
            ),
            (
                "decoder.up_blocks.2.upsamplers.0.resample.1.bias",
                "decoder.upsamples.11.resample.1.bias",
            ),
        ];
        for (diffusers, original) in cases {
            assert_eq!(original_name(diffusers, 2), original, "{diffusers}");
        }
        // with one residual block per encoder stage, decoder stages are 3 entries long
        assert_eq!(
            original_name("decoder.up_blocks.2.resnets.1.norm1.gamma", 1),
            "decoder.upsamples.7.residual.0.gamma"
        );
    }
}

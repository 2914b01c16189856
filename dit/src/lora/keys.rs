//! LoRA key names as people's files spell them, read into (module, part).
//!
//! Three families are read, with or without their usual prefixes (`transformer.`,
//! `diffusion_model.`, `model.diffusion_model.`, `base_model.model.`, `lora_unet_`,
//! `lora_transformer_`):
//! - diffusers/PEFT: `blocks.0.attn1.to_q.lora_A.weight`, `...lora_B.weight`, `...lora_B.bias`;
//! - the original Wan names: `blocks.0.self_attn.q.lora_down.weight` (or `lora_A`), `.alpha`,
//!   `.diff` (a full weight difference), `.diff_b` (a bias difference);
//! - kohya/musubi-tuner/ComfyUI: the module path with `_` for `.`, e.g.
//!   `lora_unet_blocks_0_self_attn_q.lora_down.weight` and `.alpha`.
//!
//! Module names are matched against the transformer's own weights in either layout, so a name
//! resolves whichever family it comes from ([`ModuleIndex`]).

use crate::layout::{original_name, KeyLayout};
use std::collections::HashMap;
use vdit_core::weights::Checkpoint;

/// What one LoRA tensor is to its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The down projection `A` (`[rank, in]`).
    Down,
    /// The up projection `B` (`[out, rank]`).
    Up,
    /// The scalar `alpha`: the update is scaled by `alpha / rank`.
    Alpha,
    /// A full difference of the weight.
    Diff,
    /// A difference of the bias.
    DiffBias,
}

/// Prefixes in front of module names, longest first.
const PREFIXES: [&str; 6] = [
    "model.diffusion_model.",
    "base_model.model.",
    "diffusion_model.",
    "transformer.",
    "lora_transformer_",
    "lora_unet_",
];

/// Name endings and the part they mark (`.diff_b` before `.diff`, which it does not end with,
/// but reads first).
const SUFFIXES: [(&str, Part); 8] = [
    (".lora_A.weight", Part::Down),
    (".lora_down.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_up.weight", Part::Up),
    (".lora_B.bias", Part::DiffBias),
    (".alpha", Part::Alpha),
    (".diff_b", Part::DiffBias),
    (".diff", Part::Diff),
];

/// Splits a LoRA key into its module name (prefix removed) and part; `None` when the key is
/// none of the known parts.
pub fn split_key(key: &str) -> Option<(&str, Part)> {
    let bare = PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key);
    if key.ends_with(".lora_A.bias") {
        // PEFT never writes a bias on A; a file that has one is not a LoRA this engine reads.
        return None;
    }
    SUFFIXES
        .iter()
        .find_map(|(suffix, part)| bare.strip_suffix(suffix).map(|module| (module, *part)))
}

/// A weight of the transformer a LoRA module can change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The diffusers name of the module (`blocks.0.attn1.to_q`), or of the parameter itself
    /// for tensors that are not in a layer (`blocks.0.scale_shift_table`).
    pub module: String,
    /// Its weight, in diffusers names (`blocks.0.attn1.to_q.weight`).
    pub weight: String,
    /// Its bias, if it has one.
    pub bias: Option<String>,
}

/// Every module name of a transformer in every spelling, to its [`Target`].
pub struct ModuleIndex {
    by_name: HashMap<String, Target>,
    /// Shapes of the transformer's weights by diffusers name.
    shapes: HashMap<String, Vec<usize>>,
}

impl ModuleIndex {
    /// Indexes the weights of `checkpoint` stored in `layout`.
    pub fn new(checkpoint: &Checkpoint, layout: &KeyLayout) -> Self {
        let mut shapes = HashMap::new();
        for stored in checkpoint.keys() {
            if let (Some(name), Some(shape)) = (layout.canonical(stored), checkpoint.shape(stored))
            {
                shapes.insert(name, shape);
            }
        }
        let mut by_name = HashMap::new();
        for name in shapes.keys() {
            let (module, weight) = match name.strip_suffix(".weight") {
                Some(module) => (module.to_string(), name.clone()),
                None if name.ends_with(".bias") => continue,
                None => (name.clone(), name.clone()),
            };
            let bias = Some(format!("{module}.bias")).filter(|b| shapes.contains_key(b));
            let target = Target {
                module: module.clone(),
                weight,
                bias,
            };
            let original = match name.strip_suffix(".weight") {
                Some(_) => original_name(name)
                    .strip_suffix(".weight")
                    .unwrap_or_default()
                    .to_string(),
                None => original_name(name),
            };
            for spelling in [
                module.clone(),
                module.replace('.', "_"),
                original.clone(),
                original.replace('.', "_"),
            ] {
                by_name.insert(spelling, target.clone());
            }
        }
        Self { by_name, shapes }
    }

    /// The target a LoRA module name means, in any spelling.
    pub fn find(&self, module: &str) -> Option<&Target> {
        self.by_name.get(module)
    }

    /// The shape of a weight by its diffusers name.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family's spelling splits into the module and the part.
    #[test]
    fn keys_of_every_family() {
        let cases = [
            (
                "transformer.blocks.0.attn1.to_q.lora_A.weight",
                "blocks.0.attn1.to_q",
                Part::Down,
            ),
            (
                "blocks.3.ffn.net.2.lora_B.weight",
                "blocks.3.ffn.net.2",
                Part::Up,
            ),
            (
                "diffusion_model.blocks.1.self_attn.o.lora_down.weight",
                "blocks.1.self_attn.o",
                Part::Down,
            ),
            (
                "diffusion_model.blocks.1.cross_attn.k.alpha",
                "blocks.1.cross_attn.k",
                Part::Alpha,
            ),
            (
                "diffusion_model.blocks.1.modulation.diff",
                "blocks.1.modulation",
                Part::Diff,
            ),
            (
                "diffusion_model.head.head.diff_b",
                "head.head",
                Part::DiffBias,
            ),
            (
                "lora_unet_blocks_0_ffn_0.lora_up.weight",
                "blocks_0_ffn_0",
                Part::Up,
            ),
            (
                "transformer.proj_out.lora_B.bias",
                "proj_out",
                Part::DiffBias,
            ),
        ];
        for (key, module, part) in cases {
            assert_eq!(split_key(key), Some((module, part)), "{key}");
        }
        assert_eq!(split_key("blocks.0.attn1.to_q.weight"), None);
        assert_eq!(split_key("blocks.0.attn1.to_q.lora_A.bias"), None);
    }
}

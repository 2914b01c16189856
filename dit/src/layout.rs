//! The two key layouts Wan transformer checkpoints come in, and how to tell them apart.
//!
//! Model code asks for diffusers names; for an original-release checkpoint they are rewritten
//! to the release's names (`self_attn.q`, `ffn.0`, `modulation`, `head.head`, ...).

use crate::error::Error;
use vdit_core::weights::{Checkpoint, KeyRename};

/// Naming convention of a transformer checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// diffusers `WanTransformer3DModel` names.
    Diffusers,
    /// The original Wan release's names, each behind `prefix` (often empty, sometimes
    /// `model.diffusion_model.`).
    Original {
        /// Prefix in front of every key.
        prefix: String,
    },
}

const DIFFUSERS_PROBE: &str = "condition_embedder.time_embedder.linear_1.weight";
const ORIGINAL_PROBE: &str = "time_embedding.0.weight";

impl KeyLayout {
    /// Detects the layout from the stored keys.
    pub fn detect(checkpoint: &Checkpoint) -> Result<Self, Error> {
        if checkpoint.contains(DIFFUSERS_PROBE) {
            return Ok(Self::Diffusers);
        }
        for prefix in ["", "model.diffusion_model.", "model.", "diffusion_model."] {
            if checkpoint.contains(&format!("{prefix}{ORIGINAL_PROBE}")) {
                return Ok(Self::Original {
                    prefix: prefix.to_string(),
                });
            }
        }
        Err(Error::Layout(format!(
            "the weights in {} are not a Wan transformer: found neither `{DIFFUSERS_PROBE}` \
             (diffusers layout) nor `{ORIGINAL_PROBE}` (original layout)",
            checkpoint.origin().display()
        )))
    }

    /// The diffusers name of a stored key (`None` for a key the model does not read by any
    /// name).
    pub fn canonical(&self, stored: &str) -> Option<String> {
        match self {
            Self::Diffusers => Some(stored.to_string()),
            Self::Original { prefix } => diffusers_name(stored.strip_prefix(prefix.as_str())?),
        }
    }

    /// The renaming from diffusers names to this layout's stored names.
    pub fn rename(&self) -> KeyRename {
        match self {
            Self::Diffusers => Box::new(str::to_string),
            Self::Original { prefix } => {
                let prefix = prefix.clone();
                Box::new(move |name| format!("{prefix}{}", original_name(name)))
            }
        }
    }
}

/// Renamed prefixes of the top-level weights: (diffusers, original).
const TOP: [(&str, &str); 7] = [
    (
        "condition_embedder.time_embedder.linear_1.",
        "time_embedding.0.",
    ),
    (
        "condition_embedder.time_embedder.linear_2.",
        "time_embedding.2.",
    ),
    (
        "condition_embedder.text_embedder.linear_1.",
        "text_embedding.0.",
    ),
    (
        "condition_embedder.text_embedder.linear_2.",
        "text_embedding.2.",
    ),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("proj_out.", "head.head."),
    ("scale_shift_table", "head.modulation"),
];

/// Renamed parts of block weights, applied in order: (diffusers, original).
const BLOCK: [(&str, &str); 11] = [
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".norm2.", ".norm3."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".scale_shift_table", ".modulation"),
    (".to_gate_compress.", ".gate_compress."),
];

/// Rewrites a diffusers transformer key into the original release's name.
pub fn original_name(name: &str) -> String {
    rename_with(name, |(diffusers, original)| (diffusers, original))
}

/// The diffusers name of an original release key, when it is one this engine reads (checked by
/// renaming it back).
pub fn diffusers_name(original: &str) -> Option<String> {
    let name = rename_with(original, |(diffusers, original)| (original, diffusers));
    (original_name(&name) == original).then_some(name)
}

/// Applies the renaming tables with each pair turned into `(from, to)` by `direction`.
fn rename_with(
    name: &str,
    direction: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> String {
    if name.starts_with("blocks.") {
        return BLOCK.iter().fold(name.to_string(), |n, &pair| {
            let (from, to) = direction(pair);
            n.replace(from, to)
        });
    }
    for &pair in &TOP {
        let (from, to) = direction(pair);
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::{diffusers_name, original_name};

    #[test]
    fn diffusers_names_map_to_original_names() {
        let cases = [
            (
                "condition_embedder.time_proj.weight",
                "time_projection.1.weight",
            ),
            (
                "condition_embedder.text_embedder.linear_2.bias",
                "text_embedding.2.bias",
            ),
            (
                "blocks.3.attn1.to_out.0.weight",
                "blocks.3.self_attn.o.weight",
            ),
            (
                "blocks.0.attn2.norm_k.weight",
                "blocks.0.cross_attn.norm_k.weight",
            ),
            ("blocks.11.norm2.bias", "blocks.11.norm3.bias"),
            ("blocks.2.ffn.net.0.proj.weight", "blocks.2.ffn.0.weight"),
            ("blocks.2.scale_shift_table", "blocks.2.modulation"),
            ("scale_shift_table", "head.modulation"),
            ("proj_out.bias", "head.head.bias"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(original_name(diffusers), original, "{diffusers}");
            assert_eq!(diffusers_name(original).as_deref(), Some(diffusers));
        }
        assert_eq!(diffusers_name("blocks.0.self_attn.to_q.weight"), None);
    }
}

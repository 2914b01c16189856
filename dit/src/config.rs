//! Transformer hyper-parameters, read from a diffusers or original-release `config.json`.

use crate::error::Error;
use serde::Deserialize;
use std::path::Path;

/// Hyper-parameters of a Wan 2.1 text-to-video transformer (names follow diffusers).
#[derive(Clone, Debug, PartialEq)]
pub struct WanConfig {
    /// Patch size over (frames, height, width).
    pub patch_size: [usize; 3],
    /// Attention heads.
    pub num_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Width of the text encoder's embeddings.
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    /// Hidden width of the feed-forward network.
    pub ffn_dim: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Whether cross-attention has an affine LayerNorm in front.
    pub cross_attn_norm: bool,
    /// Epsilon of every normalisation.
    pub eps: f64,
}

impl WanConfig {
    /// Hidden width, `num_heads * head_dim`.
    pub fn dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Wan 2.1 T2V 1.3B.
    pub fn wan2_1_1_3b() -> Self {
        Self::with_sizes(12, 8960, 30)
    }

    /// Wan 2.1 T2V 14B.
    pub fn wan2_1_14b() -> Self {
        Self::with_sizes(40, 13824, 40)
    }

    fn with_sizes(num_heads: usize, ffn_dim: usize, num_layers: usize) -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_heads,
            head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim,
            num_layers,
            cross_attn_norm: true,
            eps: 1e-6,
        }
    }

    /// Reads `config.json` in either the diffusers (`num_attention_heads`, ...) or the original
    /// release's (`dim`, `num_heads`, ...) convention.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Unreadable { reason, .. } => Error::Unreadable {
                path: shown,
                reason,
            },
            Error::Unsupported { reason, .. } => Error::Unsupported {
                path: shown,
                reason,
            },
            other => other,
        })
    }

    /// Parses a config from JSON text (see [`WanConfig::from_file`]).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let unreadable = |reason: String| Error::Unreadable {
            path: String::new(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        let config =
            if value.get("num_attention_heads").is_some() {
                serde_json::from_value::<DiffusersConfig>(value)
                    .map_err(|e| unreadable(e.to_string()))?
                    .into_config()
            } else if value.get("num_heads").is_some() && value.get("dim").is_some() {
                serde_json::from_value::<OriginalConfig>(value)
                    .map_err(|e| unreadable(e.to_string()))?
                    .into_config()
            } else {
                Err("neither a diffusers WanTransformer3DModel config (num_attention_heads) nor an \
                 original Wan config (dim, num_heads)"
                .to_string())
            };
        let config = config.map_err(|reason| Error::Unsupported {
            path: String::new(),
            reason,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(|reason| Error::Unsupported {
            path: String::new(),
            reason,
        })
    }

    fn check(&self) -> Result<(), String> {
        if !self.head_dim.is_multiple_of(2) || self.head_dim < 6 {
            return Err(format!(
                "attention head dim {} must be even and at least 6",
                self.head_dim
            ));
        }
        if self.patch_size.contains(&0) {
            return Err(format!("patch size {:?} has a zero side", self.patch_size));
        }
        if self.num_heads == 0 || self.num_layers == 0 {
            return Err("num_heads and num_layers must be positive".to_string());
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct DiffusersConfig {
    #[serde(default = "default_patch")]
    patch_size: Vec<usize>,
    num_attention_heads: usize,
    attention_head_dim: usize,
    #[serde(default = "default_channels")]
    in_channels: usize,
    out_channels: Option<usize>,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    ffn_dim: usize,
    num_layers: usize,
    #[serde(default = "yes")]
    cross_attn_norm: bool,
    #[serde(default = "default_qk_norm")]
    qk_norm: Option<String>,
    #[serde(default = "default_eps")]
    eps: f64,
    image_dim: Option<usize>,
    added_kv_proj_dim: Option<usize>,
}

impl DiffusersConfig {
    fn into_config(self) -> Result<WanConfig, String> {
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return Err(
                "image-to-video models (image_dim / added_kv_proj_dim) are not supported; \
                        use a text-to-video Wan 2.1 checkpoint"
                    .to_string(),
            );
        }
        if self.qk_norm.as_deref() != Some("rms_norm_across_heads") {
            return Err(format!(
                "qk_norm {:?} is not supported; only \"rms_norm_across_heads\" (Wan 2.1) is",
                self.qk_norm
            ));
        }
        Ok(WanConfig {
            patch_size: patch3(&self.patch_size)?,
            num_heads: self.num_attention_heads,
            head_dim: self.attention_head_dim,
            in_channels: self.in_channels,
            out_channels: self.out_channels.unwrap_or(self.in_channels),
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.num_layers,
            cross_attn_norm: self.cross_attn_norm,
            eps: self.eps,
        })
    }
}

#[derive(Deserialize)]
struct OriginalConfig {
    #[serde(default = "default_model_type")]
    model_type: String,
    #[serde(default = "default_patch")]
    patch_size: Vec<usize>,
    #[serde(default = "default_channels")]
    in_dim: usize,
    #[serde(default = "default_channels")]
    out_dim: usize,
    dim: usize,
    ffn_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
    num_heads: usize,
    num_layers: usize,
    #[serde(default = "yes")]
    qk_norm: bool,
    #[serde(default = "yes")]
    cross_attn_norm: bool,
    #[serde(default = "default_eps")]
    eps: f64,
}

impl OriginalConfig {
    fn into_config(self) -> Result<WanConfig, String> {
        if self.model_type != "t2v" {
            return Err(format!(
                "model_type {:?} is not supported; only text-to-video (\"t2v\") is",
                self.model_type
            ));
        }
        if !self.qk_norm {
            return Err(
                "qk_norm = false is not supported (Wan 2.1 uses RMSNorm on q and k)".into(),
            );
        }
        if self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ));
        }
        Ok(WanConfig {
            patch_size: patch3(&self.patch_size)?,
            num_heads: self.num_heads,
            head_dim: self.dim / self.num_heads,
            in_channels: self.in_dim,
            out_channels: self.out_dim,
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.num_layers,
            cross_attn_norm: self.cross_attn_norm,
            eps: self.eps,
        })
    }
}

fn patch3(p: &[usize]) -> Result<[usize; 3], String> {
    p.try_into()
        .map_err(|_| format!("patch_size must have 3 entries, got {p:?}"))
}

fn default_patch() -> Vec<usize> {
    vec![1, 2, 2]
}
fn default_channels() -> usize {
    16
}
fn default_text_dim() -> usize {
    4096
}
fn default_freq_dim() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-6
}
fn default_qk_norm() -> Option<String> {
    Some("rms_norm_across_heads".to_string())
}
fn default_model_type() -> String {
    "t2v".to_string()
}
fn yes() -> bool {
    true
}

//! UMT5 encoder hyper-parameters, read from transformers' `config.json`.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// Hyper-parameters of a UMT5 encoder (names follow transformers' `UMT5Config`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Umt5Config {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Width of each attention head.
    pub d_kv: usize,
    /// Hidden width of the feed-forward network.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets (half for each direction).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Feed-forward kind; only `"gated-gelu"` (UMT5's) is supported.
    #[serde(default = "default_feed_forward")]
    pub feed_forward_proj: String,
    /// Epsilon of the RMS layer norms.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// transformers' model type; `"umt5"` when present.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl Umt5Config {
    /// google/umt5-xxl's encoder, the text encoder of Wan 2.1.
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10_240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            feed_forward_proj: default_feed_forward(),
            layer_norm_epsilon: 1e-6,
            model_type: Some("umt5".to_string()),
        }
    }

    /// Reads and checks a transformers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let fail = |action, reason: String| Error::Config {
            action,
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail("read", e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| fail("parse", e.to_string()))?;
        cfg.validate().map_err(|e| match e {
            Error::Unsupported { reason, .. } => Error::Unsupported {
                path: Some(path.to_path_buf()),
                reason,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Width of all heads together.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |reason: String| Err(Error::Unsupported { path: None, reason });
        if let Some(t) = self.model_type.as_deref() {
            if t != "umt5" {
                return unsupported(format!(
                    "model_type {t:?} is not supported; only \"umt5\" (per-layer position bias)"
                ));
            }
        }
        if self.feed_forward_proj != "gated-gelu" {
            return unsupported(format!(
                "feed_forward_proj {:?} is not supported; only \"gated-gelu\" (UMT5's)",
                self.feed_forward_proj
            ));
        }
        let buckets = self.relative_attention_num_buckets;
        if buckets < 4 || !buckets.is_multiple_of(2) {
            return unsupported(format!(
                "relative_attention_num_buckets {buckets} must be even and at least 4"
            ));
        }
        if self.relative_attention_max_distance <= buckets / 4 {
            return unsupported(format!(
                "relative_attention_max_distance {} must exceed a quarter of the bucket count",
                self.relative_attention_max_distance
            ));
        }
        if [
            self.d_model,
            self.d_kv,
            self.d_ff,
            self.num_heads,
            self.num_layers,
            self.vocab_size,
        ]
        .contains(&0)
        {
            return unsupported(
                "d_model, d_kv, d_ff, num_heads, num_layers and vocab_size must be positive"
                    .to_string(),
            );
        }
        Ok(())
    }
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_feed_forward() -> String {
    "gated-gelu".to_string()
}
fn default_eps() -> f64 {
    1e-6
}

//! VAE hyper-parameters, read from a diffusers `vae/config.json` (AutoencoderKLWan).

use crate::error::Error;
use serde::Deserialize;
use std::path::Path;

/// Hyper-parameters of a Wan 2.1 VAE (field names follow diffusers' `AutoencoderKLWan`).
/// Missing fields take the Wan 2.1 values; fields this crate does not need are ignored.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Channels of the encoder's first stage.
    pub base_dim: usize,
    /// Channels of the decoder's last stage (`None`: `base_dim`).
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    pub z_dim: usize,
    /// Channel multiplier of each stage; one spatial 2x resampling between stages.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more per stage).
    pub num_res_blocks: usize,
    /// Stage scales with attention in the encoder (must be empty, as in Wan 2.1).
    pub attn_scales: Vec<f64>,
    /// Which encoder downsamplings also halve time (the decoder mirrors it). The misspelling is
    /// diffusers'.
    pub temperal_downsample: Vec<bool>,
    /// Training-time dropout; inference ignores it.
    pub dropout: f64,
    /// Per-channel mean of raw latents, used to normalise them for the transformer.
    pub latents_mean: Vec<f64>,
    /// Per-channel standard deviation of raw latents.
    pub latents_std: Vec<f64>,
    /// Wan 2.2's residual down/up blocks (unsupported).
    pub is_residual: bool,
    /// Video channels in.
    pub in_channels: usize,
    /// Video channels out.
    pub out_channels: usize,
    /// Wan 2.2's pixel patchification (unsupported).
    pub patch_size: Option<usize>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self::wan2_1()
    }
}

impl VaeConfig {
    /// The released Wan 2.1 VAE.
    pub fn wan2_1() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
        }
    }

    /// Reads and validates a diffusers `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let unreadable = |reason: String| Error::Unreadable {
            path: shown.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
        config.check().map_err(|reason| Error::Unsupported {
            path: shown.clone(),
            reason,
        })?;
        Ok(config)
    }

    /// Channels of the decoder's last stage.
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Pixels per latent pixel along height and width.
    pub fn spatial_ratio(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Frames per latent frame after the first.
    pub fn temporal_ratio(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|&&t| t).count()
    }

    /// Checks that this is a Wan 2.1 VAE the implementation runs: 16 latent channels, 8x
    /// spatial and 4x temporal compression, no Wan 2.2 features.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(|reason| Error::Unsupported {
            path: String::new(),
            reason,
        })
    }

    fn check(&self) -> Result<(), String> {
        const WAN22: &str = "that is the Wan 2.2 VAE; only the Wan 2.1 VAE (z_dim 16) is supported";
        if self.is_residual {
            return Err(format!("is_residual = true: {WAN22}"));
        }
        if let Some(p) = self.patch_size {
            return Err(format!("patch_size = {p}: {WAN22}"));
        }
        if self.z_dim != 16 {
            return Err(format!(
                "z_dim = {}: only the Wan 2.1 VAE (z_dim 16) is supported",
                self.z_dim
            ));
        }
        if self.dim_mult.len() != 4 || self.dim_mult.contains(&0) {
            return Err(format!(
                "dim_mult {:?} must have 4 positive entries (8x spatial compression)",
                self.dim_mult
            ));
        }
        if self.temperal_downsample.len() != 3 || self.temporal_ratio() != 4 {
            return Err(format!(
                "temperal_downsample {:?} must have 3 entries, 2 of them true (4x temporal compression)",
                self.temperal_downsample
            ));
        }
        if !self.attn_scales.is_empty() {
            return Err(format!(
                "attn_scales {:?} must be empty (Wan 2.1 has attention only in the middle blocks)",
                self.attn_scales
            ));
        }
        if self.base_dim == 0 || self.decoder_dim() == 0 || self.num_res_blocks == 0 {
            return Err("base_dim, decoder_base_dim and num_res_blocks must be positive".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err("in_channels and out_channels must be positive".into());
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!(
                "latents_mean and latents_std need {} entries, got {} and {}",
                self.z_dim,
                self.latents_mean.len(),
                self.latents_std.len()
            ));
        }
        if self.latents_std.iter().any(|&s| s <= 0.0) {
            return Err("latents_std entries must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<VaeConfig, String> {
        let config: VaeConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.check().map(|_| config)
    }

    #[test]
    fn empty_json_is_wan2_1_and_valid() {
        assert_eq!(parse("{}").unwrap(), VaeConfig::wan2_1());
        let c = VaeConfig::wan2_1();
        assert_eq!((c.spatial_ratio(), c.temporal_ratio()), (8, 4));
    }

    #[test]
    fn wan2_2_configs_are_rejected_in_one_line() {
        for json in [
            r#"{"is_residual": true}"#,
            r#"{"patch_size": 2}"#,
            r#"{"z_dim": 48}"#,
        ] {
            let err = parse(json).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains("Wan 2.1"), "{err}");
        }
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        for json in [
            r#"{"dim_mult": [1, 2, 4]}"#,
            r#"{"temperal_downsample": [false, false, true]}"#,
            r#"{"attn_scales": [1.0]}"#,
            r#"{"latents_std": [1.0]}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
    }
}

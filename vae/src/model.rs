//! [`WanVae`]: loading, latent normalisation, streaming decode (optionally tiled) and encode.

use crate::config::VaeConfig;
use crate::conv::{CausalConv3d, TimeCache};
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::error::{Error, FrameError, Result};
use crate::frames::{to_standard, to_working};
use crate::layout::KeyLayout;
use crate::profile;
use crate::tiling::{TiledDecoder, Tiling};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;
use std::sync::Arc;
use vdit_core::weights::Checkpoint;

/// How an encode walks the video's frames (both give the same result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunks {
    /// The first frame alone, then 4 at a time: memory does not grow with the length.
    Streamed,
    /// Every frame in one pass: fewer, larger operations.
    Whole,
}

/// How to decode.
#[derive(Clone, Debug, Default)]
pub struct DecodeOptions {
    /// Decode in overlapping spatial tiles (`None`: whole frames).
    pub tiling: Option<Tiling>,
}

/// The Wan 2.1 causal video VAE: 8x spatial and 4x temporal compression to 16 latent channels.
pub struct WanVae {
    config: VaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
    /// `[1, z, 1, 1, 1]` f32.
    latents_mean: Tensor,
    /// `[1, z, 1, 1, 1]` f32.
    latents_std: Tensor,
    dtype: DType,
}

impl WanVae {
    /// Builds the VAE from weights in diffusers names.
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        let per_channel = |values: &[f64]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::from_vec(values, (1, z, 1, 1, 1), vb.device())
        };
        Ok(Self {
            config: cfg.clone(),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quant_conv: CausalConv3d::new(2 * z, 2 * z, (1, 1), 0, vb.pp("quant_conv"))?,
            post_quant_conv: CausalConv3d::new(z, z, (1, 1), 0, vb.pp("post_quant_conv"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            latents_mean: per_channel(&cfg.latents_mean)?,
            latents_std: per_channel(&cfg.latents_std)?,
            dtype: vb.dtype(),
        })
    }

    /// Loads a folder (`config.json` + safetensors) or a single safetensors file, in the
    /// diffusers or the original release's key layout (detected from the keys). Without a VAE
    /// `config.json` beside the weights the config is [`VaeConfig::wan2_1`].
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let checkpoint = Arc::new(Checkpoint::open(path)?);
        let config = match config_beside(path) {
            Some(file) => VaeConfig::from_file(&file)?,
            None => VaeConfig::wan2_1(),
        };
        let layout = KeyLayout::detect(&checkpoint)?;
        let vb = checkpoint.var_builder(layout.rename(config.num_res_blocks), dtype, device);
        Self::new(&config, vb)
    }

    /// A VAE of `cfg`'s shapes with random weights (convolutions normal with variance
    /// `1 / fan_in`, biases normal with standard deviation 0.1, norm scales 1), for benchmarks and
    /// memory measurements.
    pub fn random(cfg: &VaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        let shapes = candle_nn::VarMap::new();
        Self::new(cfg, VarBuilder::from_varmap(&shapes, DType::F32, device))?;
        let mut weights = std::collections::HashMap::new();
        for (name, var) in shapes.data().lock().expect("var map lock").iter() {
            let dims = var.dims();
            let t = if name.ends_with("gamma") {
                Tensor::ones(dims, DType::F32, device)?
            } else if dims.len() == 1 {
                Tensor::randn(0f32, 0.1, dims, device)?
            } else {
                let fan_in: usize = dims[1..].iter().product();
                Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, dims, device)?
            };
            weights.insert(name.clone(), t);
        }
        Self::new(cfg, VarBuilder::from_tensors(weights, dtype, device))
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Compute dtype (that of the weights).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// DiT-space latents `(z - mean) / std` back to raw `z` (same shape and dtype).
    pub fn denormalize(&self, latents: &Tensor) -> Result<Tensor> {
        self.check_latents(latents)?;
        Ok(latents
            .to_dtype(DType::F32)?
            .broadcast_mul(&self.latents_std)?
            .broadcast_add(&self.latents_mean)?
            .to_dtype(latents.dtype())?)
    }

    /// Raw `z` to DiT-space latents `(z - mean) / std` (same shape and dtype).
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        Ok(z.to_dtype(DType::F32)?
            .broadcast_sub(&self.latents_mean)?
            .broadcast_div(&self.latents_std)?
            .to_dtype(z.dtype())?)
    }

    /// Decodes raw `z` `[b, 16, t, h, w]` into frames in [-1, 1] (clamped, in the VAE's dtype),
    /// one latent frame at a time: `on_frames` receives `[b, 3, n, 8h, 8w]` chunks in order,
    /// `n = 1` for the first latent frame and 4 after, `1 + 4 (t - 1)` frames in all. Memory
    /// does not grow with `t`.
    pub fn decode_streaming(
        &self,
        z: &Tensor,
        opts: &DecodeOptions,
        on_frames: &mut dyn FnMut(Tensor) -> std::result::Result<(), FrameError>,
    ) -> Result<()> {
        let (_, _, frames, height, width) = self.check_latents(z)?;
        let z = self.frames_first(z)?;
        let tiled = match &opts.tiling {
            Some(tiling) => TiledDecoder::new(
                height,
                width,
                self.config.spatial_ratio(),
                tiling,
                z.device(),
            )?,
            None => None,
        };
        let mut emit = |frames: Tensor| -> Result<()> {
            let frames = profile::timed(
                frames.device(),
                || "clamp, video layout".into(),
                0.0,
                || to_video_layout(&frames.clamp(-1f32, 1f32)?.to_dtype(self.dtype)?),
            )?;
            on_frames(frames).map_err(Error::Frames)
        };
        match tiled {
            None => {
                let mut cache = TimeCache::new();
                for t in 0..frames {
                    emit(self.decode_chunk(&z.narrow(1, t, 1)?, &mut cache)?)?;
                }
            }
            Some(mut tiles) => {
                for t in 0..frames {
                    let decode_tile =
                        |part: &Tensor, cache: &mut TimeCache| self.decode_chunk(part, cache);
                    emit(tiles.decode_frame(&z.narrow(1, t, 1)?, &decode_tile)?)?;
                }
            }
        }
        Ok(())
    }

    /// Decodes everything at once: [`WanVae::decode_streaming`]'s chunks joined along time.
    pub fn decode(&self, z: &Tensor, opts: &DecodeOptions) -> Result<Tensor> {
        let mut chunks = vec![];
        self.decode_streaming(z, opts, &mut |frames| {
            chunks.push(frames);
            Ok(())
        })?;
        Ok(Tensor::cat(&chunks, 2)?)
    }

    /// Encodes a video `[b, 3, 1 + 4k, H, W]` in [-1, 1] into the posterior mean, raw `z`
    /// `[b, 16, 1 + k, H / 8, W / 8]` (sizes rounded down), in the VAE's dtype. The first frame
    /// is encoded alone, then 4 frames at a time, so memory does not grow with the length.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        // the first z channels of the Gaussian's parameters are its mean
        let moments = self.posterior_moments(video, Chunks::Streamed)?;
        Ok(to_video_layout(&moments.narrow(
            2,
            0,
            self.config.z_dim,
        )?)?)
    }

    /// As [`WanVae::encode`], returning the posterior's mean and log-variance (both
    /// `[b, z, 1 + k, H / 8, W / 8]`), with the whole video in one pass (the same function;
    /// fewer, larger operations, and memory that grows with the length). Differentiable when the
    /// weights track gradients, which is how the VAE is trained.
    pub fn encode_posterior(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        let moments = self.posterior_moments(video, Chunks::Whole)?;
        let z = self.config.z_dim;
        Ok((
            to_video_layout(&moments.narrow(2, 0, z)?)?,
            to_video_layout(&moments.narrow(2, z, z)?)?,
        ))
    }

    /// The posterior's parameters `[b, 1 + k, 2z, H / 8, W / 8]` (mean, then log-variance),
    /// in `chunks`.
    fn posterior_moments(&self, video: &Tensor, chunks: Chunks) -> Result<Tensor> {
        let frames = self.check_video(video)?;
        let ratio = self.config.temporal_ratio();
        let mut cache = TimeCache::new();
        let mut moments = vec![];
        let mut start = 0;
        while start < frames {
            let len = match chunks {
                Chunks::Whole => frames,
                Chunks::Streamed if start == 0 => 1,
                Chunks::Streamed => ratio,
            };
            // [b, t, c, h, w], one chunk at a time
            let chunk = video
                .narrow(2, start, len)?
                .to_dtype(self.dtype)?
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?;
            cache.start_chunk();
            let h = self.encoder.forward(&to_working(&chunk)?, &mut cache)?;
            moments.push(to_standard(&self.quant_conv.convolve(&h, 1)?)?);
            start += len;
        }
        Ok(Tensor::cat(&moments, 1)?)
    }

    /// Decodes raw `z` `[b, z, t, h, w]` into unclamped frames `[b, 3, 1 + 4 (t - 1), 8h, 8w]`
    /// in one pass, differentiable when the weights track gradients (training's decode: the
    /// same function as the streaming [`WanVae::decode_streaming`], inference's, in fewer and
    /// larger operations).
    pub fn decode_unclamped(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        let frames = self.decode_chunk(&self.frames_first(z)?, &mut TimeCache::new())?;
        Ok(to_video_layout(&frames)?)
    }

    /// Latents `[b, z, t, h, w]` as `[b, t, z, h, w]` in the VAE's dtype: a latent frame is
    /// then a contiguous slice.
    fn frames_first(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        z.to_dtype(self.dtype)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }

    /// Latent frames `[b, t, z, h, w]` of a stream (one at a time when streaming, or all) to
    /// unclamped frames `[b, n, c, 8h, 8w]`.
    fn decode_chunk(&self, latent: &Tensor, cache: &mut TimeCache) -> candle_core::Result<Tensor> {
        cache.start_chunk();
        let x = self.post_quant_conv.convolve(&to_working(latent)?, 1)?;
        to_standard(&self.decoder.forward(&x, cache)?)
    }

    /// Checks `[b, z_dim, t, h, w]` with nothing empty; returns the dims.
    fn check_latents(&self, z: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
        let z_dim = self.config.z_dim;
        let dims = z.dims5().map_err(|_| {
            Error::Input(format!(
                "VAE latents must have 5 dims [batch, {z_dim}, frames, height, width], got shape {:?}",
                z.dims()
            ))
        })?;
        if dims.1 != z_dim {
            return Err(Error::Input(format!(
                "VAE latents have {} channels (shape {:?}); the VAE expects {z_dim}: [batch, {z_dim}, frames, height, width]",
                dims.1,
                z.dims()
            )));
        }
        if z.dims().contains(&0) {
            return Err(Error::Input(format!(
                "VAE latents have an empty dim: shape {:?}",
                z.dims()
            )));
        }
        Ok(dims)
    }

    /// Checks `[b, in_channels, 1 + 4k, H, W]` with `H, W >= 8`; returns the frame count.
    fn check_video(&self, video: &Tensor) -> Result<usize> {
        let c = self.config.in_channels;
        let (b, channels, frames, height, width) = video.dims5().map_err(|_| {
            Error::Input(format!(
                "video to encode must have 5 dims [batch, {c}, frames, height, width], got shape {:?}",
                video.dims()
            ))
        })?;
        if channels != c {
            return Err(Error::Input(format!(
                "video to encode has {channels} channels (shape {:?}); the VAE expects {c}",
                video.dims()
            )));
        }
        let ratio = self.config.temporal_ratio();
        if frames == 0 || (frames - 1) % ratio != 0 {
            let below = frames.saturating_sub(1) / ratio * ratio + 1;
            return Err(Error::Input(format!(
                "video to encode has {frames} frames; the VAE needs 1 + {ratio}k frames (e.g. {below} or {})",
                below + ratio
            )));
        }
        let min = self.config.spatial_ratio();
        if b == 0 || height < min || width < min {
            return Err(Error::Input(format!(
                "video to encode is {height}x{width} with batch {b}; it needs at least {min}x{min} pixels and one video"
            )));
        }
        Ok(frames)
    }
}

/// `[b, t, c, h, w]` -> `[b, c, t, h, w]`, contiguous.
fn to_video_layout(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// The VAE `config.json` beside the weights, if any. Beside a single file, a `config.json` of
/// another model (an original release folder holds the transformer's) is not the VAE's.
fn config_beside(path: &Path) -> Option<std::path::PathBuf> {
    let (dir, single_file) = if path.is_dir() {
        (path, false)
    } else {
        (path.parent().unwrap_or(Path::new(".")), true)
    };
    let file = dir.join("config.json");
    if !file.is_file() {
        return None;
    }
    if single_file {
        let text = std::fs::read_to_string(&file).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let is_vae = json.get("_class_name").and_then(|c| c.as_str()) == Some("AutoencoderKLWan")
            || json.get("z_dim").is_some();
        if !is_vae {
            return None;
        }
    }
    Some(file)
}

//! What a generation needs in memory, estimated from its settings and the model's sizes before
//! anything is loaded, so that a run that cannot fit is refused in one line instead of failing
//! partway or taking the machine's memory. Every size is computed with checked arithmetic: a
//! request whose sizes overflow is refused as too large.
//!
//! The estimate is of the two phases that hold memory one after the other: the text encoder's
//! weights while prompts are encoded, then the transformer's and the VAE's weights with the
//! larger of the denoising activations (the latents, a transformer block's inputs, attention
//! projections and feed-forward hidden state for the guided batch, with room for temporaries)
//! and the VAE decoder's buffers (four frames at full resolution in the widest channels, with the
//! causal caches). On the H200 it lands 5-10 % under the measured peaks of Wan 1.3B at 480p and
//! 720p (BENCHMARKS.md), so a refusal means the run would not fit.

use crate::error::fail;
use crate::t2v::settings::{Settings, VAE_SPATIAL, VAE_TEMPORAL};
use crate::Result;
use candle_core::DType;
use dit::WanConfig;

/// Parameters of the Wan VAE (about 127 million; weights are small next to the activations).
const VAE_PARAMETERS: u64 = 127_000_000;
/// Channels of the Wan VAE decoder at full resolution.
const DECODER_CHANNELS: u64 = 96;
/// Full-resolution buffers the decoder holds at once per output frame of a chunk (activations,
/// convolution inputs with their time windows, norm temporaries).
const DECODER_BUFFERS: u64 = 12;
/// Copies of a block's activations alive at once during a forward pass (inputs, outputs and the
/// temporaries of the fused operations between them).
const ACTIVATION_COPIES: u64 = 2;

/// The bytes one phase of a generation needs at its peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    /// While the prompts are encoded (the text encoder's weights); 0 when nothing is encoded.
    pub text_encoding: u64,
    /// While denoising and decoding.
    pub generation: u64,
}

impl MemoryNeed {
    /// The larger phase.
    pub fn peak(&self) -> u64 {
        self.text_encoding.max(self.generation)
    }
}

/// The product of `factors`, or `None` when it overflows.
fn product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f))
}

/// Parameters of a Wan transformer from its configuration.
fn transformer_parameters(c: &WanConfig) -> Option<u64> {
    let dim = c.dim() as u64;
    let ffn = c.ffn_dim as u64;
    // self-attention q, k, v, o and cross-attention q, k, v, o: 8 dim x dim; the feed-forward
    // network: 2 dim x ffn.
    let per_layer = product(&[8, dim, dim])?.checked_add(product(&[2, dim, ffn])?)?;
    let embeddings = product(&[c.text_dim as u64, dim])?
        .checked_add(product(&[c.freq_dim as u64 + 8 * dim, dim])?)?;
    product(&[per_layer, c.num_layers as u64])?.checked_add(embeddings)
}

/// Parameters of a UMT5 encoder from its configuration.
pub fn text_encoder_parameters(c: &umt5::Umt5Config) -> Option<u64> {
    let (d_model, inner, d_ff) = (c.d_model as u64, c.inner_dim() as u64, c.d_ff as u64);
    // attention q, k, v, o: 4 d_model x inner; gated feed-forward: 3 d_model x d_ff.
    let per_layer = product(&[4, d_model, inner])?.checked_add(product(&[3, d_model, d_ff])?)?;
    product(&[per_layer, c.num_layers as u64])?
        .checked_add(product(&[c.vocab_size as u64, d_model])?)
}

/// The need of a generation with `settings` on the transformer `config` in `dtype`, with a text
/// encoder of `text_parameters` when prompts must be encoded.
pub fn estimate(
    settings: &Settings,
    config: &WanConfig,
    text_parameters: Option<u64>,
    dtype: DType,
) -> Result<MemoryNeed> {
    let too_large = || {
        crate::Error::Usage(format!(
            "a {}x{} video of {} frames is too large to compute: use a smaller --size or fewer \
             --frames",
            settings.size.width, settings.size.height, settings.frames
        ))
    };
    let bytes = dtype.size_in_bytes() as u64;
    let [_, _, latent_frames, latent_h, latent_w] =
        settings.latent_shape(config.in_channels).map(|d| d as u64);
    let [_, patch_h, patch_w] = config.patch_size.map(|p| p.max(1) as u64);
    let tokens = product(&[latent_frames, latent_h / patch_h, latent_w / patch_w]);
    let batch = if settings.guided() { 2 } else { 1 };
    let dim = config.dim() as u64;
    let width = (4 * dim).checked_add(config.ffn_dim as u64);
    let activations = tokens.and_then(|t| product(&[batch, t, width?, bytes, ACTIVATION_COPIES]));
    // The latents in f32, with the scheduler's history and the velocity (about 6 copies).
    let latents = product(&[
        6,
        config.in_channels as u64,
        latent_frames,
        latent_h,
        latent_w,
        4,
    ]);
    let frame_pixels = product(&[latent_h, VAE_SPATIAL as u64, latent_w, VAE_SPATIAL as u64]);
    let decode = frame_pixels.and_then(|p| {
        product(&[
            p,
            DECODER_CHANNELS,
            VAE_TEMPORAL as u64,
            DECODER_BUFFERS,
            bytes,
        ])
    });
    let weights = transformer_parameters(config)
        .and_then(|p| p.checked_add(VAE_PARAMETERS))
        .and_then(|p| p.checked_mul(bytes));
    let generation = (|| {
        weights?
            .checked_add(latents?)?
            .checked_add(activations?.max(decode?))
    })()
    .ok_or_else(too_large)?;
    let text_encoding = match text_parameters {
        Some(p) => p.checked_mul(bytes).ok_or_else(too_large)?,
        None => 0,
    };
    Ok(MemoryNeed {
        text_encoding,
        generation,
    })
}

/// Refuses `need` when more than `available` bytes (on `device`, as named in the message);
/// `None` (unknown) passes.
pub fn check_fits(need: &MemoryNeed, available: Option<u64>, device: &str) -> Result<()> {
    let Some(available) = available else {
        return Ok(());
    };
    let gib = vdit_core::memory::gib;
    if need.peak() > available {
        let phase = if need.text_encoding > need.generation {
            "to encode the prompts"
        } else {
            "to denoise and decode"
        };
        fail!(
            Usage,
            "this generation needs about {:.1} GiB {phase}, and {:.1} GiB is available on \
             {device}: use a smaller --size or fewer --frames{}",
            gib(need.peak()),
            gib(available),
            if need.text_encoding > need.generation {
                ", or give --prompt-embeds"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::t2v::settings::{SettingOverrides, Size};

    fn settings(width: usize, height: usize, frames: usize) -> Settings {
        let over = SettingOverrides {
            size: Some(Size { width, height }),
            frames: Some(frames),
            ..Default::default()
        };
        SettingOverrides::wan()
            .then(&over)
            .resolve(&crate::schedulers::SchedulerConfig::wan_default(3.0))
            .unwrap()
    }

    /// Wan 1.3B's parameter count (1.42 billion in its checkpoint) and the measured peaks of a
    /// bf16 run on the H200 (6.94 GiB at 480p, 12.20 GiB at 720p): the estimate is at most
    /// 15 % under and never over.
    #[test]
    fn estimates_follow_the_measured_peaks() {
        let config = WanConfig::wan2_1_1_3b();
        let parameters = transformer_parameters(&config).unwrap() as f64;
        assert!((parameters / 1.42e9 - 1.0).abs() < 0.05, "{parameters}");
        for ((w, h), measured) in [((832, 480), 6.94), ((1280, 720), 12.20)] {
            let need = estimate(&settings(w, h, 81), &config, None, DType::BF16).unwrap();
            let gib = vdit_core::memory::gib(need.peak());
            println!("{w}x{h}: estimate {gib:.2} GiB, measured {measured} GiB");
            assert!(
                gib <= measured && gib >= 0.85 * measured,
                "{w}x{h}: {gib:.2} GiB"
            );
        }
    }

    #[test]
    fn huge_requests_are_refused_without_overflow() {
        let config = WanConfig::wan2_1_14b();
        let need = estimate(&settings(99_984, 99_984, 81), &config, None, DType::BF16).unwrap();
        let err = check_fits(&need, Some(80 << 30), "cuda:0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs about") && err.contains("smaller --size"),
            "{err}"
        );
        let over = estimate(
            &settings(1 << 40, 1 << 40, 4_000_000_001),
            &config,
            None,
            DType::F32,
        );
        assert!(over
            .unwrap_err()
            .to_string()
            .contains("too large to compute"));
        let small = WanConfig::wan2_1_1_3b();
        let text = estimate(
            &settings(64, 48, 9),
            &small,
            Some(5_700_000_000),
            DType::BF16,
        )
        .unwrap();
        let err = check_fits(&text, Some(8 << 30), "cuda:0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("to encode the prompts") && err.contains("--prompt-embeds"));
        assert!(check_fits(&text, None, "cpu").is_ok());
    }

    /// google/umt5-xxl's encoder has 5.68 billion parameters.
    #[test]
    fn umt5_xxl_parameters() {
        let p = text_encoder_parameters(&umt5::Umt5Config::umt5_xxl()).unwrap() as f64;
        assert!((p / 5.68e9 - 1.0).abs() < 0.02, "{p}");
    }
}

//! The transformer's training set: clips rendered once, encoded by the frozen VAE into
//! normalised latents, and their captions encoded by the frozen text encoder.

use crate::clips::{training_clip, video_tensor, Clip};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use umt5::TextEncoder;
use vae::WanVae;

/// Clips rendered and encoded together.
const ENCODE_BATCH: usize = 32;
/// Captions encoded together.
const TEXT_BATCH: usize = 32;

/// Encoded clips and captions, all on the training device.
pub struct LatentSet {
    /// `[N, C, T, H, W]` f32, normalised as the transformer sees them.
    latents: Tensor,
    /// Each clip's caption, an index into `texts`.
    caption_of: Vec<u32>,
    /// `[U, L, D]` text embeddings; row 0 is the empty caption (classifier-free guidance's).
    texts: Tensor,
}

impl LatentSet {
    /// Renders `count` training clips of the run with `seed` and encodes them;
    /// `on_progress(done, count)` after each batch.
    pub fn build(
        count: usize,
        seed: u64,
        (frames, size): (usize, usize),
        vae: &WanVae,
        text: &TextEncoder,
        device: &Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if count == 0 {
            return Err(Error::Usage(
                "the training set needs at least one clip: give --clips 1 or more".to_string(),
            ));
        }
        let mut latents = Vec::with_capacity(count.div_ceil(ENCODE_BATCH));
        let mut captions: HashMap<String, u32> = HashMap::from([(String::new(), 0)]);
        let mut caption_of = Vec::with_capacity(count);
        for start in (0..count).step_by(ENCODE_BATCH) {
            let end = (start + ENCODE_BATCH).min(count);
            let clips = render_parallel(seed, start..end, frames, size)?;
            let videos: Vec<_> = clips.iter().map(|c| &c.video).collect();
            let z = vae.encode(&video_tensor(&videos, device)?)?;
            latents.push(vae.normalize(&z)?.to_dtype(DType::F32)?);
            for clip in clips {
                let next = captions.len() as u32;
                caption_of.push(*captions.entry(clip.caption).or_insert(next));
            }
            on_progress(end, count);
        }
        let mut unique: Vec<(&String, &u32)> = captions.iter().collect();
        unique.sort_by_key(|(_, &i)| i);
        let texts = unique
            .chunks(TEXT_BATCH)
            .map(|chunk| {
                let prompts: Vec<&str> = chunk.iter().map(|(c, _)| c.as_str()).collect();
                text.encode(&prompts, text.text_len())
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            latents: Tensor::cat(&latents, 0)?,
            caption_of,
            texts: Tensor::cat(&texts, 0)?,
        })
    }

    /// Number of clips.
    pub fn len(&self) -> usize {
        self.caption_of.len()
    }

    /// Whether the set is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.caption_of.is_empty()
    }

    /// The latents `[B, C, T, H, W]` of `clips` and their text embeddings `[B, L, D]`, the
    /// empty caption's where `dropped` says so.
    pub fn batch(&self, clips: &[u32], dropped: &[bool]) -> Result<(Tensor, Tensor)> {
        let device = self.latents.device();
        let text_rows: Vec<u32> = clips
            .iter()
            .zip(dropped)
            .map(|(&c, &drop)| if drop { 0 } else { self.caption_of[c as usize] })
            .collect();
        let clips = Tensor::new(clips, device)?;
        let rows = Tensor::new(text_rows.as_slice(), device)?;
        Ok((
            self.latents.index_select(&clips, 0)?,
            self.texts.index_select(&rows, 0)?,
        ))
    }
}

/// Renders clips `range` of the run with `seed` on every core.
fn render_parallel(
    seed: u64,
    range: std::ops::Range<usize>,
    frames: usize,
    size: usize,
) -> Result<Vec<Clip>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = range
            .map(|i| scope.spawn(move || training_clip(seed, i as u64, frames, size)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Usage("a rendering thread failed".to_string()))?
            })
            .collect()
    })
}

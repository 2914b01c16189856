//! The transformer's training set: clips rendered once, encoded by the frozen VAE into
//! normalised latents, and their captions encoded by the frozen text encoder. A run keeps it in
//! its folder ([`CACHE_FILE`]), labelled with what it was built from, so that a resumed run
//! reads it back instead of encoding every clip again.

use crate::clips::{training_clip, video_tensor, Clip};
use crate::error::{Error, Result};
use crate::optim::check_replaceable;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use umt5::TextEncoder;
use vae::WanVae;
use vdit_core::output::PartialOutput;

/// Clips rendered and encoded together.
const ENCODE_BATCH: usize = 32;
/// Captions encoded together.
const TEXT_BATCH: usize = 32;

/// The file in a run folder that holds its encoded training set.
pub const CACHE_FILE: &str = "latents.safetensors";
/// The header metadata key of the set's label.
const LABEL_KEY: &str = "vdit_latent_set";

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

    /// Writes the set to `path` (through a temporary file renamed into place) with `label` in
    /// its header: the latents in `dtype` (that of the VAE that encoded them, so nothing is
    /// lost), the text embeddings and each clip's caption index as they are. Replaces only a
    /// set saved before; anything else at `path` is an error.
    pub fn save(&self, path: &Path, label: &str, dtype: DType) -> Result<()> {
        check_replaceable(path, |p| {
            vdit_core::weights::safetensors_metadata(p).is_some_and(|m| m.contains_key(LABEL_KEY))
        })?;
        let caption_of = Tensor::new(self.caption_of.as_slice(), &Device::Cpu)?;
        let latents = self.latents.to_dtype(dtype)?;
        let tensors = [
            ("latents", &latents),
            ("texts", &self.texts),
            ("caption_of", &caption_of),
        ];
        let metadata = HashMap::from([(LABEL_KEY.to_string(), label.to_string())]);
        let partial = PartialOutput::new(path)?;
        safetensors::serialize_to_file(tensors, Some(metadata), partial.temp())
            .map_err(|e| Error::io("write", path, e))?;
        partial.commit()?;
        Ok(())
    }

    /// The set saved at `path` with `label`, on `device`; `None` when there is no file there or
    /// it holds a set built from something else.
    pub fn load(path: &Path, label: &str, device: &Device) -> Result<Option<Self>> {
        let saved =
            vdit_core::weights::safetensors_metadata(path).and_then(|m| m.get(LABEL_KEY).cloned());
        if saved.as_deref() != Some(label) {
            return Ok(None);
        }
        let mut tensors = candle_core::safetensors::load(path, device)?;
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| {
                Error::Usage(format!(
                    "{} has no `{name}`: delete it and the run encodes its clips again",
                    path.display()
                ))
            })
        };
        let (latents, texts, caption_of) = (take("latents")?, take("texts")?, take("caption_of")?);
        Ok(Some(Self {
            latents: latents.to_dtype(DType::F32)?,
            caption_of: caption_of.to_device(&Device::Cpu)?.to_vec1()?,
            texts,
        }))
    }

    /// The same set on `device` (for a replica of the run there).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            latents: self.latents.to_device(device)?,
            caption_of: self.caption_of.clone(),
            texts: self.texts.to_device(device)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    /// A saved set loads back equal under its label (its latents through bf16 when they were
    /// bf16-valued, as the GPU's VAE makes them), and not at all under another label or from a
    /// missing file; saving replaces an earlier set but never a file vdit did not write.
    #[test]
    fn a_saved_set_loads_back_only_under_its_label() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("write", "a temporary folder", e))?;
        let path = dir.path().join(CACHE_FILE);
        let dev = Device::Cpu;
        let set = LatentSet {
            latents: Tensor::randn(0f32, 1.0, (3, 2, 2, 2, 2), &dev)?
                .to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?,
            caption_of: vec![1, 2, 1],
            texts: Tensor::randn(0f32, 1.0, (3, 4, 5), &dev)?,
        };
        set.save(&path, "label a", DType::BF16)?;
        let back = LatentSet::load(&path, "label a", &dev)?.expect("the saved set");
        assert_eq!(values(&back.latents)?, values(&set.latents)?);
        assert_eq!(back.latents.dtype(), DType::F32);
        assert_eq!(values(&back.texts)?, values(&set.texts)?);
        assert_eq!(back.caption_of, set.caption_of);
        assert!(LatentSet::load(&path, "label b", &dev)?.is_none());
        assert!(LatentSet::load(&dir.path().join("none"), "label a", &dev)?.is_none());
        // a set saved before is replaced; a file vdit did not write is refused and kept
        set.save(&path, "label b", DType::BF16)?;
        assert!(LatentSet::load(&path, "label b", &dev)?.is_some());
        let foreign = dir.path().join("foreign.safetensors");
        std::fs::write(&foreign, b"not ours").map_err(|e| Error::io("write", &foreign, e))?;
        let err = set
            .save(&foreign, "label a", DType::BF16)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not written by vdit") && !err.contains('\n'),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&foreign).ok().as_deref(),
            Some(&b"not ours"[..])
        );
        Ok(())
    }
}

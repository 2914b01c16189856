//! Rendered scenes as tensors: the training inputs of both stages.

use crate::data::{caption, render, Scene, SceneOptions, Split, Video};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};

/// Seeds of a run's scenes: scene `i` of a run with `seed` uses `seed * 2^32 + i`, so runs
/// with different seeds never share scenes.
pub fn scene_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_shl(32).wrapping_add(index)
}

/// One rendered training clip and its caption.
pub struct Clip {
    /// The frames.
    pub video: Video,
    /// The scene's caption.
    pub caption: String,
}

/// Renders training scene `index` of a run with `seed` at `frames` frames of `size`x`size`.
pub fn training_clip(seed: u64, index: u64, frames: usize, size: usize) -> Result<Clip> {
    let scene = Scene::sample(
        scene_seed(seed, index),
        Split::Train,
        &SceneOptions::default(),
    )?;
    Ok(Clip {
        video: render(&scene, frames, size, size)?,
        caption: caption(&scene),
    })
}

/// Videos as one `[B, 3, F, H, W]` f32 tensor in [-1, 1] on `device` (all the same size).
pub fn video_tensor(videos: &[&Video], device: &Device) -> Result<Tensor> {
    let first = videos
        .first()
        .ok_or_else(|| Error::Usage("no videos to stack".to_string()))?;
    let (f, h, w) = (first.frames(), first.height(), first.width());
    let mut values = Vec::with_capacity(videos.len() * f * h * w * 3);
    for video in videos {
        if (video.frames(), video.height(), video.width()) != (f, h, w) {
            return Err(Error::Usage(format!(
                "videos of different sizes cannot be stacked: {f}x{h}x{w} and {}x{}x{}",
                video.frames(),
                video.height(),
                video.width()
            )));
        }
        values.extend(video.rgb().iter().map(|&v| v as f32 / 127.5 - 1.0));
    }
    // [B, F, H, W, 3] -> [B, 3, F, H, W]
    Ok(
        Tensor::from_vec(values, (videos.len(), f, h, w, 3), &Device::Cpu)?
            .permute((0, 4, 1, 2, 3))?
            .contiguous()?
            .to_device(device)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor holds each pixel's channels at [b, c, f, y, x], scaled to [-1, 1].
    #[test]
    fn video_tensor_places_every_channel() -> Result<()> {
        let clip = training_clip(3, 9, 5, 16)?;
        let t = video_tensor(&[&clip.video, &clip.video], &Device::Cpu)?;
        assert_eq!(t.dims(), &[2, 3, 5, 16, 16]);
        let rgb = clip.video.rgb();
        for (f, y, x, c) in [(0, 0, 0, 0), (4, 15, 15, 2), (2, 7, 9, 1)] {
            let expected = rgb[((f * 16 + y) * 16 + x) * 3 + c] as f32 / 127.5 - 1.0;
            let got = t
                .get(1)?
                .get(c)?
                .get(f)?
                .get(y)?
                .get(x)?
                .to_scalar::<f32>()?;
            assert_eq!(got, expected, "f{f} y{y} x{x} c{c}");
        }
        Ok(())
    }
}

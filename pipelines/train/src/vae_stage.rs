//! Training the VAE for reconstruction: random crops of rendered clips (the VAE is
//! convolutional and causal in time, so crops teach it the whole frame), encoded to the
//! posterior, sampled, decoded, and compared by L1 distance, with a small KL term that keeps the
//! latents near a unit Gaussian. After training, the latents' per-channel statistics are
//! measured and written into the VAE's config (the transformer sees normalised latents), and
//! its reconstruction of whole unseen clips is measured frame by frame.

use crate::clips::{training_clip, video_tensor};
use crate::error::{Error, Result};
use crate::trainer::{step_rng, Objective};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use vae::{VaeConfig, WanVae};

/// Settings of the reconstruction objective.
#[derive(Clone, Debug)]
pub struct ReconstructionOptions {
    /// Crops per step.
    pub batch: usize,
    /// Side of the square crops, in pixels (a multiple of the VAE's spatial ratio).
    pub crop: usize,
    /// Frames per crop (`1 + 4k`).
    pub crop_frames: usize,
    /// Frames and side of the clips the crops come from.
    pub clip: (usize, usize),
    /// Weight of the KL term (per latent element, next to the per-pixel L1).
    pub kl_weight: f64,
    /// Seed of the clips and crops.
    pub seed: u64,
}

/// The VAE's training objective.
pub struct Reconstruction {
    config: VaeConfig,
    options: ReconstructionOptions,
}

impl Reconstruction {
    /// The objective for a VAE of `config`.
    pub fn new(config: VaeConfig, options: ReconstructionOptions) -> Result<Self> {
        let (frames, side) = options.clip;
        let ratio = config.spatial_ratio();
        let fits = options.crop > 0
            && options.crop.is_multiple_of(ratio)
            && options.crop <= side
            && options.crop_frames > 0
            && (options.crop_frames - 1).is_multiple_of(config.temporal_ratio())
            && options.crop_frames <= frames
            && options.batch > 0;
        if !fits {
            return Err(Error::Usage(format!(
                "VAE crops of {}x{} pixels and {} frames do not fit {side}x{side} clips of {frames} frames: \
                 the side must be a multiple of {ratio} and the frames 1 + {}k",
                options.crop,
                options.crop,
                options.crop_frames,
                config.temporal_ratio()
            )));
        }
        Ok(Self { config, options })
    }

    /// The crops of step `step`: `[B, 3, F, crop, crop]` on `device`.
    fn crops(&self, step: u64, device: &Device) -> Result<Tensor> {
        let o = &self.options;
        let mut rng = step_rng(o.seed, step);
        let (frames, side) = o.clip;
        let mut crops = Vec::with_capacity(o.batch);
        for i in 0..o.batch {
            let index = step * o.batch as u64 + i as u64;
            let clip = training_clip(o.seed, index, frames, side)?;
            let whole = video_tensor(&[&clip.video], device)?;
            let pick = |rng: &mut pipelines::t2v::noise::NoiseGenerator, room: usize| {
                (rng.next_u64() % (room as u64 + 1)) as usize
            };
            let t0 = pick(&mut rng, frames - o.crop_frames);
            let y0 = pick(&mut rng, side - o.crop);
            let x0 = pick(&mut rng, side - o.crop);
            crops.push(
                whole
                    .narrow(2, t0, o.crop_frames)?
                    .narrow(3, y0, o.crop)?
                    .narrow(4, x0, o.crop)?,
            );
        }
        Ok(Tensor::cat(&crops, 0)?)
    }
}

impl Objective for Reconstruction {
    fn loss(&mut self, vb: VarBuilder, step: u64) -> Result<Tensor> {
        let device = vb.device().clone();
        let vae = WanVae::new(&self.config, vb)?;
        let video = self.crops(step, &device)?;
        let (mean, logvar) = vae.encode_posterior(&video)?;
        let logvar = logvar.to_dtype(DType::F32)?.clamp(-30f32, 20f32)?;
        let mean = mean.to_dtype(DType::F32)?;
        let mut rng = step_rng(self.options.seed ^ 0x5eed, step);
        let eps = Tensor::from_vec(rng.normals(mean.elem_count()), mean.shape(), &Device::Cpu)?
            .to_device(&device)?;
        let z = (&mean + (logvar.affine(0.5, 0.0)?.exp()? * eps)?)?;
        let recon = vae.decode_unclamped(&z)?.to_dtype(DType::F32)?;
        let l1 = (recon - &video)?.abs()?.mean_all()?;
        // KL(N(mean, var) || N(0, 1)) per latent element
        let kl = (((mean.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?
            .affine(0.5, 0.0)?
            .mean_all()?;
        Ok(l1.add(&kl.affine(self.options.kl_weight, 0.0)?)?)
    }
}

/// How well `vae` reconstructs `clips` whole clips it never saw (`(frames, side)`, run
/// `seed`): the PSNR of each frame in dB (pixels in [-1, 1], so a peak-to-peak range of 2),
/// from the mean squared error over the clips, at most
/// [`PSNR_CAP`](vdit_core::metrics::PSNR_CAP). Frames after the first
/// four-frame chunk show whether the VAE carries its causal caches across chunks.
pub fn reconstruction_psnr(
    vae: &WanVae,
    clips: usize,
    (frames, side): (usize, usize),
    seed: u64,
    device: &Device,
) -> Result<Vec<f64>> {
    let mut squared = vec![0.0f64; frames];
    for i in 0..clips {
        let clip = training_clip(seed, i as u64, frames, side)?;
        let video = video_tensor(&[&clip.video], device)?;
        let decoded = vae.decode(&vae.encode(&video)?, &vae::DecodeOptions::default())?;
        // [1, 3, F, H, W] -> per-frame mean squared error
        let error = (decoded.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? - &video)?
            .sqr()?
            .transpose(1, 2)?
            .flatten_from(2)?
            .mean(D::Minus1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        for (sum, e) in squared.iter_mut().zip(error) {
            *sum += f64::from(e) / clips.max(1) as f64;
        }
    }
    Ok(squared
        .into_iter()
        .map(|mse| vdit_core::metrics::capped_psnr(mse, 2.0))
        .collect())
}

/// Per-channel mean and standard deviation of the posterior means of `clips` training clips
/// (`(frames, side)`, run `seed`), for the VAE config's `latents_mean` and `latents_std`.
pub fn latent_statistics(
    vae: &WanVae,
    clips: usize,
    (frames, side): (usize, usize),
    seed: u64,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut means = vec![];
    for i in 0..clips {
        let clip = training_clip(seed, i as u64, frames, side)?;
        means.push(
            vae.encode(&video_tensor(&[&clip.video], device)?)?
                .to_dtype(DType::F32)?,
        );
    }
    // [N, C, T, H, W] -> [C, N*T*H*W]
    let z = Tensor::cat(&means, 0)?.transpose(0, 1)?.flatten_from(1)?;
    let mean = z.mean_keepdim(D::Minus1)?;
    let std = z.broadcast_sub(&mean)?.sqr()?.mean(D::Minus1)?.sqrt()?;
    let to_f64 = |t: Tensor| -> Result<Vec<f64>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    let std = to_f64(std)?.into_iter().map(|s| s.max(1e-3)).collect();
    Ok((to_f64(mean)?, std))
}

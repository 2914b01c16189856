//! Few-step sampling of DMD-distilled models (FastVideo's FastWan): at each listed timestep the
//! model's velocity turns the latents into a prediction of the clean latents, which are then
//! noised afresh to the next timestep; the last prediction is the result.
//!
//! The noise level of a timestep `t` is that of the nearest of the 1000 training timesteps after
//! the flow shift (FastVideo looks it up the same way: `argmin |timesteps - t|` over
//! `FlowMatchEulerDiscreteScheduler(shift)`'s training schedule, f32). The transformer is given
//! `t` itself.

use super::config::SchedulerConfig;
use super::sigmas::shift_sigma_f32;
use super::{check_step, Scheduler};
use crate::error::fail;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// The DMD sampler over a fixed list of timesteps, with the noise to add after each step but
/// the last.
#[derive(Debug)]
pub struct FewStepDmd {
    timesteps: Vec<f64>,
    /// The noise level of each timestep (f32 precision), then 0.
    sigmas: Vec<f64>,
    /// `timesteps.len() - 1` noise tensors, one per re-noising (f32, any device).
    renoise: Vec<Tensor>,
    device: Device,
}

impl FewStepDmd {
    /// The sampler for `timesteps` (decreasing, each from 1 to `num_train_timesteps`) under
    /// `cfg`'s flow shift; `renoise` holds one noise tensor per step but the last.
    pub fn new(
        cfg: &SchedulerConfig,
        timesteps: &[u32],
        renoise: Vec<Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        if timesteps.is_empty() {
            fail!(Scheduler, "the dmd sampler needs at least one timestep");
        }
        if let Some(&t) = timesteps.iter().find(|&&t| t == 0 || t as usize > n_train) {
            fail!(
                Scheduler,
                "timestep {t} is outside 1..={n_train} (the noise schedule's training timesteps)"
            );
        }
        if renoise.len() + 1 != timesteps.len() {
            fail!(
                Scheduler,
                "the dmd sampler over {} timesteps needs {} noise tensors to re-noise with, got {}",
                timesteps.len(),
                timesteps.len() - 1,
                renoise.len()
            );
        }
        let grid = TrainingSigmas::new(n_train, cfg.shift);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| grid.sigma_at(t)).collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps: timesteps.iter().map(|&t| t as f64).collect(),
            sigmas,
            renoise,
            device: device.clone(),
        })
    }
}

impl Scheduler for FewStepDmd {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `x0 = x - sigma * v`; then `(1 - sigma_next) * x0 + sigma_next * noise`, or `x0` after
    /// the last step. f32 math, returned in `model_output`'s dtype.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        check_step(self, model_output, step_index, sample, &self.device)?;
        let sigma = self.sigmas[step_index] as f32 as f64;
        let velocity = model_output.to_dtype(DType::F32)?;
        let clean = (sample.to_dtype(DType::F32)? - (velocity * sigma)?)?;
        let next = match self.renoise.get(step_index) {
            None => clean,
            Some(noise) => {
                let noise = noise.to_device(&self.device)?.to_dtype(DType::F32)?;
                if noise.dims() != clean.dims() {
                    fail!(
                        Scheduler,
                        "re-noising tensor {} has shape {:?}, the latents {:?}",
                        step_index + 1,
                        noise.dims(),
                        clean.dims()
                    );
                }
                let next_sigma = self.sigmas[step_index + 1] as f32 as f64;
                ((clean * (1.0 - next_sigma))? + (noise * next_sigma)?)?
            }
        };
        Ok(next.to_dtype(model_output.dtype())?)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

/// The shifted training noise schedule: timesteps `N, N-1, ..., 1`, sigmas `t / N` shifted (f32
/// arithmetic, as torch), and timesteps `sigma * N` again.
struct TrainingSigmas {
    /// `(timestep, sigma)` from the noisiest.
    levels: Vec<(f32, f32)>,
}

impl TrainingSigmas {
    fn new(n_train: usize, shift: f64) -> Self {
        let levels = (1..=n_train)
            .rev()
            .map(|t| {
                let sigma = shift_sigma_f32(t as f32 / n_train as f32, shift);
                (sigma * n_train as f32, sigma)
            })
            .collect();
        Self { levels }
    }

    /// The sigma of the training timestep nearest `t` (the first of equals, as `argmin`).
    fn sigma_at(&self, t: u32) -> f64 {
        let mut best = (f64::INFINITY, 0.0);
        for &(timestep, sigma) in &self.levels {
            let distance = (timestep as f64 - t as f64).abs();
            if distance < best.0 {
                best = (distance, sigma as f64);
            }
        }
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmd(timesteps: &[u32], shift: f64) -> Result<FewStepDmd> {
        let mut cfg = SchedulerConfig::wan_default(shift);
        cfg.num_train_timesteps = 1000;
        let noise = (1..timesteps.len())
            .map(|_| Tensor::zeros(4, DType::F32, &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        FewStepDmd::new(&cfg, timesteps, noise, &Device::Cpu)
    }

    /// Timestep 1000 is pure noise; a timestep's sigma is the shifted one of its nearest
    /// training step, which at shift 1 is `t / 1000` exactly.
    #[test]
    fn sigmas_of_timesteps() -> Result<()> {
        let s = dmd(&[1000, 757, 522], 8.0)?;
        assert_eq!(s.sigmas()[0], 1.0);
        assert_eq!(*s.sigmas().last().unwrap(), 0.0);
        // shifted training levels near 757 and 522: the nearest one's sigma is within half a
        // training step (1/1000 before the shift) of t/1000
        for (i, t) in [(1, 757.0), (2, 522.0)] {
            assert!(
                (s.sigmas()[i] - t / 1000.0).abs() < 2e-3,
                "{:?}",
                s.sigmas()
            );
        }
        let flat = dmd(&[1000, 500, 1], 1.0)?;
        assert_eq!(flat.sigmas(), &[1.0, 0.5, 0.001f32 as f64, 0.0]);
        Ok(())
    }

    /// One step of the update against the formula, worked by hand: x0 = x - sigma v, then
    /// (1 - s') x0 + s' n.
    #[test]
    fn step_renoises_the_clean_prediction() -> Result<()> {
        let cfg = SchedulerConfig::wan_default(1.0);
        let noise = Tensor::new(&[1.0f32, -1.0], &Device::Cpu)?;
        let mut s = FewStepDmd::new(&cfg, &[500, 250], vec![noise], &Device::Cpu)?;
        let x = Tensor::new(&[2.0f32, 4.0], &Device::Cpu)?;
        let v = Tensor::new(&[2.0f32, -2.0], &Device::Cpu)?;
        // x0 = [1, 5]; next = 0.75 x0 + 0.25 n = [1.0, 3.5]
        let next = s.step(&v, 0, &x)?.to_vec1::<f32>()?;
        assert_eq!(next, vec![1.0, 3.5]);
        // the last step returns x0 = x - 0.25 v
        let last = s.step(&v, 1, &x)?.to_vec1::<f32>()?;
        assert_eq!(last, vec![1.5, 4.5]);
        Ok(())
    }

    /// Bad timestep lists and noise counts are refused with one line.
    #[test]
    fn bad_plans_are_refused() {
        for (timesteps, want) in [
            (&[][..], "at least one"),
            (&[1001, 500][..], "outside 1..=1000"),
            (&[500, 0][..], "outside"),
        ] {
            let err = dmd(timesteps, 3.0).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let cfg = SchedulerConfig::wan_default(3.0);
        let err = FewStepDmd::new(&cfg, &[1000, 500], vec![], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 1 noise tensors"), "{err}");
    }
}

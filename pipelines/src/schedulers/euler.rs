//! diffusers' `FlowMatchEulerDiscreteScheduler` (static shift, no stochastic sampling).

use super::config::SchedulerConfig;
use super::sigmas::{linspace, shift_sigma, shift_sigma_f32, to_f32_precision};
use super::{check_step, Scheduler};
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// First-order Euler integration of the flow ODE: `x <- x + (sigma_next - sigma) * v`.
#[derive(Debug)]
pub struct FlowMatchEuler {
    timesteps: Vec<f64>,
    /// `num_steps + 1` noise levels (f32 precision), the last one 0.
    sigmas: Vec<f64>,
    device: Device,
}

impl FlowMatchEuler {
    /// The schedule of `set_timesteps(num_steps)`: diffusers first shifts the 1000 training
    /// sigmas (in f32), spaces the steps between the shifted extremes, then shifts those again.
    pub fn new(cfg: &SchedulerConfig, num_steps: usize, device: &Device) -> Self {
        let n_train = cfg.num_train_timesteps as f64;
        let train_sigma_min = shift_sigma_f32(1.0 / cfg.num_train_timesteps as f32, cfg.shift);
        let train_sigma_max = shift_sigma_f32(1.0, cfg.shift);
        let mut sigmas: Vec<f64> = linspace(
            train_sigma_max as f64 * n_train,
            train_sigma_min as f64 * n_train,
            num_steps,
        )
        .into_iter()
        .map(|t| to_f32_precision(shift_sigma(t / n_train, cfg.shift)))
        .collect();
        let timesteps = sigmas
            .iter()
            .map(|&s| (s as f32 * cfg.num_train_timesteps as f32) as f64)
            .collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            device: device.clone(),
        }
    }
}

impl Scheduler for FlowMatchEuler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Computes in f32 and returns `model_output`'s dtype, as diffusers does (pass an f32 model
    /// output to keep f32 latents).
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        check_step(self, model_output, step_index, sample, &self.device)?;
        let dt = self.sigmas[step_index + 1] as f32 - self.sigmas[step_index] as f32;
        let velocity = model_output.to_dtype(DType::F32)?;
        let next = (sample.to_dtype(DType::F32)? + (velocity * dt as f64)?)?;
        Ok(next.to_dtype(model_output.dtype())?)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

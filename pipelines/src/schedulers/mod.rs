//! Flow-matching schedulers with diffusers' semantics: the timesteps the transformer is given
//! and the update from one noise level to the next.
//!
//! As in diffusers' WanPipeline, latents start as unit Gaussian noise (`init_noise_sigma` is 1)
//! and step `i` passes `timesteps()[i]` to the transformer for every batch item, as a float
//! (UniPC's timesteps are whole numbers, diffusers hands them over as int64; Euler's are f32
//! values such as 960.129).

mod config;
mod euler;
mod few_step;
mod sigmas;
mod unipc;

pub use config::{FinalSigma, SchedulerConfig, SchedulerKind, SolverType};
pub use euler::FlowMatchEuler;
pub use few_step::FewStepDmd;
pub use unipc::UniPcMultistep;

use crate::error::fail;
use crate::Result;
use candle_core::{Device, Tensor};

/// A sampler over a fixed number of steps.
pub trait Scheduler {
    /// The timestep given to the transformer at each step (one per step).
    fn timesteps(&self) -> &[f64];

    /// The noise level at each step boundary (one more than the steps; f32 precision).
    fn sigmas(&self) -> &[f64];

    /// Advances `sample` by step `step_index` given the model's velocity prediction for it.
    fn step(&mut self, model_output: &Tensor, step_index: usize, sample: &Tensor)
        -> Result<Tensor>;

    /// The scale of the initial noise.
    fn init_noise_sigma(&self) -> f64;
}

/// Builds a scheduler set to `num_steps` steps whose tensors live on `device`.
pub fn build_scheduler(
    kind: SchedulerKind,
    cfg: &SchedulerConfig,
    num_steps: usize,
    device: &Device,
) -> Result<Box<dyn Scheduler>> {
    cfg.validate(kind, num_steps)?;
    Ok(match kind {
        SchedulerKind::Euler => Box::new(FlowMatchEuler::new(cfg, num_steps, device)),
        SchedulerKind::UniPc => Box::new(UniPcMultistep::new(cfg, num_steps, device)),
    })
}

/// Checks a step's index, shapes and device before any math.
fn check_step(
    scheduler: &dyn Scheduler,
    model_output: &Tensor,
    step_index: usize,
    sample: &Tensor,
    device: &Device,
) -> Result<()> {
    let steps = scheduler.timesteps().len();
    if step_index >= steps {
        fail!(
            Scheduler,
            "step {step_index} is past the schedule's {steps} steps"
        );
    }
    if model_output.dims() != sample.dims() {
        fail!(
            Scheduler,
            "model output shape {:?} does not match the sample's {:?}",
            model_output.dims(),
            sample.dims()
        );
    }
    if !sample.device().same_device(device) || !model_output.device().same_device(device) {
        fail!(
            Scheduler,
            "scheduler tensors must be on the scheduler's device {device:?}"
        );
    }
    Ok(())
}

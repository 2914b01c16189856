//! Training the transformer with Wan's flow-matching objective: a clip's latents `x0`, noise
//! `e`, a noise level `sigma` drawn uniformly and shifted as the sampler shifts it, the model
//! sees `x = (1 - sigma) x0 + sigma e` at timestep `1000 sigma` and learns the velocity
//! `e - x0`; captions are dropped (replaced by the empty caption) at a fixed rate so that
//! classifier-free guidance works.

use crate::error::{Error, Result};
use crate::latent_set::LatentSet;
use crate::trainer::{step_rng, Objective};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use dit::{WanConfig, WanTransformer};
use sparse::{AttentionRouter, MethodSpec, Registry};
use vdit_core::Step;

/// The self-attention a run trains through: a method spec, and for methods with a `sparsity`
/// option a ramp from dense to the spec's sparsity over the first steps (as VSA is trained).
#[derive(Clone, Debug)]
pub struct AttentionPlan {
    spec: MethodSpec,
    ramp_steps: u64,
}

impl AttentionPlan {
    /// Trains through `spec`, its sparsity (if it has one) reached after `ramp_steps` steps.
    /// A training forward pass is no denoising step, so a sparse method's dense first steps
    /// (VMoBA's 12) do not apply unless `dense_steps` is given.
    pub fn new(mut spec: MethodSpec, ramp_steps: u64, registry: &Registry) -> Result<Self> {
        if spec.name != "dense" && spec.options.get("dense_steps").is_none() {
            spec.options.set("dense_steps", "0");
        }
        registry.schedule(&spec)?;
        if ramp_steps > 0 && spec.options.get("sparsity").is_none() {
            return Err(Error::Usage(format!(
                "--sparsity-ramp needs a method with a sparsity (e.g. vsa:sparsity=0.875), not `{spec}`"
            )));
        }
        Ok(Self { spec, ramp_steps })
    }

    /// The method spec at `step`: the target sparsity scaled by the ramp's progress.
    pub fn spec_at(&self, step: u64) -> Result<MethodSpec> {
        let mut spec = self.spec.clone();
        if self.ramp_steps > 0 {
            let target: f64 = spec
                .options
                .get("sparsity")
                .unwrap_or_default()
                .parse()
                .map_err(|_| {
                    Error::Usage(format!("the sparsity of `{}` is not a number", self.spec))
                })?;
            let progress = (step as f64 / self.ramp_steps as f64).min(1.0);
            spec.options
                .set("sparsity", format!("{}", target * progress));
        }
        Ok(spec)
    }

    /// The attention spec as given.
    pub fn spec(&self) -> &MethodSpec {
        &self.spec
    }
}

/// The share of each step's batch one replica computes (data parallelism): the `rank`-th of
/// `ranks` equal, consecutive parts of what a single device would draw for the whole batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This replica, from 0.
    pub rank: usize,
    /// Replicas.
    pub ranks: usize,
}

/// Settings of the flow-matching objective.
#[derive(Clone, Debug)]
pub struct FlowMatchingOptions {
    /// Clips per step on this replica (the step's batch is `batch * shard.ranks`).
    pub batch: usize,
    /// This replica's share of the batch.
    pub shard: Shard,
    /// Flow shift applied to the drawn noise levels (the sampler's `flow_shift`).
    pub shift: f64,
    /// Share of captions replaced by the empty caption.
    pub caption_dropout: f64,
    /// Seed of the per-step draws.
    pub seed: u64,
    /// Compute dtype of the forward pass.
    pub dtype: DType,
}

/// The transformer's training objective over a [`LatentSet`].
pub struct FlowMatching<'a> {
    config: WanConfig,
    set: &'a LatentSet,
    options: FlowMatchingOptions,
    attention: AttentionPlan,
    registry: &'a Registry,
}

impl<'a> FlowMatching<'a> {
    /// The objective for a transformer of `config` over `set`.
    pub fn new(
        config: WanConfig,
        set: &'a LatentSet,
        options: FlowMatchingOptions,
        attention: AttentionPlan,
        registry: &'a Registry,
    ) -> Result<Self> {
        if options.batch == 0
            || !(0.0..1.0).contains(&options.caption_dropout)
            || options.shift <= 0.0
            || options.shard.rank >= options.shard.ranks
        {
            return Err(Error::Usage(
                "the batch must be at least 1, the caption dropout in [0, 1), the shift positive \
                 and the replica one of the run's"
                    .to_string(),
            ));
        }
        Ok(Self {
            config,
            set,
            options,
            attention,
            registry,
        })
    }
}

/// `sigma` for a uniform draw `u`, shifted as the flow-matching sampler shifts its sigmas.
pub fn shifted_sigma(u: f64, shift: f64) -> f64 {
    shift * u / (1.0 + (shift - 1.0) * u)
}

impl Objective for FlowMatching<'_> {
    fn loss(&mut self, vb: VarBuilder, step: u64) -> Result<Tensor> {
        let device: Device = vb.device().clone();
        let model = WanTransformer::new(&self.config, vb)?;
        let mut rng = step_rng(self.options.seed, step);
        // the whole batch's draws, in the order one device draws them; this replica's share
        let b = self.options.batch;
        let Shard { rank, ranks } = self.options.shard;
        let whole = b * ranks;
        let mine = rank * b..(rank + 1) * b;
        let n = self.set.len() as u64;
        let clips: Vec<u32> = (0..whole).map(|_| (rng.next_u64() % n) as u32).collect();
        let dropped: Vec<bool> = (0..whole)
            .map(|_| unit(&mut rng) < self.options.caption_dropout)
            .collect();
        let sigmas: Vec<f32> = (0..whole)
            .map(|_| shifted_sigma(unit(&mut rng), self.options.shift) as f32)
            .collect();
        let (clips, dropped) = (&clips[mine.clone()], &dropped[mine.clone()]);
        let sigmas = sigmas[mine.clone()].to_vec();
        let (x0, text) = self.set.batch(clips, dropped)?;
        let per_clip = x0.elem_count() / b;
        let noise =
            rng.normals(per_clip * whole)[mine.start * per_clip..mine.end * per_clip].to_vec();
        let noise = Tensor::from_vec(noise, x0.shape(), &Device::Cpu)?.to_device(&device)?;
        let sigma = Tensor::from_vec(sigmas.clone(), (b, 1, 1, 1, 1), &device)?;
        let noisy = (x0.broadcast_mul(&(1.0 - &sigma)?)? + noise.broadcast_mul(&sigma)?)?;
        let target = (&noise - &x0)?;
        let timesteps: Vec<f32> = sigmas.iter().map(|s| s * 1000.0).collect();
        let timesteps = Tensor::from_vec(timesteps, b, &device)?;
        let router = AttentionRouter::new(self.registry.schedule(&self.attention.spec_at(step)?)?);
        let dtype = self.options.dtype;
        let velocity = model.forward(
            &noisy.to_dtype(dtype)?,
            &timesteps,
            &text.to_dtype(dtype)?,
            &router,
            Step::SINGLE,
        )?;
        Ok((velocity.to_dtype(DType::F32)? - target)?
            .sqr()?
            .mean_all()?)
    }
}

/// A uniform draw in (0, 1].
fn unit(rng: &mut pipelines::t2v::noise::NoiseGenerator) -> f64 {
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shift maps 0 and 1 to themselves and pushes the middle up (more noise), as
    /// `shift * s / (1 + (shift - 1) s)` does.
    #[test]
    fn shifted_sigma_matches_the_sampler_formula() {
        assert_eq!(shifted_sigma(0.0, 3.0), 0.0);
        assert_eq!(shifted_sigma(1.0, 3.0), 1.0);
        assert!((shifted_sigma(0.5, 3.0) - 0.75).abs() < 1e-12);
        assert!((shifted_sigma(0.3, 1.0) - 0.3).abs() < 1e-12);
    }

    /// The ramp scales the target sparsity with progress and holds it after the ramp.
    #[test]
    fn sparsity_ramp_reaches_the_target() -> Result<()> {
        let registry = Registry::builtin();
        let plan = AttentionPlan::new("vsa:sparsity=0.8".parse()?, 100, &registry)?;
        let at = |s| {
            plan.spec_at(s)
                .map(|spec| spec.options.get("sparsity").unwrap_or_default().to_string())
        };
        assert_eq!(at(0)?, "0");
        assert_eq!(at(50)?, "0.4");
        assert_eq!(at(100)?, "0.8");
        assert_eq!(at(1000)?, "0.8");
        assert!(AttentionPlan::new("dense".parse()?, 10, &registry).is_err());
        Ok(())
    }
}

//! The training loop shared by every stage: one [`Objective`] gives the loss of a step from
//! the parameters; the loop backpropagates, clips, steps AdamW on the learning-rate schedule,
//! updates the EMA, logs the step, and checkpoints periodically, on request and at the end.

use crate::error::{Error, Result};
use crate::optim::{
    average_gradients, checkpoint_dir, clip_grad_norm, latest, prune, AdamW, AdamWConfig,
    Checkpoint, Ema, LossLog, LossRow, LrSchedule, Snapshot, DEFAULT_SHARD_BYTES,
};
use crate::params::Params;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use pipelines::t2v::noise::NoiseGenerator;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vdit_core::parallel::Collective;

/// A training objective: the scalar f32 loss of step `step` (from 0) computed by a model
/// built from `vb`. All its randomness comes from the step (see [`step_rng`]), so a resumed
/// run repeats an uninterrupted one exactly.
pub trait Objective {
    /// The loss of step `step`.
    fn loss(&mut self, vb: VarBuilder, step: u64) -> Result<Tensor>;
}

/// The random stream of step `step` of a run seeded `seed`.
pub fn step_rng(seed: u64, step: u64) -> NoiseGenerator {
    NoiseGenerator::new(seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// How a run trains.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// Steps of the whole run.
    pub steps: u64,
    /// The learning rate by step.
    pub schedule: LrSchedule,
    /// AdamW's settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit.
    pub clip: f64,
    /// EMA decay of the weights that are shipped.
    pub ema_decay: f64,
    /// Steps between checkpoints (0: only at the end and on interruption).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are removed).
    pub keep_checkpoints: usize,
    /// Compute dtype of the forward pass (masters stay f32).
    pub dtype: DType,
    /// The training device.
    pub device: Device,
    /// The run folder: `checkpoints/`, `loss.csv`.
    pub run_dir: PathBuf,
    /// The run's configuration, stored in every checkpoint; a resumed run must match it.
    pub config: serde_json::Value,
}

/// How [`Trainer::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Every step ran.
    Done,
    /// The caller asked to stop; a checkpoint of the last step was written.
    Stopped,
}

/// Seconds spent in each phase of training steps, the device synchronised at each phase's end
/// so that GPU work is counted where it was queued.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseSeconds {
    /// The objective: the batch, the forward pass and the loss read back.
    pub forward: f64,
    /// Backpropagation.
    pub backward: f64,
    /// The gradient norm and clipping.
    pub clip: f64,
    /// The AdamW update.
    pub optimiser: f64,
    /// The EMA update.
    pub ema: f64,
}

impl PhaseSeconds {
    /// Each phase divided by `steps` (at least 1).
    fn per_step(&self, steps: u64) -> Self {
        let n = steps.max(1) as f64;
        Self {
            forward: self.forward / n,
            backward: self.backward / n,
            clip: self.clip / n,
            optimiser: self.optimiser / n,
            ema: self.ema / n,
        }
    }
}

/// A run in progress: parameters, optimiser, EMA, log.
///
/// With a `group`, the trainer is one replica of several that train one model on different
/// devices (data parallelism): each computes the gradient of its share of the batch, the
/// replicas average their gradients every step, and all apply the same update. Only replica 0
/// writes the log and the checkpoints; a stop asked of any replica takes effect on all of them
/// one step later.
pub struct Trainer {
    params: Params,
    adamw: AdamW,
    ema: Ema,
    step: u64,
    /// The loss log (`None` on replicas other than 0).
    log: Option<LossLog>,
    options: LoopOptions,
    group: Option<Box<dyn Collective>>,
    /// A stop was asked and waits for the next exchange with the other replicas.
    stop_asked: bool,
    /// Phase seconds summed over the `timed_steps` steps this trainer ran.
    phases: PhaseSeconds,
    timed_steps: u64,
}

impl Trainer {
    /// A fresh run from `params` in `options.run_dir`, which must hold no checkpoint yet; with
    /// `group`, as one replica of it.
    pub fn start(
        params: Params,
        options: LoopOptions,
        group: Option<Box<dyn Collective>>,
    ) -> Result<Self> {
        check_run_dir(&options.run_dir, false)?;
        let log = if writes_files(&group) {
            create_dir(&options.run_dir)?;
            Some(LossLog::start(&options.run_dir)?)
        } else {
            None
        };
        Ok(Self {
            adamw: AdamW::new(options.adamw)?,
            ema: Ema::new(options.ema_decay, params.vars())?,
            step: 0,
            log,
            params,
            options,
            group,
            stop_asked: false,
            phases: PhaseSeconds::default(),
            timed_steps: 0,
        })
    }

    /// Continues the run in `options.run_dir` from its latest checkpoint; `params` (any
    /// values, the run's shapes) receive the checkpoint's. With `group`, as one replica of it.
    pub fn resume(
        params: Params,
        options: LoopOptions,
        group: Option<Box<dyn Collective>>,
    ) -> Result<Self> {
        let folder = check_run_dir(&options.run_dir, true)?.ok_or_else(|| {
            Error::Usage(format!("{} holds no checkpoint", options.run_dir.display()))
        })?;
        let saved = Checkpoint::load(&folder, &options.device)?;
        if saved.config != options.config {
            return Err(Error::Checkpoint(format!(
                "checkpoint {} was made with other settings ({}); resume with the same ones, or start a new --out",
                folder.display(),
                saved.config
            )));
        }
        saved.apply(params.vars())?;
        let ema = match saved.ema {
            Some(ema) => ema,
            None => Ema::new(options.ema_decay, params.vars())?,
        };
        let log = if writes_files(&group) {
            Some(LossLog::resume(&options.run_dir, saved.step)?)
        } else {
            None
        };
        Ok(Self {
            adamw: saved.adamw,
            ema,
            step: saved.step,
            log,
            params,
            options,
            group,
            stop_asked: false,
            phases: PhaseSeconds::default(),
            timed_steps: 0,
        })
    }

    /// Steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Mean seconds per step in each phase, over the steps this trainer ran (not those before
    /// a resume).
    pub fn phases(&self) -> PhaseSeconds {
        self.phases.per_step(self.timed_steps)
    }

    /// The EMA weights (what is shipped), each in its own allocation: the EMA holds views into
    /// one vector, whose offsets the kernels that need aligned operands reject.
    pub fn ema_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        self.ema.standalone_weights()
    }

    /// Runs the remaining steps; `on_step` sees each logged row and returns false to stop
    /// (a checkpoint is then written). A non-finite loss or gradient stops the run with an
    /// error before the bad update, the last checkpoint intact. A replica that fails marks its
    /// group failed, so that the others stop at their next exchange instead of waiting.
    pub fn run(
        &mut self,
        objective: &mut dyn Objective,
        on_step: &mut dyn FnMut(&LossRow) -> bool,
    ) -> Result<Finish> {
        let finish = self.run_steps(objective, on_step);
        if let (Err(e), Some(group)) = (&finish, &self.group) {
            group.abort(&format!("replica {} failed: {e}", group.rank()));
        }
        finish
    }

    fn run_steps(
        &mut self,
        objective: &mut dyn Objective,
        on_step: &mut dyn FnMut(&LossRow) -> bool,
    ) -> Result<Finish> {
        while self.step < self.options.steps {
            let started = Instant::now();
            let step = self.step;
            let vb = self
                .params
                .var_builder(self.options.dtype, &self.options.device);
            let loss = objective.loss(vb, step)?;
            let mut value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            let mut lap = Lap::new(started);
            self.phases.forward += lap.next(&self.options.device)?;
            let mut grads = loss.backward()?;
            let mut stop = false;
            if let Some(group) = &self.group {
                let agreed = average_gradients(
                    group.as_ref(),
                    self.params.vars(),
                    &mut grads,
                    value,
                    self.stop_asked,
                )?;
                value = agreed.loss;
                stop = agreed.stop;
            }
            self.phases.backward += lap.next(&self.options.device)?;
            let norm = clip_grad_norm(self.params.vars(), &mut grads, self.options.clip)?;
            self.phases.clip += lap.next(&self.options.device)?;
            if !value.is_finite() || !norm.is_finite() {
                if let Some(log) = &mut self.log {
                    log.flush()?;
                }
                return Err(Error::Usage(format!(
                    "training diverged at step {step} (loss {value}, gradient norm {norm}); \
                     resume from the last checkpoint with a lower --lr"
                )));
            }
            let lr = self.options.schedule.lr(step);
            self.adamw.step(self.params.vars(), &grads, lr)?;
            self.phases.optimiser += lap.next(&self.options.device)?;
            self.ema.update(self.params.vars())?;
            self.phases.ema += lap.next(&self.options.device)?;
            self.timed_steps += 1;
            self.step += 1;
            let row = LossRow {
                step: self.step,
                loss: value,
                lr,
                grad_norm: norm,
                seconds: started.elapsed().as_secs_f64(),
            };
            if let Some(log) = &mut self.log {
                log.append(&row)?;
            }
            let every = self.options.checkpoint_every;
            if every > 0 && self.step.is_multiple_of(every) && self.step < self.options.steps {
                self.checkpoint()?;
            }
            // alone, a stop takes effect now; among replicas, at the exchange that agrees on it
            self.stop_asked |= !on_step(&row);
            let stop = if self.group.is_some() {
                stop
            } else {
                self.stop_asked
            };
            if stop {
                self.checkpoint()?;
                return Ok(Finish::Stopped);
            }
        }
        self.checkpoint()?;
        Ok(Finish::Done)
    }

    /// Writes a checkpoint of the current step (and flushes the log); returns its folder.
    /// Replicas other than 0 write nothing (replica 0's checkpoint holds the same weights).
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let folder = checkpoint_dir(&self.options.run_dir, self.step);
        let Some(log) = &mut self.log else {
            return Ok(folder);
        };
        log.flush()?;
        Snapshot {
            step: self.step,
            cursor: 0,
            schedule: self.options.schedule,
            config: &self.options.config,
            params: self.params.vars(),
            adamw: &self.adamw,
            ema: Some(&self.ema),
        }
        .save(&folder, DEFAULT_SHARD_BYTES)?;
        prune(&self.options.run_dir, self.options.keep_checkpoints.max(1))?;
        Ok(folder)
    }
}

/// Consecutive phases of a step: each [`Lap::next`] waits for the device and returns the
/// seconds since the previous one.
struct Lap(Instant);

impl Lap {
    fn new(start: Instant) -> Self {
        Self(start)
    }

    fn next(&mut self, device: &Device) -> Result<f64> {
        device.synchronize()?;
        let now = Instant::now();
        let seconds = now.duration_since(self.0).as_secs_f64();
        self.0 = now;
        Ok(seconds)
    }
}

/// Checks a run folder before any work: a fresh run (`resume` false) needs one without
/// checkpoints, a resumed run one with; returns the latest checkpoint.
pub fn check_run_dir(run_dir: &Path, resume: bool) -> Result<Option<PathBuf>> {
    match (latest(run_dir), resume) {
        (Some(found), false) => Err(Error::Usage(format!(
            "{} already holds checkpoint {}: give --resume to continue that run, or another --out",
            run_dir.display(),
            found.display()
        ))),
        (None, true) => Err(Error::Usage(format!(
            "{} holds no checkpoint to resume: start without --resume",
            run_dir.display()
        ))),
        (found, _) => Ok(found),
    }
}

/// Whether a trainer in `group` writes the run's files: alone, or as replica 0.
fn writes_files(group: &Option<Box<dyn Collective>>) -> bool {
    group.as_ref().is_none_or(|g| g.rank() == 0)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))
}

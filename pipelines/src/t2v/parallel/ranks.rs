//! The ranks of a multi-device run: what each exchanges through ([`RankLinks`]) and the threads
//! that run ranks 1.. ([`Ranks`]).

use super::plan::Placement;
use crate::error::fail;
use crate::schedulers::SchedulerConfig;
use crate::t2v::pipeline::{Denoiser, Noise};
use crate::t2v::progress::Silent;
use crate::t2v::record::device_name;
use crate::t2v::settings::Settings;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use dit::LoraSet;
use sparse::{AttentionRouter, DensityReport};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use vdit_core::parallel::{Collective, GroupHealth, LocalGroup, DEFAULT_TIMEOUT};

/// What one rank exchanges through: its sequence-parallel group and its guidance partner.
pub struct RankLinks {
    /// This rank.
    pub rank: usize,
    /// The pass this rank computes when guidance is split: 0 conditional, 1 unconditional.
    pub pass: usize,
    /// The ranks splitting each forward pass's tokens with this one, if any.
    pub sequence: Option<Box<dyn Collective>>,
    /// The rank computing the other guidance pass, if guidance is split.
    pub guidance: Option<Box<dyn Collective>>,
    health: GroupHealth,
}

impl RankLinks {
    /// The links of a run on one device: none.
    pub fn single() -> Self {
        Self {
            rank: 0,
            pass: 0,
            sequence: None,
            guidance: None,
            health: GroupHealth::new(),
        }
    }

    /// The links of every rank of `plan`, rank `r` on `devices[r]`: NCCL between GPUs where
    /// the build has it, else exchanges through host memory.
    pub fn connect(placement: &Placement) -> Result<Vec<Self>> {
        let (plan, devices) = (&placement.plan, placement.devices.as_slice());
        let health = GroupHealth::new();
        let mut links: Vec<Self> = (0..plan.devices)
            .map(|rank| Self {
                rank,
                pass: plan.place(rank).0,
                sequence: None,
                guidance: None,
                health: health.clone(),
            })
            .collect();
        if plan.sequence > 1 {
            for ranks in plan.sequence_groups() {
                for (rank, comm) in ranks.iter().zip(group(&ranks, devices, &health)?) {
                    links[*rank].sequence = Some(comm);
                }
            }
        }
        for ranks in plan.guidance_pairs() {
            for (rank, comm) in ranks.iter().zip(group(&ranks, devices, &health)?) {
                links[*rank].guidance = Some(comm);
            }
        }
        Ok(links)
    }

    /// Marks the run failed with `reason`: every rank stops at its next collective.
    pub fn fail(&self, reason: &str) {
        self.health.fail(reason);
        for link in [&self.sequence, &self.guidance].into_iter().flatten() {
            link.abort(reason);
        }
    }

    /// The first failure of the run, if any.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// This rank's text input from the generation's `[cond; uncond]` (or `cond`): its own pass
    /// when guidance is split, else all of it.
    pub fn text(&self, batch: &Tensor) -> Result<Tensor> {
        Ok(match (&self.guidance, batch.dim(0)?) {
            (Some(_), 2) => batch.narrow(0, self.pass, 1)?,
            _ => batch.clone(),
        })
    }

    /// The velocity the sampler steps with, from this rank's transformer output `velocity`
    /// (f32, its text batch): `uncond + guidance * (cond - uncond)` when `guided`, the two
    /// passes taken from the batch or from the guidance partner.
    pub fn guide(&self, velocity: Tensor, guided: bool, guidance: f64) -> Result<Tensor> {
        if !guided {
            return Ok(velocity);
        }
        let (cond, uncond) = match &self.guidance {
            Some(pair) => {
                let both = pair.all_gather(&velocity)?;
                (both.get(0)?, both.get(1)?)
            }
            None => (velocity.narrow(0, 0, 1)?, velocity.narrow(0, 1, 1)?),
        };
        Ok((&uncond + ((cond - &uncond)? * guidance)?)?)
    }
}

/// Collectives for `ranks` (indices into `devices`).
fn group(
    ranks: &[usize],
    devices: &[Device],
    health: &GroupHealth,
) -> Result<Vec<Box<dyn Collective>>> {
    let devices: Vec<Device> = ranks.iter().map(|&r| devices[r].clone()).collect();
    collectives(&devices, health)
}

/// One collective per device, in order: NCCL between GPUs (in a build with it), otherwise
/// threads of this process exchanging through host memory.
pub fn collectives(devices: &[Device], health: &GroupHealth) -> Result<Vec<Box<dyn Collective>>> {
    #[cfg(feature = "nccl")]
    if devices.iter().all(Device::is_cuda) {
        let comms = vdit_core::parallel::NcclGroup::new(devices, DEFAULT_TIMEOUT, health.clone())?;
        return Ok(comms
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Collective>)
            .collect());
    }
    Ok(
        LocalGroup::new(devices.len(), DEFAULT_TIMEOUT, health.clone())
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Collective>)
            .collect(),
    )
}

/// One generation as ranks 1.. get it.
pub struct RankJob {
    /// The initial latents and re-noising draws (CPU).
    pub noise: Noise,
    /// The text batch `[cond; uncond]` or `cond` (CPU).
    pub text: Tensor,
    /// Settings of the generation.
    pub settings: Settings,
    /// The model's scheduler settings.
    pub scheduler: SchedulerConfig,
    /// This rank's attention router (fresh method state).
    pub router: AttentionRouter,
}

/// A thread running one rank.
struct Rank {
    name: String,
    jobs: Option<Sender<RankJob>>,
    done: Receiver<Result<DensityReport>>,
    thread: Option<JoinHandle<()>>,
}

/// Ranks 1.. of a run, each a thread with its own copy of the transformer on its device.
pub struct Ranks {
    ranks: Vec<Rank>,
}

impl Ranks {
    /// Starts one thread per link (ranks 1..), rank `links[i].rank` on `devices[i]`, each
    /// loading the transformer at `path` with `loras` in `dtype` (wait with
    /// [`Ranks::loaded`]).
    pub fn start(
        links: Vec<RankLinks>,
        devices: &[Device],
        path: &Path,
        loras: &LoraSet,
        dtype: DType,
    ) -> Self {
        let ranks: Vec<Rank> = links
            .into_iter()
            .zip(devices)
            .map(|(links, device)| {
                let (jobs, inbox) = channel();
                let (report, done) = channel();
                let name = format!("rank {} ({})", links.rank, device_name(device));
                let (device, path, loras) = (device.clone(), path.to_path_buf(), loras.clone());
                let thread_name = name.clone();
                let thread = std::thread::spawn(move || {
                    serve(
                        &thread_name,
                        links,
                        device,
                        path,
                        loras,
                        dtype,
                        inbox,
                        report,
                    )
                });
                Rank {
                    name,
                    jobs: Some(jobs),
                    done,
                    thread: Some(thread),
                }
            })
            .collect();
        Self { ranks }
    }

    /// Waits until every rank has loaded its transformer; the first failure is the error.
    pub fn loaded(self) -> Result<Self> {
        match self.collect().into_iter().find_map(Result::err) {
            Some(error) => Err(error),
            None => Ok(self),
        }
    }

    /// Hands each rank a job made by `job`.
    pub fn dispatch(&self, mut job: impl FnMut() -> Result<RankJob>) -> Result<()> {
        for rank in &self.ranks {
            let job = job()?;
            match &rank.jobs {
                Some(jobs) if jobs.send(job).is_ok() => {}
                _ => fail!(Model, "{} has stopped", rank.name),
            }
        }
        Ok(())
    }

    /// Waits for every rank's result of the job dispatched last.
    pub fn collect(&self) -> Vec<Result<DensityReport>> {
        self.ranks
            .iter()
            .map(|rank| match rank.done.recv() {
                Ok(result) => result,
                Err(_) => Err(Error::Model(format!(
                    "{} ended without a result",
                    rank.name
                ))),
            })
            .collect()
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for rank in &mut self.ranks {
            rank.jobs = None;
        }
        for rank in &mut self.ranks {
            if let Some(thread) = rank.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The body of a rank thread: load, then run jobs until the channel closes.
#[allow(clippy::too_many_arguments)]
fn serve(
    name: &str,
    links: RankLinks,
    device: Device,
    path: PathBuf,
    loras: LoraSet,
    dtype: DType,
    jobs: Receiver<RankJob>,
    done: Sender<Result<DensityReport>>,
) {
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        Denoiser::load(&path, &loras, dtype, &device)
    }))
    .unwrap_or_else(|_| Err(Error::Model("panicked while loading".to_string())))
    .map_err(|e| Error::Model(format!("{name}: {e}")));
    let denoiser = match loaded {
        Ok(denoiser) => denoiser,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    if done.send(Ok(DensityReport::default())).is_err() {
        return;
    }
    while let Ok(job) = jobs.recv() {
        let result = catch_unwind(AssertUnwindSafe(|| {
            denoiser.sample(
                &job.noise,
                &job.text,
                &job.settings,
                &job.scheduler,
                &job.router,
                &links,
                &mut Silent,
            )?;
            Ok(job.router.take_report()?)
        }))
        .unwrap_or_else(|_| Err(Error::Model(format!("{name} panicked"))));
        if let Err(e) = &result {
            links.fail(&format!("{name} failed: {e}"));
        }
        if done.send(result).is_err() {
            return;
        }
    }
}

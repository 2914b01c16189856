//! The [`AttentionRouter`]: behind the [`SelfAttention`] seam, it runs each call with the
//! method its schedule gives and counts the density each layer computed. Everything a method
//! keeps across calls lives in the method.

use crate::method::{AttentionMethod, Computed, MethodCall};
use crate::op::ForwardKernel;
use crate::schedule::AttentionSchedule;
use crate::seam::{AttentionCall, CallSite, SelfAttention};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::{Arc, Mutex};

/// Query-key pairs computed and possible, per layer (and per step and layer), summed over
/// calls, with the attention FLOPs they cost and, when timed, the seconds attention took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DensityReport {
    /// `(computed, possible)` per layer.
    pub per_layer: Vec<(f64, f64)>,
    /// `(computed, possible)` per denoising step, then per layer.
    pub per_step_layer: Vec<Vec<(f64, f64)>>,
    /// FLOPs of the pairs computed: `4 * head_dim` per pair (q·k and the weighted sum of v).
    pub flops: f64,
    /// Seconds spent in attention calls, the device synchronised around each (`None` unless
    /// the router times them, [`AttentionRouter::with_timing`]).
    pub seconds: Option<f64>,
}

impl DensityReport {
    fn add(&mut self, site: CallSite, computed: f64, possible: f64, head_dim: usize) {
        let layer = site.layer;
        if self.per_layer.len() <= layer {
            self.per_layer.resize(layer + 1, (0.0, 0.0));
        }
        self.per_layer[layer].0 += computed;
        self.per_layer[layer].1 += possible;
        let step = site.step.index;
        if self.per_step_layer.len() <= step {
            self.per_step_layer.resize(step + 1, Vec::new());
        }
        let row = &mut self.per_step_layer[step];
        if row.len() <= layer {
            row.resize(layer + 1, (0.0, 0.0));
        }
        row[layer].0 += computed;
        row[layer].1 += possible;
        self.flops += computed * 4.0 * head_dim as f64;
    }

    /// Query-key pairs computed over all calls.
    pub fn computed(&self) -> f64 {
        self.per_layer.iter().map(|&(c, _)| c).sum()
    }

    /// Adds the counts of `other`, the report of another rank that attended other heads or the
    /// other pass of the same steps (the time stays this rank's: ranks attend at once).
    pub fn merge(&mut self, other: &DensityReport) {
        let add = |mine: &mut Vec<(f64, f64)>, theirs: &[(f64, f64)]| {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), (0.0, 0.0));
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.0 += t.0;
                m.1 += t.1;
            }
        };
        add(&mut self.per_layer, &other.per_layer);
        if self.per_step_layer.len() < other.per_step_layer.len() {
            self.per_step_layer
                .resize(other.per_step_layer.len(), Vec::new());
        }
        for (mine, theirs) in self.per_step_layer.iter_mut().zip(&other.per_step_layer) {
            add(mine, theirs);
        }
        self.flops += other.flops;
    }

    /// Fraction of pairs computed in each layer of each step (`[step][layer]`).
    pub fn step_layer_densities(&self) -> Vec<Vec<f64>> {
        self.per_step_layer
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&(c, p)| if p > 0.0 { c / p } else { 1.0 })
                    .collect()
            })
            .collect()
    }

    /// Fraction of pairs computed over all calls.
    pub fn overall(&self) -> f64 {
        let (c, p) = self
            .per_layer
            .iter()
            .fold((0.0, 0.0), |(c, p), &(a, b)| (c + a, p + b));
        if p > 0.0 {
            c / p
        } else {
            1.0
        }
    }

    /// Fraction of pairs computed in each layer.
    pub fn layer_densities(&self) -> Vec<f64> {
        self.per_layer
            .iter()
            .map(|&(c, p)| if p > 0.0 { c / p } else { 1.0 })
            .collect()
    }
}

/// Counts not yet read back: a plan's computed pairs may be a scalar on the GPU, read only
/// when a report is asked for, so that attention never waits on the host.
#[derive(Default)]
struct Tally {
    report: DensityReport,
    pending: Vec<(CallSite, Tensor, f64, usize)>,
}

impl Tally {
    fn resolve(&mut self) -> Result<()> {
        for (site, computed, possible, head_dim) in self.pending.drain(..) {
            let computed = computed.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            self.report.add(site, computed, possible, head_dim);
        }
        Ok(())
    }
}

/// Runs each self-attention call with the method its schedule gives.
pub struct AttentionRouter {
    schedule: AttentionSchedule,
    kernel: ForwardKernel,
    timed: bool,
    tally: Mutex<Tally>,
}

impl AttentionRouter {
    /// A router for `schedule`, with the default kernels.
    pub fn new(schedule: AttentionSchedule) -> Self {
        Self {
            schedule,
            kernel: ForwardKernel::Auto,
            timed: false,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// The same router running the forward kernel family `kernel` on the GPU.
    pub fn with_kernel(mut self, kernel: ForwardKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The same router timing every call (the device synchronised before and after each, which
    /// costs a little speed), reported in [`DensityReport::seconds`].
    pub fn with_timing(mut self, timed: bool) -> Self {
        self.timed = timed;
        self
    }

    /// A router for another rank of a multi-GPU run: the same schedule with fresh method state
    /// ([`AttentionSchedule::for_another_rank`]), kernels and timing, and nothing counted yet.
    pub fn for_another_rank(&self) -> Self {
        Self::new(self.schedule.for_another_rank())
            .with_kernel(self.kernel)
            .with_timing(self.timed)
    }

    /// The schedule.
    pub fn schedule(&self) -> &AttentionSchedule {
        &self.schedule
    }

    /// Density computed since the last [`AttentionRouter::take_report`] (reads pending GPU
    /// counts back).
    pub fn report(&self) -> Result<DensityReport> {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.resolve()?;
        Ok(tally.report.clone())
    }

    /// Returns the density computed so far and starts counting afresh.
    pub fn take_report(&self) -> Result<DensityReport> {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.resolve()?;
        Ok(std::mem::take(&mut tally.report))
    }

    /// Forgets what the methods learned during a generation (call before the next one).
    pub fn reset(&self) {
        self.schedule.methods().for_each(|m| m.reset());
    }

    /// Layers since the first layer that runs a method named `name` at this call's step.
    fn since_first(&self, site: CallSite, name: &str) -> usize {
        let first = (0..=site.layer)
            .find(|&layer| self.schedule.method_at(CallSite { layer, ..site }).name() == name)
            .unwrap_or(site.layer);
        site.layer - first
    }

    /// Tells the method that runs at this layer in the next step about this call, when that is
    /// another method.
    fn precede_next(
        &self,
        method: &Arc<dyn AttentionMethod>,
        call: &AttentionCall<'_>,
    ) -> Result<()> {
        let Some(step) = call.site.step.next() else {
            return Ok(());
        };
        let next = self.schedule.method_at(CallSite { step, ..call.site });
        if next.name() != method.name() {
            next.precede(call)?;
        }
        Ok(())
    }
}

impl SelfAttention for AttentionRouter {
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor> {
        let started = match self.timed {
            true => {
                call.q.device().synchronize()?;
                Some(std::time::Instant::now())
            }
            false => None,
        };
        let method = self.schedule.method_at(call.site);
        self.precede_next(method, call)?;
        let attended = method.attend(&MethodCall {
            call,
            since_first: self.since_first(call.site, method.name()),
            kernel: self.kernel,
        })?;
        let seconds = match started {
            Some(started) => {
                attended.out.device().synchronize()?;
                Some(started.elapsed().as_secs_f64())
            }
            None => None,
        };
        let (b, h, s, head_dim) = call.q.dims4()?;
        let possible = (b * h) as f64 * (s as f64) * (s as f64);
        let computed = match attended.computed {
            Computed::All => Tensor::new(possible, &Device::Cpu)?,
            Computed::Plan(plan) => plan.pairs_tensor()?,
            Computed::Pairs(pairs) => pairs,
        };
        let mut tally = self.tally.lock().expect("tally lock");
        tally
            .pending
            .push((call.site, computed, possible, head_dim));
        if let Some(seconds) = seconds {
            *tally.report.seconds.get_or_insert(0.0) += seconds;
        }
        Ok(attended.out)
    }
}

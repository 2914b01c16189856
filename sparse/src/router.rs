//! The [`AttentionRouter`]: behind the [`SelfAttention`] seam, it runs each call with the
//! method its schedule gives and counts the density each layer computed. Everything a method
//! keeps across calls lives in the method.

use crate::method::{AttentionMethod, Computed, MethodCall};
use crate::op::ForwardKernel;
use crate::schedule::AttentionSchedule;
use crate::seam::{AttentionCall, CallSite, SelfAttention};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::{Arc, Mutex};

/// Query-key pairs computed and possible, per layer, summed over calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DensityReport {
    /// `(computed, possible)` per layer.
    pub per_layer: Vec<(f64, f64)>,
}

impl DensityReport {
    fn add(&mut self, layer: usize, computed: f64, possible: f64) {
        if self.per_layer.len() <= layer {
            self.per_layer.resize(layer + 1, (0.0, 0.0));
        }
        self.per_layer[layer].0 += computed;
        self.per_layer[layer].1 += possible;
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
    pending: Vec<(usize, Tensor, f64)>,
}

impl Tally {
    fn resolve(&mut self) -> Result<()> {
        for (layer, computed, possible) in self.pending.drain(..) {
            let computed = computed.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            self.report.add(layer, computed, possible);
        }
        Ok(())
    }
}

/// Runs each self-attention call with the method its schedule gives.
pub struct AttentionRouter {
    schedule: AttentionSchedule,
    kernel: ForwardKernel,
    tally: Mutex<Tally>,
}

impl AttentionRouter {
    /// A router for `schedule`, with the default kernels.
    pub fn new(schedule: AttentionSchedule) -> Self {
        Self {
            schedule,
            kernel: ForwardKernel::Auto,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// The same router running the forward kernel family `kernel` on the GPU.
    pub fn with_kernel(mut self, kernel: ForwardKernel) -> Self {
        self.kernel = kernel;
        self
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
        let method = self.schedule.method_at(call.site);
        self.precede_next(method, call)?;
        let attended = method.attend(&MethodCall {
            call,
            since_first: self.since_first(call.site, method.name()),
            kernel: self.kernel,
        })?;
        let (b, h, s, _) = call.q.dims4()?;
        let possible = (b * h) as f64 * (s as f64) * (s as f64);
        let computed = match attended.computed {
            Computed::All => Tensor::new(possible, &Device::Cpu)?,
            Computed::Plan(plan) => plan.pairs_tensor()?,
            Computed::Pairs(pairs) => Tensor::new(pairs, &Device::Cpu)?,
        };
        self.tally
            .lock()
            .expect("tally lock")
            .pending
            .push((call.site.layer, computed, possible));
        Ok(attended.out)
    }
}

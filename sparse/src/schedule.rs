//! Which method runs where: a default method plus rules by layer and denoising step, and the
//! [`AttentionRouter`] that applies them behind the [`SelfAttention`] seam, keeping SparseD's
//! frozen masks and the density each layer actually computed.

use crate::block_sparse_attention;
use crate::dense::attention;
use crate::paro::{step_group, ParoCalibration};
use crate::plan::SparsePlan;
use crate::seam::{AttentionCall, CallSite, SelfAttention};
use crate::sparsed::{sparsed_plan, SparsedOptions};
use crate::vmoba::{vmoba_attention, ChunkKind, VmobaOptions};
use crate::vsa::{vsa_attention, VsaOptions};
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

/// An attention method with its settings.
#[derive(Clone, Debug)]
pub enum Method {
    /// Exact attention.
    Dense,
    /// Video Sparse Attention.
    Vsa(VsaOptions),
    /// Mixture of block attention for video.
    Vmoba(VmobaOptions),
    /// Static per-head reordering and masks from a calibration.
    Paro(Arc<ParoCalibration>),
    /// Masks frozen from one exact step.
    Sparsed(SparsedOptions),
}

impl Method {
    /// Short name (`dense`, `vsa`, `vmoba`, `paro`, `sparsed`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Vsa(_) => "vsa",
            Self::Vmoba(_) => "vmoba",
            Self::Paro(_) => "paro",
            Self::Sparsed(_) => "sparsed",
        }
    }

    /// Checks the method's settings; the error says what to use instead.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Self::Dense | Self::Paro(_) => Ok(()),
            Self::Vsa(o) => o.validate(),
            Self::Vmoba(o) => o.validate(None),
            Self::Sparsed(o) => o.validate(),
        }
    }
}

/// A number of denoising steps, absolute or as a fraction of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepCount {
    /// This many steps.
    Steps(usize),
    /// This share of the run's steps, rounded to the nearest step.
    Fraction(f64),
}

impl StepCount {
    /// Parses `12` (steps) or `0.2` (fraction, in [0, 1]).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if let Ok(n) = text.parse::<usize>() {
            return Ok(Self::Steps(n));
        }
        match text.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Fraction(f)),
            _ => Err(format!("`{text}` is not a step count: use a whole number (12) or a fraction in [0, 1] (0.2)")),
        }
    }

    /// Steps out of `num_steps`.
    pub fn resolve(&self, num_steps: usize) -> usize {
        match *self {
            Self::Steps(n) => n.min(num_steps),
            Self::Fraction(f) => ((f * num_steps as f64).round() as usize).min(num_steps),
        }
    }
}

/// A set of layer indices such as `0`, `0-2,29`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSet(Vec<RangeInclusive<usize>>);

impl LayerSet {
    /// No layers.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Parses a comma-separated list of indices and inclusive ranges (`0,3-5`).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("`{text}` is not a layer list: use indices and ranges like 0 or 0-2,29");
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let range = match part.split_once('-') {
                Some((a, b)) => {
                    a.trim().parse().map_err(|_| bad())?..=b.trim().parse().map_err(|_| bad())?
                }
                None => {
                    let n: usize = part.parse().map_err(|_| bad())?;
                    n..=n
                }
            };
            if range.is_empty() {
                return Err(bad());
            }
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    /// True when `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        self.0.iter().any(|r| r.contains(&layer))
    }
}

impl fmt::Display for LayerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Use `method` for the layers in `layers` (all when `None`) during steps `from..to` (a
/// half-open range; `to = None` runs to the end).
#[derive(Clone, Debug)]
pub struct Rule {
    /// Layers the rule covers (`None`: all).
    pub layers: Option<LayerSet>,
    /// First step covered.
    pub from: StepCount,
    /// First step no longer covered (`None`: the end of the run).
    pub to: Option<StepCount>,
    /// Method to use.
    pub method: Method,
}

impl Rule {
    fn covers(&self, site: CallSite) -> bool {
        let count = site.step.count;
        let from = self.from.resolve(count);
        let to = self.to.map_or(count, |t| t.resolve(count));
        self.layers.as_ref().is_none_or(|l| l.contains(site.layer))
            && (from..to).contains(&site.step.index)
    }
}

/// The method for every (layer, step): the first matching rule, else the default.
#[derive(Clone, Debug)]
pub struct AttentionSchedule {
    /// Method where no rule applies.
    pub default: Method,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
}

impl AttentionSchedule {
    /// One method everywhere.
    pub fn new(default: Method) -> Self {
        Self {
            default,
            rules: Vec::new(),
        }
    }

    /// Dense attention for the first `steps` steps.
    pub fn dense_steps(mut self, steps: StepCount) -> Self {
        self.rules.push(Rule {
            layers: None,
            from: StepCount::Steps(0),
            to: Some(steps),
            method: Method::Dense,
        });
        self
    }

    /// Dense attention in `layers` at every step.
    pub fn dense_layers(mut self, layers: LayerSet) -> Self {
        self.rules.push(Rule {
            layers: Some(layers),
            from: StepCount::Steps(0),
            to: None,
            method: Method::Dense,
        });
        self
    }

    /// Adds a rule after the existing ones.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The method for a call site.
    pub fn method_at(&self, site: CallSite) -> &Method {
        self.rules
            .iter()
            .find(|r| r.covers(site))
            .map_or(&self.default, |r| &r.method)
    }

    /// Checks every method's settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        std::iter::once(&self.default)
            .chain(self.rules.iter().map(|r| &r.method))
            .try_for_each(Method::validate)
    }
}

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
            let computed = computed
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            self.report.add(layer, computed, possible);
        }
        Ok(())
    }
}

/// What a call computed: everything, or a plan's pairs.
enum Computed {
    All,
    Plan(Arc<SparsePlan>),
    Pairs(f64),
}

/// Runs each self-attention call with the method its schedule gives, keeping state across calls.
pub struct AttentionRouter {
    schedule: AttentionSchedule,
    frozen: Mutex<HashMap<usize, Arc<SparsePlan>>>,
    paro_plans: Mutex<HashMap<(usize, usize, usize), Arc<SparsePlan>>>,
    tally: Mutex<Tally>,
}

impl AttentionRouter {
    /// A router for `schedule` (validated).
    pub fn new(schedule: AttentionSchedule) -> std::result::Result<Self, String> {
        schedule.validate()?;
        Ok(Self {
            schedule,
            frozen: Mutex::new(HashMap::new()),
            paro_plans: Mutex::new(HashMap::new()),
            tally: Mutex::new(Tally::default()),
        })
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

    /// Forgets masks frozen during a generation (call before the next one).
    pub fn reset(&self) {
        self.frozen.lock().expect("frozen lock").clear();
    }

    /// The VMoBA chunk kind of a layer: cycling from the first layer that runs VMoBA at this step.
    fn chunk_kind(&self, site: CallSite, opts: &VmobaOptions) -> ChunkKind {
        opts.kind.unwrap_or_else(|| {
            let first = (0..=site.layer)
                .find(|&l| {
                    matches!(
                        self.schedule.method_at(CallSite { layer: l, ..site }),
                        Method::Vmoba(_)
                    )
                })
                .unwrap_or(site.layer);
            ChunkKind::cyclic(site.layer - first)
        })
    }

    /// SparseD freezes a layer's masks at its last dense step: when the next step at this layer
    /// runs SparseD and nothing is frozen yet, build the masks from this step's exact attention.
    fn freeze_ahead(&self, call: &AttentionCall<'_>) -> Result<()> {
        let site = call.site;
        let Some(next) = site.step.next() else {
            return Ok(());
        };
        if let Method::Sparsed(opts) = self.schedule.method_at(CallSite { step: next, ..site }) {
            let mut frozen = self.frozen.lock().expect("frozen lock");
            if let std::collections::hash_map::Entry::Vacant(e) = frozen.entry(site.layer) {
                e.insert(sparsed_plan(call.q, call.k, opts)?);
            }
        }
        Ok(())
    }

    fn run(&self, call: &AttentionCall<'_>) -> Result<(Tensor, Computed)> {
        let site = call.site;
        let method = self.schedule.method_at(site);
        if !matches!(method, Method::Sparsed(_)) {
            self.freeze_ahead(call)?;
        }
        match method {
            Method::Dense => Ok((attention(call.q, call.k, call.v)?, Computed::All)),
            Method::Vsa(o) => {
                let r = vsa_attention(call.q, call.k, call.v, call.gate, call.grid, o)?;
                Ok((r.out, Computed::Plan(r.plan)))
            }
            Method::Vmoba(o) => {
                let kind = self.chunk_kind(site, o);
                let r = vmoba_attention(call.q, call.k, call.v, call.grid, kind, o)?;
                Ok((r.out, Computed::Pairs(r.pairs)))
            }
            Method::Paro(c) => {
                if call.grid != c.grid {
                    candle_core::bail!(
                        "the PARO calibration was made for token grid {}, this run has {}: calibrate at this size",
                        c.grid,
                        call.grid
                    )
                }
                let batch = call.q.dim(0)?;
                let key = (site.layer, step_group(site.step, c.groups), batch);
                let plan = {
                    let mut plans = self.paro_plans.lock().expect("paro lock");
                    match plans.get(&key) {
                        Some(p) => p.clone(),
                        None => plans
                            .entry(key)
                            .or_insert(c.plan(key.0, key.1, batch)?)
                            .clone(),
                    }
                };
                let out = block_sparse_attention(call.q, call.k, call.v, &plan)?;
                Ok((out, Computed::Plan(plan)))
            }
            Method::Sparsed(opts) => {
                let frozen = self
                    .frozen
                    .lock()
                    .expect("frozen lock")
                    .get(&site.layer)
                    .cloned();
                match frozen {
                    Some(plan) if plan.batch == call.q.dim(0)? => {
                        let out = block_sparse_attention(call.q, call.k, call.v, &plan)?;
                        Ok((out, Computed::Plan(plan)))
                    }
                    Some(plan) => candle_core::bail!(
                        "SparseD masks were frozen for batch {}, this call has batch {}",
                        plan.batch,
                        call.q.dim(0)?
                    ),
                    None => {
                        // No dense step came first: this step is exact and freezes the masks.
                        let plan = sparsed_plan(call.q, call.k, opts)?;
                        self.frozen
                            .lock()
                            .expect("frozen lock")
                            .insert(site.layer, plan);
                        Ok((attention(call.q, call.k, call.v)?, Computed::All))
                    }
                }
            }
        }
    }
}

impl SelfAttention for AttentionRouter {
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor> {
        let (out, computed) = self.run(call)?;
        let (b, h, s, _) = call.q.dims4()?;
        let possible = (b * h) as f64 * (s as f64) * (s as f64);
        let computed = match computed {
            Computed::All => Tensor::new(possible, &candle_core::Device::Cpu)?,
            Computed::Plan(plan) => plan.pairs_tensor()?,
            Computed::Pairs(pairs) => Tensor::new(pairs, &candle_core::Device::Cpu)?,
        };
        self.tally
            .lock()
            .expect("tally lock")
            .pending
            .push((call.site.layer, computed, possible));
        Ok(out)
    }
}

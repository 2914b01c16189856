//! AdamW with decoupled weight decay, as PyTorch's `torch.optim.AdamW` computes it.
//!
//! For a parameter `p` with gradient `g` at its `t`-th update (counted per parameter, as PyTorch
//! does), with learning rate `lr`:
//!
//! ```text
//! p ← p · (1 − lr · weight_decay)            (only for parameters of rank ≥ 2)
//! m ← β1 · m + (1 − β1) · g
//! v ← β2 · v + (1 − β2) · g²
//! p ← p − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + eps)
//! ```
//!
//! All arithmetic is f32 on the parameters' device; the moments `m`, `v` are f32 tensors keyed
//! by parameter name, exposed through [`AdamW::state`] for checkpoints.
//!
//! When every parameter has a gradient and all have had the same number of updates (every step
//! of an ordinary run), the update runs on whole vectors, one for the decayed parameters and one
//! for the rest, as PyTorch's multi-tensor AdamW does: a dozen operations per group instead of
//! a dozen per parameter, which on a GPU are a dozen kernel launches instead of thousands. The
//! arithmetic of each element is the same either way.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::flat;
use crate::{Error, Result};

/// Hyper-parameters of [`AdamW`]; the learning rate is given to each [`AdamW::step`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay per unit of learning rate (default 0.01); applied only to
    /// parameters of rank ≥ 2 (see [`decays`]).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks that the betas lie in `[0, 1)`, `eps` is positive and the decay is not negative.
    pub fn validate(&self) -> Result<()> {
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::Usage(format!(
                    "AdamW {name} = {beta} is outside [0, 1): give a value such as 0.9 or 0.999"
                )));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::Usage(format!(
                "AdamW eps = {} must be a positive number: give e.g. 1e-8",
                self.eps
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Usage(format!(
                "AdamW weight_decay = {} must be zero or positive: give e.g. 0.01",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// Whether AdamW decays a parameter: only tensors of rank ≥ 2 (weight matrices, convolution
/// kernels). Norm gains, biases and other 1-D tensors (and scalars) are never decayed, because
/// pulling a gain towards zero or a bias towards zero is not a useful prior.
pub fn decays(param: &Tensor) -> bool {
    param.rank() >= 2
}

/// The optimiser state of one parameter.
#[derive(Clone, Debug)]
struct Moments {
    /// First moment, f32.
    m: Tensor,
    /// Second moment, f32.
    v: Tensor,
    /// How many updates this parameter has had (the `t` of its bias correction).
    steps: u64,
}

/// AdamW's state for a checkpoint: the moments by parameter name.
///
/// A parameter that never had a gradient has no entry. `m`, `v` and `param_steps` always hold
/// the same names.
#[derive(Clone, Debug, Default)]
pub struct AdamWState {
    /// How many times [`AdamW::step`] ran.
    pub step: u64,
    /// First moments (f32).
    pub m: BTreeMap<String, Tensor>,
    /// Second moments (f32).
    pub v: BTreeMap<String, Tensor>,
    /// Updates each parameter has had (its bias-correction count).
    pub param_steps: BTreeMap<String, u64>,
}

/// A parameter with its gradient in this step, and its moments so far.
struct Entry<'a> {
    name: &'a String,
    var: &'a Var,
    grad: &'a Tensor,
    moments: Option<Moments>,
}

/// The moments of one group of the last whole-vector update: the parameter names in order and
/// their moments end to end (the per-parameter moments are views into these).
#[derive(Clone, Debug)]
struct FlatGroup {
    names: Vec<String>,
    m: Tensor,
    v: Tensor,
}

/// The AdamW optimiser over named f32 master parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    moments: BTreeMap<String, Moments>,
    /// The groups of the last update when it ran on whole vectors (reused by the next).
    flat: Vec<FlatGroup>,
}

impl AdamW {
    /// A fresh optimiser (no moments yet).
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
            flat: vec![],
        })
    }

    /// An optimiser continuing from `state` (as [`AdamW::state`] gave it).
    pub fn from_state(config: AdamWConfig, state: AdamWState) -> Result<Self> {
        config.validate()?;
        let AdamWState {
            step,
            m,
            mut v,
            mut param_steps,
        } = state;
        if m.len() != v.len() || m.len() != param_steps.len() {
            return Err(Error::Checkpoint(format!(
                "AdamW state holds {} first moments, {} second moments and {} step counts: \
                 they must name the same parameters; resume from an intact checkpoint",
                m.len(),
                v.len(),
                param_steps.len()
            )));
        }
        let mut moments = BTreeMap::new();
        for (name, m) in m {
            let (Some(v), Some(steps)) = (v.remove(&name), param_steps.remove(&name)) else {
                return Err(Error::Checkpoint(format!(
                    "AdamW state has a first moment for {name} but no second moment or step \
                     count: resume from an intact checkpoint"
                )));
            };
            if m.dims() != v.dims() {
                return Err(Error::Checkpoint(format!(
                    "AdamW moments of {name} have shapes {:?} and {:?}: resume from an intact \
                     checkpoint",
                    m.dims(),
                    v.dims()
                )));
            }
            if steps == 0 || steps > step {
                return Err(Error::Checkpoint(format!(
                    "AdamW state gives {name} {steps} updates in {step} steps: resume from an \
                     intact checkpoint"
                )));
            }
            let m = m.detach().to_dtype(DType::F32)?;
            let v = v.detach().to_dtype(DType::F32)?;
            moments.insert(name, Moments { m, v, steps });
        }
        Ok(Self {
            config,
            step,
            moments,
            flat: vec![],
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// How many times [`AdamW::step`] ran.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The state to checkpoint (cheap: tensors are shared, and never changed in place).
    pub fn state(&self) -> AdamWState {
        let mut state = AdamWState {
            step: self.step,
            ..AdamWState::default()
        };
        for (name, moments) in &self.moments {
            state.m.insert(name.clone(), moments.m.clone());
            state.v.insert(name.clone(), moments.v.clone());
            state.param_steps.insert(name.clone(), moments.steps);
        }
        state
    }

    /// One update of every parameter in `params` that has a gradient in `grads`, with learning
    /// rate `lr`. A parameter without a gradient is left alone: no decay, and its moments and
    /// update count stay as they were (as PyTorch skips parameters whose `grad` is `None`).
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &GradStore,
        lr: f64,
    ) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Usage(format!(
                "learning rate {lr} must be zero or positive: check the schedule's peak"
            )));
        }
        let next = self.step.checked_add(1).ok_or_else(|| {
            Error::Usage("AdamW step count overflows u64: start a new run".to_string())
        })?;
        let entries: Vec<Entry> = params
            .iter()
            .filter_map(|(name, var)| {
                grads.get(var.as_tensor()).map(|grad| Entry {
                    name,
                    var,
                    grad,
                    moments: self.moments.get(name).cloned(),
                })
            })
            .collect();
        let count = |e: &Entry| e.moments.as_ref().map_or(0, |m| m.steps);
        let first = entries.first().map_or(0, count);
        if entries.len() == params.len() && entries.iter().all(|e| count(e) == first) {
            let mut flat = Vec::with_capacity(2);
            for decayed in [true, false] {
                let group: Vec<&Entry> = entries
                    .iter()
                    .filter(|e| decays(e.var.as_tensor()) == decayed)
                    .collect();
                if !group.is_empty() {
                    flat.push(self.update_group(&group, first, lr)?);
                }
            }
            self.flat = flat;
        } else {
            self.flat.clear();
            for e in &entries {
                self.update_one(e.name, e.var, e.grad, lr)?;
            }
        }
        self.step = next;
        Ok(())
    }

    /// The AdamW update of `group` (parameters that all decay or all do not, all with `steps`
    /// updates so far) on whole vectors; returns the group's moments.
    fn update_group(&mut self, group: &[&Entry], steps: u64, lr: f64) -> Result<FlatGroup> {
        for e in group {
            check_gradient(e.name, e.grad, e.var.as_tensor())?;
        }
        let g = flat::join(group.iter().map(|e| e.grad))?;
        let p = flat::join(group.iter().map(|e| e.var.as_tensor()))?;
        let (m, v) = self.group_moments(group, &p)?;
        let t = steps.checked_add(1).ok_or_else(|| {
            Error::Usage("AdamW update count overflows: start a new run".to_string())
        })?;
        let p = self.decayed(p, lr, decays(group[0].var.as_tensor()))?;
        let (p, m, v) = self.update(p, (m, v), &g, t, lr)?;
        let shapes = || group.iter().map(|e| e.var.as_tensor().shape());
        let views = flat::split(&p, shapes())?
            .into_iter()
            .zip(flat::split(&m, shapes())?)
            .zip(flat::split(&v, shapes())?);
        for (e, ((p, m), v)) in group.iter().zip(views) {
            e.var.set(&p.to_dtype(e.var.dtype())?)?;
            self.moments
                .insert(e.name.clone(), Moments { m, v, steps: t });
        }
        let names = group.iter().map(|e| e.name.clone()).collect();
        Ok(FlatGroup { names, m, v })
    }

    /// The moments of `group` end to end: the last whole-vector update's when it covered the
    /// same parameters, else the parameters' own joined, or zeros before their first update.
    fn group_moments(&self, group: &[&Entry], p: &Tensor) -> Result<(Tensor, Tensor)> {
        let same = |g: &&FlatGroup| g.names.iter().eq(group.iter().map(|e| e.name));
        if let Some(last) = self.flat.iter().find(same) {
            return Ok((last.m.clone(), last.v.clone()));
        }
        let Some(old) = group
            .iter()
            .map(|e| e.moments.as_ref())
            .collect::<Option<Vec<&Moments>>>()
        else {
            let zeros = p.zeros_like()?;
            return Ok((zeros.clone(), zeros));
        };
        for (e, moments) in group.iter().zip(&old) {
            check_moments(e.name, &moments.m, e.var.as_tensor())?;
        }
        Ok((
            flat::join(old.iter().map(|o| &o.m))?,
            flat::join(old.iter().map(|o| &o.v))?,
        ))
    }

    /// The f32 parameters `p` after the decoupled weight decay, if `decayed`.
    fn decayed(&self, p: Tensor, lr: f64, decayed: bool) -> Result<Tensor> {
        let weight_decay = self.config.weight_decay;
        if decayed && weight_decay != 0.0 {
            Ok(p.affine(1.0 - lr * weight_decay, 0.0)?)
        } else {
            Ok(p)
        }
    }

    /// The Adam step at count `t`: the new parameters and moments from the (decayed) f32
    /// parameters `p`, the moments `m`, `v` and the gradient `g` (any matching shape).
    fn update(
        &self,
        p: Tensor,
        (m, v): (Tensor, Tensor),
        g: &Tensor,
        t: u64,
        lr: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.config;
        let m = (m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
        let v = (v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
        // `t as f64` is exact up to 2^53 updates; beyond, the corrections are 1 anyway.
        let bias1 = 1.0 - beta1.powf(t as f64);
        let bias2 = 1.0 - beta2.powf(t as f64);
        let denom = v.sqrt()?.affine(1.0 / bias2.sqrt(), eps)?;
        let p = (p - m.div(&denom)?.affine(lr / bias1, 0.0)?)?;
        Ok((p, m, v))
    }

    /// The AdamW update of one parameter.
    fn update_one(&mut self, name: &str, var: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        let param = var.as_tensor();
        check_gradient(name, grad, param)?;
        let (m, v, steps) = match self.moments.get(name) {
            Some(old) => {
                check_moments(name, &old.m, param)?;
                (old.m.clone(), old.v.clone(), old.steps)
            }
            None => {
                let zeros = Tensor::zeros(param.shape(), DType::F32, param.device())?;
                (zeros.clone(), zeros, 0)
            }
        };
        let t = steps.checked_add(1).ok_or_else(|| {
            Error::Usage(format!(
                "AdamW update count of {name} overflows: start a new run"
            ))
        })?;
        let g = grad.detach().to_dtype(DType::F32)?;
        let p = self.decayed(param.detach().to_dtype(DType::F32)?, lr, decays(param))?;
        let (p, m, v) = self.update(p, (m, v), &g, t, lr)?;
        var.set(&p.to_dtype(param.dtype())?)?;
        self.moments
            .insert(name.to_string(), Moments { m, v, steps: t });
        Ok(())
    }
}

/// Checks that a gradient has its parameter's shape.
fn check_gradient(name: &str, grad: &Tensor, param: &Tensor) -> Result<()> {
    if grad.dims() != param.dims() {
        return Err(Error::Usage(format!(
            "gradient of {name} has shape {:?} but the parameter has {:?}: pass the gradients \
             of these parameters",
            grad.dims(),
            param.dims()
        )));
    }
    Ok(())
}

/// Checks that stored moments have their parameter's shape.
fn check_moments(name: &str, m: &Tensor, param: &Tensor) -> Result<()> {
    if m.dims() != param.dims() {
        return Err(Error::Usage(format!(
            "AdamW moments of {name} have shape {:?} but the parameter has {:?}: the \
             checkpoint belongs to another model",
            m.dims(),
            param.dims()
        )));
    }
    Ok(())
}

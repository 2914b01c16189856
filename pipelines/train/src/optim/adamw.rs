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

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

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

/// The AdamW optimiser over named f32 master parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimiser (no moments yet).
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
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
        for (name, var) in params {
            if let Some(grad) = grads.get(var.as_tensor()) {
                self.update_one(name, var, grad, lr)?;
            }
        }
        self.step = next;
        Ok(())
    }

    /// The AdamW update of one parameter.
    fn update_one(&mut self, name: &str, var: &Var, grad: &Tensor, lr: f64) -> Result<()> {
        let param = var.as_tensor();
        if grad.dims() != param.dims() {
            return Err(Error::Usage(format!(
                "gradient of {name} has shape {:?} but the parameter has {:?}: pass the gradients \
                 of these parameters",
                grad.dims(),
                param.dims()
            )));
        }
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let (m, v, steps) = match self.moments.get(name) {
            Some(old) if old.m.dims() == param.dims() => (old.m.clone(), old.v.clone(), old.steps),
            Some(old) => {
                return Err(Error::Usage(format!(
                    "AdamW moments of {name} have shape {:?} but the parameter has {:?}: the \
                     checkpoint belongs to another model",
                    old.m.dims(),
                    param.dims()
                )))
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
        let m = (m.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
        let v = (v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
        // `t as f64` is exact up to 2^53 updates; beyond, the corrections are 1 anyway.
        let bias1 = 1.0 - beta1.powf(t as f64);
        let bias2 = 1.0 - beta2.powf(t as f64);
        let denom = v.sqrt()?.affine(1.0 / bias2.sqrt(), eps)?;
        let p = param.detach().to_dtype(DType::F32)?;
        let p = if decays(param) && weight_decay != 0.0 {
            p.affine(1.0 - lr * weight_decay, 0.0)?
        } else {
            p
        };
        let p = (p - m.div(&denom)?.affine(lr / bias1, 0.0)?)?;
        var.set(&p.to_dtype(param.dtype())?)?;
        self.moments
            .insert(name.to_string(), Moments { m, v, steps: t });
        Ok(())
    }
}

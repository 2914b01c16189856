//! Exponential moving average of the parameters: f32 shadow copies by name, updated as one
//! vector (the shadows are views into it), so an update is a few operations whatever the number
//! of parameters.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use super::flat;
use crate::{Error, Result};

/// Shadow weights following the parameters: at its `n`-th update (from 0),
/// `shadow ← d · shadow + (1 − d) · param` with `d = min(decay, (1 + n) / (10 + n))`, so early
/// updates follow the fast-moving parameters closely.
#[derive(Clone, Debug)]
pub struct Ema {
    decay: f64,
    updates: u64,
    weights: BTreeMap<String, Tensor>,
    /// The shadows end to end in name order, once an update has made them so.
    flat: Option<Tensor>,
}

/// Checks an EMA decay.
fn check_decay(decay: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&decay) {
        return Err(Error::Usage(format!(
            "EMA decay {decay} is outside [0, 1]: give e.g. 0.999"
        )));
    }
    Ok(())
}

impl Ema {
    /// Shadow copies (f32, not sharing storage with the parameters) of `params`.
    pub fn new(decay: f64, params: &BTreeMap<String, Var>) -> Result<Self> {
        check_decay(decay)?;
        let mut weights = BTreeMap::new();
        for (name, var) in params {
            // `copy`: a same-dtype `to_dtype` would share the parameter's storage, which the
            // optimiser changes in place.
            let shadow = var.as_tensor().detach().to_dtype(DType::F32)?.copy()?;
            weights.insert(name.clone(), shadow);
        }
        Ok(Self {
            decay,
            updates: 0,
            weights,
            flat: None,
        })
    }

    /// An EMA continuing from a checkpoint: `updates` done so far and the shadow `weights`.
    pub fn from_state(decay: f64, updates: u64, weights: BTreeMap<String, Tensor>) -> Result<Self> {
        check_decay(decay)?;
        let weights = weights
            .into_iter()
            .map(|(name, t)| Ok((name, t.detach().to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates,
            weights,
            flat: None,
        })
    }

    /// The configured decay (the limit of the warm-up).
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// How many updates ran.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay the next update uses: `min(decay, (1 + n) / (10 + n))`.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Moves every shadow towards its parameter; `params` must hold exactly the shadowed names.
    pub fn update(&mut self, params: &BTreeMap<String, Var>) -> Result<()> {
        if params.len() != self.weights.len() {
            return Err(Error::Usage(format!(
                "EMA shadows {} tensors but {} parameters were given: build the EMA from the \
                 same parameters",
                self.weights.len(),
                params.len()
            )));
        }
        let next = self.updates.checked_add(1).ok_or_else(|| {
            Error::Usage("EMA update count overflows u64: start a new run".to_string())
        })?;
        if self.weights.is_empty() {
            self.updates = next;
            return Ok(());
        }
        let d = self.current_decay();
        let mut current = Vec::with_capacity(params.len());
        for (name, shadow) in &self.weights {
            let Some(var) = params.get(name) else {
                return Err(Error::Usage(format!(
                    "EMA shadows {name} but the parameters have no such tensor: build the EMA \
                     from the same parameters"
                )));
            };
            if var.dims() != shadow.dims() {
                return Err(Error::Usage(format!(
                    "EMA shadow of {name} has shape {:?} but the parameter has {:?}: build the \
                     EMA from the same parameters",
                    shadow.dims(),
                    var.dims()
                )));
            }
            current.push(var.as_tensor());
        }
        let shadow = match &self.flat {
            Some(flat) => flat.clone(),
            None => flat::join(self.weights.values())?,
        };
        let flat = (shadow.affine(d, 0.0)? + flat::join(current)?.affine(1.0 - d, 0.0)?)?;
        let views = flat::split(&flat, self.weights.values().map(|w| w.shape()))?;
        let updated = self.weights.keys().cloned().zip(views).collect();
        self.flat = Some(flat);
        self.weights = updated;
        self.updates = next;
        Ok(())
    }

    /// The shadow weights by name (f32): after an update, views into one vector.
    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.weights
    }

    /// Copies of the shadow weights by name, each in its own allocation (for kernels that
    /// need aligned operands, which views at odd offsets are not).
    pub fn standalone_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let copies = flat::standalone(self.weights.values())?;
        Ok(self.weights.keys().cloned().zip(copies).collect())
    }
}

//! The learning rate by step: linear warm-up, then cosine decay to a floor.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then a half cosine from `peak` down to
/// `peak * final_ratio` at `total_steps`, constant after.
///
/// `step` counts the optimiser steps already taken, so the first step uses `lr(0)`, which is 0
/// when there is a warm-up (as in the usual `get_cosine_schedule_with_warmup`):
///
/// ```text
/// lr(s) = peak · s / warmup                                         s < warmup
/// lr(s) = peak · (r + (1 − r) · (1 + cos(π · (s − warmup) / (total − warmup))) / 2)
///                                                                   warmup ≤ s < total
/// lr(s) = peak · r                                                  s ≥ total
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The largest learning rate, reached at the end of the warm-up.
    pub peak: f64,
    /// Steps of linear warm-up from 0 (0: start at the peak).
    pub warmup_steps: u64,
    /// The step at which the cosine reaches its floor.
    pub total_steps: u64,
    /// The floor as a fraction of the peak, in `[0, 1]`.
    pub final_ratio: f64,
}

impl LrSchedule {
    /// A checked schedule (see [`LrSchedule::validate`]).
    pub fn new(peak: f64, warmup_steps: u64, total_steps: u64, final_ratio: f64) -> Result<Self> {
        let schedule = Self {
            peak,
            warmup_steps,
            total_steps,
            final_ratio,
        };
        schedule.validate()?;
        Ok(schedule)
    }

    /// Checks that the peak is positive and finite, the ratio lies in `[0, 1]`, there is at
    /// least one step and the warm-up ends no later than the total.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak.is_finite() && self.peak > 0.0) {
            return Err(Error::Usage(format!(
                "peak learning rate {} must be a positive number: give e.g. 1e-4",
                self.peak
            )));
        }
        if !(0.0..=1.0).contains(&self.final_ratio) {
            return Err(Error::Usage(format!(
                "final learning-rate ratio {} is outside [0, 1]: give e.g. 0.1",
                self.final_ratio
            )));
        }
        if self.total_steps == 0 {
            return Err(Error::Usage(
                "total_steps is 0: give the number of training steps".to_string(),
            ));
        }
        if self.total_steps < self.warmup_steps {
            return Err(Error::Usage(format!(
                "warm-up of {} steps is longer than the {} total steps: shorten the warm-up or \
                 train longer",
                self.warmup_steps, self.total_steps
            )));
        }
        Ok(())
    }

    /// The learning rate for the optimiser step taken after `step` earlier steps.
    pub fn lr(&self, step: u64) -> f64 {
        let floor = self.peak * self.final_ratio;
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return floor;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * (self.final_ratio + (1.0 - self.final_ratio) * cosine)
    }
}

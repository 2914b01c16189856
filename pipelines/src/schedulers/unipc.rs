//! diffusers' `UniPCMultistepScheduler` with flow sigmas, data (x0) prediction and the B(h)
//! predictor (UniP) / corrector (UniC) pair.
//!
//! Per step: convert the velocity to an x0 prediction, correct the previous step's predicted
//! sample with it (UniC), then predict the next sample from the last `order` x0 predictions
//! (UniP). Coefficients are scalars computed in f64 from the f32-stored sigmas; tensor math is f32.

use super::config::{FinalSigma, SchedulerConfig, SolverType};
use super::sigmas::{linspace, shift_sigma, to_f32_precision};
use super::{check_step, Scheduler};
use crate::error::fail;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::VecDeque;

/// The multistep UniPC sampler and its history.
#[derive(Debug)]
pub struct UniPcMultistep {
    timesteps: Vec<f64>,
    /// `num_steps + 1` noise levels (f32 precision).
    sigmas: Vec<f64>,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// The latest x0 predictions (f32), oldest first, at most `solver_order`.
    x0_history: VecDeque<Tensor>,
    /// The sample the previous predictor started from, and that predictor's order.
    previous: Option<(Tensor, usize)>,
    next_step: usize,
    device: Device,
}

impl UniPcMultistep {
    /// The schedule of `set_timesteps(num_steps)` with `use_flow_sigmas`: evenly spaced sigmas
    /// from 1 down to `1 / num_train_timesteps`, shifted, the first nudged below 1 by 1e-6;
    /// timesteps are `sigma * num_train_timesteps` truncated to integers.
    pub fn new(cfg: &SchedulerConfig, num_steps: usize, device: &Device) -> Self {
        let n_train = cfg.num_train_timesteps as f64;
        let mut sigmas: Vec<f64> = linspace(1.0, 1.0 / n_train, num_steps + 1)
            .into_iter()
            .take(num_steps)
            .map(|s| shift_sigma(s, cfg.shift))
            .collect();
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|s| (s * n_train).trunc()).collect();
        let last = match cfg.final_sigma {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => sigmas[num_steps - 1],
        };
        sigmas.push(last);
        Self {
            timesteps,
            sigmas: sigmas.into_iter().map(to_f32_precision).collect(),
            solver_order: cfg.solver_order,
            solver_type: cfg.solver_type,
            lower_order_final: cfg.lower_order_final,
            disable_corrector: cfg.disable_corrector.clone(),
            x0_history: VecDeque::with_capacity(cfg.solver_order),
            previous: None,
            next_step: 0,
            device: device.clone(),
        }
    }

    /// The multistep order of the predictor at `step`: lowered during warm-up and, with
    /// `lower_order_final`, on the last steps.
    fn predictor_order(&self, step: usize) -> usize {
        let order = if self.lower_order_final {
            self.solver_order.min(self.timesteps.len() - step)
        } else {
            self.solver_order
        };
        order.min(self.x0_history.len())
    }

    /// Coefficients for an update from `sigmas[from]` to `sigmas[to]` of the given order, whose
    /// earlier points are `sigmas[from - 1]`, `sigmas[from - 2]`, ...
    fn coefficients(&self, from: usize, to: usize, order: usize) -> Coefficients {
        let lambda_from = log_snr(self.sigmas[from]);
        let h = log_snr(self.sigmas[to]) - lambda_from;
        let ratios = (1..order)
            .map(|i| (log_snr(self.sigmas[from - i]) - lambda_from) / h)
            .collect();
        Coefficients::new(
            self.sigmas[to],
            self.sigmas[from],
            h,
            ratios,
            self.solver_type,
        )
    }

    /// The latest x0 prediction.
    fn newest(&self) -> Result<&Tensor> {
        self.x0_history
            .back()
            .ok_or_else(|| crate::Error::Scheduler("UniPC has no x0 prediction yet".to_string()))
    }

    /// The differences `(x0_{-i} - x0_0) / r_i` to the earlier x0 predictions.
    fn differences(&self, ratios: &[f64]) -> Result<Vec<Tensor>> {
        let m0 = self.newest()?;
        ratios
            .iter()
            .zip(self.x0_history.iter().rev().skip(1))
            .map(|(r, earlier)| Ok(((earlier - m0)? * (1.0 / r))?))
            .collect()
    }

    /// UniC: refines `last`, the sample the previous predictor started from, with the new x0
    /// prediction; `order` is that predictor's order.
    fn correct(&self, x0: &Tensor, last: &Tensor, order: usize) -> Result<Tensor> {
        let step = self.next_step;
        let c = self.coefficients(step - 1, step, order);
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(c.powers(order), c.b.clone())?
        };
        let m0 = self.newest()?;
        let mut terms = self.differences(&c.ratios)?;
        terms.push((x0 - m0)?);
        c.apply(last, m0, weighted_sum(&terms, &rhos)?.as_ref())
    }

    /// UniP: predicts the next sample from the latest x0 predictions.
    fn predict(&self, sample: &Tensor, order: usize) -> Result<Tensor> {
        let step = self.next_step;
        let c = self.coefficients(step, step + 1, order);
        let rhos = match order {
            1 => Vec::new(),
            2 => vec![0.5],
            _ => solve(c.powers(order - 1), c.b[..order - 1].to_vec())?,
        };
        let residual = weighted_sum(&self.differences(&c.ratios)?, &rhos)?;
        c.apply(sample, self.newest()?, residual.as_ref())
    }
}

impl Scheduler for UniPcMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Steps must come in order. Computes in f32 and returns `sample`'s dtype, as diffusers does.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
    ) -> Result<Tensor> {
        check_step(self, model_output, step_index, sample, &self.device)?;
        if step_index != self.next_step {
            fail!(
                Scheduler,
                "UniPC steps must run in order: expected step {}, got {step_index}",
                self.next_step
            );
        }
        let dtype = sample.dtype();
        let sample = sample.to_dtype(DType::F32)?;
        let sigma = self.sigmas[step_index];
        let x0 = (&sample - (model_output.to_dtype(DType::F32)? * sigma)?)?;
        let sample = match &self.previous {
            Some((last, order)) if !self.disable_corrector.contains(&(step_index - 1)) => {
                self.correct(&x0, last, *order)?
            }
            _ => sample,
        };
        if self.x0_history.len() == self.solver_order {
            self.x0_history.pop_front();
        }
        self.x0_history.push_back(x0);
        let order = self.predictor_order(step_index);
        let next = self.predict(&sample, order)?;
        self.previous = Some((sample, order));
        self.next_step += 1;
        Ok(next.to_dtype(dtype)?)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
}

/// Log signal-to-noise ratio of a flow sigma: `ln(1 - s) - ln(s)`.
fn log_snr(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// Scalars of one UniPC update from noise level `s0` to `t` with log-SNR step `h`.
struct Coefficients {
    /// `sigma_t / sigma_s0`.
    sample_scale: f64,
    /// `alpha_t = 1 - sigma_t`.
    alpha_t: f64,
    /// `e^{-h} - 1`.
    h_phi_1: f64,
    /// `B(-h)`.
    b_h: f64,
    /// `r_i = (lambda_{s_i} - lambda_{s0}) / h` for the earlier points.
    ratios: Vec<f64>,
    /// Right-hand side of the order conditions.
    b: Vec<f64>,
}

impl Coefficients {
    fn new(sigma_t: f64, sigma_s0: f64, h: f64, ratios: Vec<f64>, kind: SolverType) -> Self {
        let order = ratios.len() + 1;
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match kind {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        Self {
            sample_scale: sigma_t / sigma_s0,
            alpha_t: 1.0 - sigma_t,
            h_phi_1,
            b_h,
            ratios,
            b,
        }
    }

    /// The `n x n` Vandermonde matrix `R[k][j] = p_j^k` over the first `n` of the points
    /// `r_1, r_2, ..., 1`.
    fn powers(&self, n: usize) -> Vec<Vec<f64>> {
        let points: Vec<f64> = self.ratios.iter().copied().chain([1.0]).take(n).collect();
        (0..n)
            .map(|k| points.iter().map(|p| p.powi(k as i32)).collect())
            .collect()
    }

    /// `scale * x - alpha_t * h_phi_1 * m0 - alpha_t * B(h) * residual`.
    fn apply(&self, x: &Tensor, m0: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let base = ((x * self.sample_scale)? - (m0 * (self.alpha_t * self.h_phi_1))?)?;
        Ok(match residual {
            Some(r) => (base - (r * (self.alpha_t * self.b_h))?)?,
            None => base,
        })
    }
}

/// `sum_k weights[k] * terms[k]`, in order; `None` when there are no terms.
fn weighted_sum(terms: &[Tensor], weights: &[f64]) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for (term, weight) in terms.iter().zip(weights) {
        let scaled = (term * *weight)?;
        sum = Some(match sum {
            Some(s) => (s + scaled)?,
            None => scaled,
        });
    }
    Ok(sum)
}

/// Solves the small dense system `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            fail!(
                Scheduler,
                "UniPC order conditions are singular at this step; lower solver_order"
            );
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let (b_upper, b_lower) = b.split_at_mut(col + 1);
        let (pivot_row, pivot_rhs) = (&upper[col], b_upper[col]);
        for (row, rhs) in lower.iter_mut().zip(b_lower) {
            let factor = row[col] / pivot_row[col];
            for (entry, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *entry -= factor * p;
            }
            *rhs -= factor * pivot_rhs;
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The solver reproduces a known solution of a 3x3 system that needs pivoting.
    #[test]
    fn solve_recovers_known_solution() -> Result<()> {
        let a = vec![
            vec![0.0, 2.0, 1.0],
            vec![1.0, 1.0, 1.0],
            vec![4.0, -1.0, 3.0],
        ];
        let x = [1.5, -2.0, 0.25];
        let b: Vec<f64> = a
            .iter()
            .map(|row| row.iter().zip(&x).map(|(p, q)| p * q).sum())
            .collect();
        let got = solve(a, b)?;
        for (g, e) in got.iter().zip(&x) {
            assert!((g - e).abs() < 1e-12, "{got:?}");
        }
        Ok(())
    }

    /// A singular system is an error, not NaNs.
    #[test]
    fn solve_rejects_singular_system() {
        assert!(solve(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_err());
    }
}

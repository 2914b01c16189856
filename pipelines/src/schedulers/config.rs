//! Scheduler settings, read from a diffusers `scheduler_config.json` or built for Wan.

use crate::error::{fail, ResultExt};
use crate::Result;
use serde::Deserialize;
use std::path::Path;

/// Which flow-matching sampler to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    /// diffusers' `FlowMatchEulerDiscreteScheduler`: one model call per step, first order.
    Euler,
    /// diffusers' `UniPCMultistepScheduler` with flow sigmas: Wan's default sampler.
    UniPc,
}

/// The B(h) function of UniPC's update (`solver_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SolverType {
    /// `B(h) = h`.
    Bh1,
    /// `B(h) = e^h - 1`.
    Bh2,
}

/// The noise level after the last step (`final_sigmas_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSigma {
    /// Denoise completely: the last sigma is 0.
    Zero,
    /// Stop at the last inference sigma.
    SigmaMin,
}

/// The settings both schedulers read; fields keep diffusers' meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The scheduler class the file names, when it is one of the two supported.
    pub class: Option<SchedulerKind>,
    /// Length of the training noise schedule (`num_train_timesteps`).
    pub num_train_timesteps: usize,
    /// Flow shift: UniPC's `flow_shift`, or Euler's `shift` when the file has no `flow_shift`.
    pub shift: f64,
    /// UniPC's order (`solver_order`).
    pub solver_order: usize,
    /// UniPC's B(h) (`solver_type`).
    pub solver_type: SolverType,
    /// UniPC lowers its order on the last steps (`lower_order_final`).
    pub lower_order_final: bool,
    /// UniPC steps whose following corrector is skipped (`disable_corrector`).
    pub disable_corrector: Vec<usize>,
    /// UniPC's last sigma (`final_sigmas_type`).
    pub final_sigma: FinalSigma,
}

impl SchedulerConfig {
    /// Wan 2.1's scheduler: UniPC with flow sigmas, order 2, bh2, lower order on the last step,
    /// 1000 training steps, the given flow shift (Wan uses 3.0 at 480p and 5.0 at 720p).
    pub fn wan_default(shift: f64) -> Self {
        Self {
            class: Some(SchedulerKind::UniPc),
            num_train_timesteps: 1000,
            shift,
            solver_order: 2,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            final_sigma: FinalSigma::Zero,
        }
    }

    /// Reads a diffusers `scheduler_config.json` of either scheduler. Fields that do not change
    /// the flow-matching schedule are ignored; settings this engine does not implement (Karras or
    /// dynamic shifting, thresholding, non-flow predictions, ...) are refused with one line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scheduler config {}", path.display()))?;
        let raw: RawConfig = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse scheduler config {}", path.display()))?;
        raw.into_config()
            .with_context(|| format!("unsupported scheduler config {}", path.display()))
    }

    /// Checks the values this engine can run; `num_steps` is the planned step count.
    pub fn validate(&self, kind: SchedulerKind, num_steps: usize) -> Result<()> {
        if num_steps == 0 {
            fail!(
                Scheduler,
                "the number of inference steps must be at least 1"
            );
        }
        if self.num_train_timesteps < 2 {
            fail!(
                Scheduler,
                "num_train_timesteps {} must be at least 2",
                self.num_train_timesteps
            );
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            fail!(
                Scheduler,
                "flow shift {} must be a positive number",
                self.shift
            );
        }
        if kind == SchedulerKind::Euler {
            return Ok(());
        }
        if self.solver_order == 0 {
            fail!(Scheduler, "solver_order must be at least 1");
        }
        if self.final_sigma == FinalSigma::Zero && self.solver_type == SolverType::Bh1 {
            fail!(
                Scheduler,
                "solver_type \"bh1\" with final_sigmas_type \"zero\" makes UniPC's last step \
                 NaN (diffusers too); use \"bh2\" or final_sigmas_type \"sigma_min\""
            );
        }
        if self.final_sigma == FinalSigma::Zero
            && !self.lower_order_final
            && self.solver_order > 1
            && num_steps > 1
        {
            fail!(
                Scheduler,
                "lower_order_final = false with final_sigmas_type \"zero\" makes UniPC's last \
                 step infinite (diffusers too); set lower_order_final to true"
            );
        }
        Ok(())
    }
}

/// Every field of either diffusers scheduler that matters here; the rest of the file is ignored.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_train_timesteps: Option<usize>,
    shift: Option<f64>,
    flow_shift: Option<f64>,
    solver_order: Option<usize>,
    solver_type: Option<String>,
    lower_order_final: Option<bool>,
    #[serde(default)]
    disable_corrector: Vec<usize>,
    final_sigmas_type: Option<String>,
    prediction_type: Option<String>,
    use_flow_sigmas: Option<bool>,
    predict_x0: Option<bool>,
    #[serde(default)]
    thresholding: bool,
    #[serde(default)]
    use_dynamic_shifting: bool,
    #[serde(default)]
    use_karras_sigmas: bool,
    #[serde(default)]
    use_exponential_sigmas: bool,
    #[serde(default)]
    use_beta_sigmas: bool,
    #[serde(default)]
    invert_sigmas: bool,
    #[serde(default)]
    stochastic_sampling: bool,
    shift_terminal: Option<f64>,
    solver_p: Option<serde_json::Value>,
}

impl RawConfig {
    fn into_config(self) -> Result<SchedulerConfig> {
        self.refuse_unsupported()?;
        let class = match self.class_name.as_deref() {
            Some("FlowMatchEulerDiscreteScheduler") => Some(SchedulerKind::Euler),
            Some("UniPCMultistepScheduler") => Some(SchedulerKind::UniPc),
            _ => None,
        };
        // diffusers maps the DPM-Solver names onto bh2.
        let solver_type = match self.solver_type.as_deref() {
            None | Some("bh2" | "midpoint" | "heun" | "logrho") => SolverType::Bh2,
            Some("bh1") => SolverType::Bh1,
            Some(other) => fail!(
                Scheduler,
                "solver_type {other:?} is not supported; use \"bh1\" or \"bh2\""
            ),
        };
        let final_sigma = match self.final_sigmas_type.as_deref() {
            None | Some("zero") => FinalSigma::Zero,
            Some("sigma_min") => FinalSigma::SigmaMin,
            Some(other) => {
                fail!(
                    Scheduler,
                    "final_sigmas_type {other:?} is not supported; use \"zero\" or \"sigma_min\""
                )
            }
        };
        Ok(SchedulerConfig {
            class,
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            shift: self.flow_shift.or(self.shift).unwrap_or(1.0),
            solver_order: self.solver_order.unwrap_or(2),
            solver_type,
            lower_order_final: self.lower_order_final.unwrap_or(true),
            disable_corrector: self.disable_corrector,
            final_sigma,
        })
    }

    fn refuse_unsupported(&self) -> Result<()> {
        if let Some(name) = self.class_name.as_deref() {
            if !matches!(
                name,
                "FlowMatchEulerDiscreteScheduler" | "UniPCMultistepScheduler"
            ) {
                fail!(
                    Scheduler,
                    "scheduler class {name} is not supported; use FlowMatchEulerDiscreteScheduler \
                     or UniPCMultistepScheduler"
                );
            }
        }
        if let Some(p) = self.prediction_type.as_deref() {
            if p != "flow_prediction" {
                fail!(
                    Scheduler,
                    "prediction_type {p:?} is not supported; Wan needs \"flow_prediction\""
                );
            }
        }
        let flags = [
            (
                self.use_flow_sigmas == Some(false),
                "use_flow_sigmas = false",
            ),
            (self.predict_x0 == Some(false), "predict_x0 = false"),
            (self.thresholding, "thresholding"),
            (self.use_dynamic_shifting, "use_dynamic_shifting"),
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
            (self.invert_sigmas, "invert_sigmas"),
            (self.stochastic_sampling, "stochastic_sampling"),
            (self.shift_terminal.is_some(), "shift_terminal"),
            (
                self.solver_p.as_ref().is_some_and(|v| !v.is_null()),
                "solver_p",
            ),
        ];
        if let Some((_, what)) = flags.iter().find(|(set, _)| *set) {
            fail!(
                Scheduler,
                "{what} is not supported; remove it (only plain shifted flow sigmas are)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SchedulerConfig> {
        serde_json::from_str::<RawConfig>(json)?.into_config()
    }

    /// Wan's diffusers scheduler file reads as `wan_default(3.0)`.
    #[test]
    fn wan_scheduler_file_is_the_wan_default() -> Result<()> {
        let cfg = parse(
            r#"{"_class_name": "UniPCMultistepScheduler", "beta_end": 0.02,
            "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
            "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
            "lower_order_final": true, "num_train_timesteps": 1000, "predict_x0": true,
            "prediction_type": "flow_prediction", "rescale_betas_zero_snr": false,
            "sample_max_value": 1.0, "solver_order": 2, "solver_p": null, "solver_type": "bh2",
            "steps_offset": 0, "thresholding": false, "timestep_spacing": "linspace",
            "trained_betas": null, "use_beta_sigmas": false, "use_exponential_sigmas": false,
            "use_flow_sigmas": true, "use_karras_sigmas": false}"#,
        )?;
        assert_eq!(cfg, SchedulerConfig::wan_default(3.0));
        Ok(())
    }

    /// Euler's `shift` is read when there is no `flow_shift`.
    #[test]
    fn euler_file_reads_shift() -> Result<()> {
        let cfg = parse(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0}"#)?;
        assert_eq!(cfg.class, Some(SchedulerKind::Euler));
        assert_eq!(cfg.shift, 5.0);
        Ok(())
    }

    /// Unsupported settings give one line naming the field.
    #[test]
    fn unsupported_settings_are_refused() {
        for (json, field) in [
            (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
            (r#"{"prediction_type": "epsilon"}"#, "prediction_type"),
            (r#"{"use_flow_sigmas": false}"#, "use_flow_sigmas"),
            (r#"{"solver_type": "bh3"}"#, "solver_type"),
            (r#"{"_class_name": "DDIMScheduler"}"#, "DDIMScheduler"),
            (r#"{"shift_terminal": 0.1}"#, "shift_terminal"),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    /// Combinations that make diffusers' last UniPC step non-finite are refused up front.
    #[test]
    fn non_finite_unipc_endings_are_refused() {
        let mut cfg = SchedulerConfig::wan_default(3.0);
        cfg.lower_order_final = false;
        assert!(cfg.validate(SchedulerKind::UniPc, 4).is_err());
        assert!(cfg.validate(SchedulerKind::UniPc, 1).is_ok());
        assert!(cfg.validate(SchedulerKind::Euler, 4).is_ok());
        cfg.final_sigma = FinalSigma::SigmaMin;
        assert!(cfg.validate(SchedulerKind::UniPc, 4).is_ok());
        let mut bh1 = SchedulerConfig::wan_default(3.0);
        bh1.solver_type = SolverType::Bh1;
        assert!(bh1.validate(SchedulerKind::UniPc, 1).is_err());
        assert!(SchedulerConfig::wan_default(3.0)
            .validate(SchedulerKind::UniPc, 0)
            .is_err());
    }
}

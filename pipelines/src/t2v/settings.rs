//! The settings of one generation: their defaults, the layers that override them (a model's
//! `generation_config.json`, command-line flags, batch jobs) and their validation.

use crate::schedulers::{SchedulerConfig, SchedulerKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Pixel sides must be multiples of this: the Wan VAE's 8x downsampling times the 2x2 patches.
pub const SIZE_MULTIPLE: usize = 16;
/// Denoising steps at most: Wan's noise schedule has 1000 training timesteps.
pub const MAX_STEPS: usize = 1000;
/// The Wan VAE's spatial compression.
pub const VAE_SPATIAL: usize = 8;
/// The Wan VAE's temporal compression: `frames = 4k + 1` become `k + 1` latent frames.
pub const VAE_TEMPORAL: usize = 4;

/// A bad setting, named with the value to use instead.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    /// A size that is not `WIDTHxHEIGHT`.
    #[error("size `{0}` is not WIDTHxHEIGHT: use e.g. 832x480")]
    SizeSyntax(String),
    /// A side that is not a positive multiple of 16.
    #[error("size {size} is not a multiple of {SIZE_MULTIPLE}: use {suggestion}")]
    SizeMultiple {
        /// The size asked for.
        size: Size,
        /// The nearest valid sizes.
        suggestion: String,
    },
    /// A frame count that is not `4k + 1`.
    #[error("frames {frames} is not 4k+1: use {suggestion}")]
    Frames {
        /// The count asked for.
        frames: usize,
        /// The nearest valid counts.
        suggestion: String,
    },
    /// Zero steps, or more than the noise schedule has.
    #[error(
        "steps {0} must be from 1 to {MAX_STEPS} (the noise schedule's length): use e.g. 50 \
         (Wan's default) or 20 for a quick look"
    )]
    Steps(usize),
    /// Negative or non-finite guidance.
    #[error(
        "guidance {0} must be a number >= 0: use 5.0 (Wan's default), or 1 to turn guidance off"
    )]
    Guidance(f64),
    /// Non-positive or non-finite flow shift.
    #[error("shift {0} must be a positive number: use 3.0 at 480p or 5.0 at 720p (Wan's values)")]
    Shift(f64),
    /// Zero frame rate.
    #[error("fps must be at least 1: use 16 (Wan's rate)")]
    Fps,
    /// The dmd sampler without timesteps.
    #[error("the dmd sampler needs its timesteps: pass --timesteps (FastWan's are 1000,757,522)")]
    NoTimesteps,
    /// Timesteps given to a sampler that makes its own.
    #[error("--timesteps is for --scheduler dmd; the {0} sampler spaces its own (set --steps)")]
    TimestepsUnused(Sampler),
    /// Timesteps that are not a decreasing list of whole numbers.
    #[error("timesteps `{0}` must decrease and each be from 1 to 1000: use e.g. 1000,757,522")]
    TimestepOrder(String),
    /// A step count that contradicts the timesteps.
    #[error(
        "steps {steps} contradicts the dmd sampler's {count} timesteps: leave --steps out, or \
         give {steps} --timesteps"
    )]
    StepsVersusTimesteps {
        /// The steps asked for.
        steps: usize,
        /// The timesteps given.
        count: usize,
    },
}

/// Frame size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl Size {
    /// Checks that both sides are positive multiples of [`SIZE_MULTIPLE`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        let ok = |side: usize| side > 0 && side.is_multiple_of(SIZE_MULTIPLE);
        if ok(self.width) && ok(self.height) {
            return Ok(());
        }
        let (w_down, w_up) = nearest_multiples(self.width);
        let (h_down, h_up) = nearest_multiples(self.height);
        let suggestion = if (w_down, h_down) == (w_up, h_up) || w_down == 0 || h_down == 0 {
            format!("{w_up}x{h_up}")
        } else {
            format!("{w_down}x{h_down} or {w_up}x{h_up}")
        };
        Err(SettingsError::SizeMultiple {
            size: *self,
            suggestion,
        })
    }
}

/// The multiples of [`SIZE_MULTIPLE`] at or below and at or above `side` (the upper at least 16).
fn nearest_multiples(side: usize) -> (usize, usize) {
    let down = side / SIZE_MULTIPLE * SIZE_MULTIPLE;
    let up = side.div_ceil(SIZE_MULTIPLE).max(1) * SIZE_MULTIPLE;
    (down, up)
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Size {
    type Err = SettingsError;

    /// Parses `WIDTHxHEIGHT`, e.g. `832x480`.
    fn from_str(text: &str) -> Result<Self, SettingsError> {
        let bad = || SettingsError::SizeSyntax(text.to_string());
        let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        Ok(Self {
            width: w.trim().parse().map_err(|_| bad())?,
            height: h.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The sampler, by its command-line name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// UniPC multistep with flow sigmas (Wan's default).
    Unipc,
    /// First-order flow-matching Euler.
    Euler,
    /// Few-step sampling of DMD-distilled models over given timesteps (FastWan).
    Dmd,
}

impl FromStr for Sampler {
    type Err = String;

    /// `unipc`, `euler` or `dmd`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "unipc" => Ok(Self::Unipc),
            "euler" => Ok(Self::Euler),
            "dmd" => Ok(Self::Dmd),
            other => Err(format!(
                "`{other}` is not a sampler: use unipc, euler or dmd"
            )),
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unipc => "unipc",
            Self::Euler => "euler",
            Self::Dmd => "dmd",
        })
    }
}

impl Sampler {
    /// The diffusers scheduler that implements it (`None` for dmd, which is not one).
    pub fn kind(self) -> Option<SchedulerKind> {
        match self {
            Self::Unipc => Some(SchedulerKind::UniPc),
            Self::Euler => Some(SchedulerKind::Euler),
            Self::Dmd => None,
        }
    }
}

/// Parses a comma-separated timestep list such as `1000,757,522`.
pub fn parse_timesteps(text: &str) -> Result<Vec<u32>, SettingsError> {
    text.split(',')
        .map(|t| t.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SettingsError::TimestepOrder(text.to_string()))
}

/// Every setting of one generation, resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// Frame size in pixels.
    pub size: Size,
    /// Frames, `4k + 1`.
    pub frames: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at most 1 runs the prompt alone (diffusers' rule).
    pub guidance: f64,
    /// Flow shift of the noise schedule.
    pub shift: f64,
    /// The sampler.
    pub scheduler: Sampler,
    /// Frame rate of the video file.
    pub fps: u32,
    /// The dmd sampler's timesteps (`None` for the other samplers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<u32>>,
}

impl Settings {
    /// Checks every setting; the first bad one is reported with what to use instead.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.size.validate()?;
        if self.frames % VAE_TEMPORAL != 1 {
            let below = self.frames.saturating_sub(1) / VAE_TEMPORAL * VAE_TEMPORAL + 1;
            return Err(SettingsError::Frames {
                frames: self.frames,
                suggestion: format!("{below} or {}", below + VAE_TEMPORAL),
            });
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(SettingsError::Steps(self.steps));
        }
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return Err(SettingsError::Guidance(self.guidance));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(SettingsError::Shift(self.shift));
        }
        if self.fps == 0 {
            return Err(SettingsError::Fps);
        }
        match (&self.timesteps, self.scheduler) {
            (None, Sampler::Dmd) => return Err(SettingsError::NoTimesteps),
            (Some(_), Sampler::Unipc | Sampler::Euler) => {
                return Err(SettingsError::TimestepsUnused(self.scheduler))
            }
            (Some(timesteps), Sampler::Dmd) => check_timesteps(timesteps)?,
            (None, _) => {}
        }
        Ok(())
    }

    /// How many times the sampler adds fresh noise: once per step but the last for dmd.
    pub fn renoise_steps(&self) -> usize {
        match self.scheduler {
            Sampler::Dmd => self.steps.saturating_sub(1),
            Sampler::Unipc | Sampler::Euler => 0,
        }
    }

    /// Whether the unconditional (negative prompt) branch runs: guidance above 1, as diffusers.
    pub fn guided(&self) -> bool {
        self.guidance > 1.0
    }

    /// Shape of the initial latents for `channels` latent channels:
    /// `[1, channels, (frames - 1) / 4 + 1, height / 8, width / 8]`.
    pub fn latent_shape(&self, channels: usize) -> [usize; 5] {
        [
            1,
            channels,
            (self.frames - 1) / VAE_TEMPORAL + 1,
            self.size.height / VAE_SPATIAL,
            self.size.width / VAE_SPATIAL,
        ]
    }

    /// The scheduler configuration: `base` (the model's file or Wan's default) with this run's
    /// flow shift.
    pub fn scheduler_config(&self, base: &SchedulerConfig) -> SchedulerConfig {
        SchedulerConfig {
            shift: self.shift,
            ..base.clone()
        }
    }
}

/// Settings some layer sets, the rest left to the layers below: Wan's defaults, then a model's
/// `generation_config.json`, then command-line flags, then a batch job.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingOverrides {
    /// Frame size, `WIDTHxHEIGHT`.
    pub size: Option<Size>,
    /// Frames.
    pub frames: Option<usize>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Guidance scale.
    pub guidance: Option<f64>,
    /// Flow shift.
    pub shift: Option<f64>,
    /// Sampler.
    pub scheduler: Option<Sampler>,
    /// Frame rate.
    pub fps: Option<u32>,
    /// The dmd sampler's timesteps.
    pub timesteps: Option<Vec<u32>>,
}

/// Checks that `timesteps` decrease within the training schedule's 1..=1000 and are not more
/// than [`MAX_STEPS`].
fn check_timesteps(timesteps: &[u32]) -> Result<(), SettingsError> {
    let decreasing = timesteps.windows(2).all(|w| w[0] > w[1]);
    let in_range = timesteps
        .iter()
        .all(|&t| (1..=MAX_STEPS as u32).contains(&t));
    if timesteps.is_empty() || !decreasing || !in_range {
        let text: Vec<String> = timesteps.iter().map(u32::to_string).collect();
        return Err(SettingsError::TimestepOrder(text.join(",")));
    }
    Ok(())
}

impl SettingOverrides {
    /// Wan 2.1's defaults at 480p: 832x480, 81 frames, 50 steps, guidance 5, 16 fps (the shift and
    /// the sampler come from the model's scheduler config).
    pub fn wan() -> Self {
        Self {
            size: Some(Size {
                width: 832,
                height: 480,
            }),
            frames: Some(81),
            steps: Some(50),
            guidance: Some(5.0),
            shift: None,
            scheduler: None,
            fps: Some(16),
            timesteps: None,
        }
    }

    /// FastWan's defaults (FastVideo's DMD pipeline): the dmd sampler at timesteps 1000, 757,
    /// 522 with flow shift 8, no guidance, 832x448, 61 frames, 16 fps.
    pub fn fastwan() -> Self {
        Self {
            size: Some(Size {
                width: 832,
                height: 448,
            }),
            frames: Some(61),
            steps: None,
            guidance: Some(1.0),
            shift: Some(8.0),
            scheduler: Some(Sampler::Dmd),
            fps: Some(16),
            timesteps: Some(vec![1000, 757, 522]),
        }
    }

    /// Reads a model's `generation_config.json` (the same keys, all optional, and `attention`,
    /// which is returned apart: the model's default attention method as a spec string such as
    /// `vsa:sparsity=0.8`).
    pub fn from_file(path: &Path) -> crate::Result<(Self, Option<String>)> {
        use crate::error::ResultExt;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse {}", path.display()))?;
        let attention = match value.as_object_mut().and_then(|o| o.remove("attention")) {
            None => None,
            Some(serde_json::Value::String(spec)) => Some(spec),
            Some(other) => crate::error::fail!(
                Input,
                "`attention` in {} must be a method spec string such as \"vsa:sparsity=0.8\", \
                 not {other}",
                path.display()
            ),
        };
        let layer: Self = serde_json::from_value(value)
            .with_context(|| format!("cannot parse {}", path.display()))?;
        let layer = layer
            .checked()
            .with_context(|| format!("in {}", path.display()))?;
        Ok((layer, attention))
    }

    /// This layer, checked on its own: timesteps imply the dmd sampler, and are refused next to
    /// another sampler.
    pub fn checked(mut self) -> Result<Self, SettingsError> {
        if self.timesteps.is_some() {
            match self.scheduler {
                None => self.scheduler = Some(Sampler::Dmd),
                Some(Sampler::Dmd) => {}
                Some(other) => return Err(SettingsError::TimestepsUnused(other)),
            }
        }
        Ok(self)
    }

    /// These settings with every value `over` sets replacing ours (timesteps in `over` also
    /// replace our step count, which they fix).
    pub fn then(&self, over: &SettingOverrides) -> SettingOverrides {
        let steps = match over.timesteps {
            Some(_) => over.steps,
            None => over.steps.or(self.steps),
        };
        SettingOverrides {
            size: over.size.or(self.size),
            frames: over.frames.or(self.frames),
            steps,
            guidance: over.guidance.or(self.guidance),
            shift: over.shift.or(self.shift),
            scheduler: over.scheduler.or(self.scheduler),
            fps: over.fps.or(self.fps),
            timesteps: over.timesteps.clone().or_else(|| self.timesteps.clone()),
        }
    }

    /// The settings, taking what is still unset from Wan's defaults and `scheduler` (the
    /// model's scheduler config: its flow shift and class), then validated.
    pub fn resolve(&self, scheduler: &SchedulerConfig) -> Result<Settings, SettingsError> {
        let wan = Self::wan();
        let all = wan.then(self);
        let default_sampler = match scheduler.class {
            Some(SchedulerKind::Euler) => Sampler::Euler,
            _ => Sampler::Unipc,
        };
        let sampler = all.scheduler.unwrap_or(default_sampler);
        // Another sampler chosen over a model's dmd default leaves its timesteps behind (a
        // layer naming both is refused by `checked`).
        let timesteps = all.timesteps.filter(|_| sampler == Sampler::Dmd);
        let steps = match (&timesteps, self.steps) {
            (Some(list), Some(steps)) if steps != list.len() => {
                return Err(SettingsError::StepsVersusTimesteps {
                    steps,
                    count: list.len(),
                })
            }
            (Some(list), _) => list.len(),
            // timesteps left behind by another sampler took the steps below them along
            (None, _) => all.steps.or(wan.steps).expect("Wan default"),
        };
        let settings = Settings {
            size: all.size.expect("Wan default"),
            frames: all.frames.expect("Wan default"),
            steps,
            guidance: all.guidance.expect("Wan default"),
            shift: all.shift.unwrap_or(scheduler.shift),
            scheduler: sampler,
            fps: all.fps.expect("Wan default"),
            timesteps,
        };
        settings.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        SettingOverrides::default()
            .resolve(&SchedulerConfig::wan_default(3.0))
            .unwrap()
    }

    /// Unset values are Wan's; later layers win.
    #[test]
    fn defaults_and_layers() {
        let s = settings();
        assert_eq!((s.size.width, s.size.height, s.frames), (832, 480, 81));
        assert_eq!((s.steps, s.guidance, s.shift, s.fps), (50, 5.0, 3.0, 16));
        assert_eq!(s.scheduler, Sampler::Unipc);
        let model = SettingOverrides {
            steps: Some(20),
            frames: Some(17),
            ..Default::default()
        };
        let flags = SettingOverrides {
            steps: Some(4),
            shift: Some(5.0),
            ..Default::default()
        };
        let s = model
            .then(&flags)
            .resolve(&SchedulerConfig::wan_default(3.0))
            .unwrap();
        assert_eq!((s.steps, s.frames, s.shift), (4, 17, 5.0));
    }

    /// Each bad value gives its own message with a valid alternative.
    #[test]
    fn messages_suggest_valid_values() {
        let check = |edit: &dyn Fn(&mut Settings), want: &str| {
            let mut s = settings();
            edit(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        };
        check(&|s| s.frames = 80, "frames 80 is not 4k+1: use 77 or 81");
        check(&|s| s.frames = 0, "use 1 or 5");
        check(
            &|s| s.size = "100x64".parse().unwrap(),
            "size 100x64 is not a multiple of 16: use 96x64 or 112x64",
        );
        check(&|s| s.size = "8x8".parse().unwrap(), "use 16x16");
        check(&|s| s.steps = 0, "steps 0 must be from 1 to 1000");
        check(&|s| s.steps = usize::MAX, "must be from 1 to 1000");
        check(&|s| s.guidance = -1.0, "guidance -1 must be a number >= 0");
        check(&|s| s.shift = 0.0, "shift 0 must be a positive number");
        assert!("83x".parse::<Size>().is_err());
    }

    /// Timesteps fix the step count of the layers below them; a later explicit step count
    /// that contradicts them is refused; another sampler leaves them behind.
    #[test]
    fn timesteps_layering() {
        let scheduler = SchedulerConfig::wan_default(3.0);
        let model = SettingOverrides {
            steps: Some(20),
            ..Default::default()
        };
        let flags = SettingOverrides {
            timesteps: Some(vec![1000, 500]),
            ..Default::default()
        }
        .checked()
        .unwrap();
        let s = model.then(&flags).resolve(&scheduler).unwrap();
        assert_eq!((s.scheduler, s.steps), (Sampler::Dmd, 2));
        assert_eq!(s.renoise_steps(), 1);
        let steps = SettingOverrides {
            steps: Some(4),
            ..Default::default()
        };
        let err = SettingOverrides::fastwan()
            .then(&steps)
            .resolve(&scheduler)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("contradicts the dmd sampler's 3 timesteps"),
            "{err}"
        );
        let euler = SettingOverrides {
            scheduler: Some(Sampler::Euler),
            ..Default::default()
        };
        let s = SettingOverrides::fastwan()
            .then(&euler)
            .resolve(&scheduler)
            .unwrap();
        assert_eq!(
            (s.scheduler, s.timesteps.clone(), s.steps),
            (Sampler::Euler, None, 50)
        );
        assert_eq!(s.renoise_steps(), 0);
    }

    /// The latent shape follows the VAE's compression.
    #[test]
    fn latent_shape() {
        let mut s = settings();
        assert_eq!(s.latent_shape(16), [1, 16, 21, 60, 104]);
        s.frames = 1;
        assert_eq!(s.latent_shape(16)[2], 1);
    }
}

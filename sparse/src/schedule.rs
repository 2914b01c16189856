//! Which method runs where: a default method plus rules by layer and denoising step, first
//! match wins. [`AttentionSchedule::dense_steps`] and [`AttentionSchedule::dense_layers`] are
//! the rules every method offers (`--dense-steps`, `--dense-layers`).

use crate::dense::Dense;
use crate::error::{Error, Result};
use crate::method::{AttentionMethod, AttentionTarget};
use crate::seam::CallSite;
use serde_json::{json, Value};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// A number of denoising steps, absolute or as a fraction of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepCount {
    /// This many steps.
    Steps(usize),
    /// This share of the run's steps, rounded to the nearest step.
    Fraction(f64),
}

impl StepCount {
    /// Parses `12` (steps) or `0.2` (fraction, in [0, 1]), as `--dense-steps` takes them.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if let Ok(n) = text.parse::<usize>() {
            return Ok(Self::Steps(n));
        }
        match text.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Fraction(f)),
            _ => Err(Error::BadValue {
                flag: "dense-steps".to_string(),
                value: text.to_string(),
                expected: "not a step count: use a whole number (12) or a fraction in [0, 1] (0.2)"
                    .to_string(),
            }),
        }
    }

    /// As JSON: `{"steps": n}` or `{"fraction": f}`.
    pub fn describe(&self) -> Value {
        match *self {
            Self::Steps(n) => json!({ "steps": n }),
            Self::Fraction(f) => json!({ "fraction": f }),
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

    /// Parses a comma-separated list of indices and inclusive ranges (`0,3-5`), as
    /// `--dense-layers` takes them.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::BadValue {
            flag: "dense-layers".to_string(),
            value: text.to_string(),
            expected: "not a layer list: use indices and ranges like 0 or 0-2,29".to_string(),
        };
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

    /// The largest index in the set, if any.
    pub fn last(&self) -> Option<usize> {
        self.0.iter().map(|r| *r.end()).max()
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
    pub method: Arc<dyn AttentionMethod>,
}

impl Rule {
    fn covers(&self, site: CallSite) -> bool {
        let count = site.step.count;
        let from = self.from.resolve(count);
        let to = self.to.map_or(count, |t| t.resolve(count));
        self.layers.as_ref().is_none_or(|l| l.contains(site.layer))
            && (from..to).contains(&site.step.index)
    }

    fn describe(&self) -> Value {
        json!({
            "layers": self.layers.as_ref().map_or("all".to_string(), |l| l.to_string()),
            "from_step": self.from.describe(),
            "to_step": self.to.map(|t| t.describe()),
            "method": describe_method(self.method.as_ref()),
        })
    }
}

/// The method for every (layer, step): the first matching rule, else the default.
#[derive(Clone, Debug)]
pub struct AttentionSchedule {
    /// Method where no rule applies.
    pub default: Arc<dyn AttentionMethod>,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
}

impl AttentionSchedule {
    /// One method everywhere.
    pub fn new(default: Arc<dyn AttentionMethod>) -> Self {
        Self {
            default,
            rules: Vec::new(),
        }
    }

    /// [`AttentionSchedule::new`] for a method not shared yet.
    pub fn of(method: impl AttentionMethod + 'static) -> Self {
        Self::new(Arc::new(method))
    }

    /// The same schedule for another rank of a multi-GPU run: every method that keeps state
    /// across calls replaced by a fresh one ([`AttentionMethod::fresh`]); a method that appears
    /// in several places stays one instance.
    pub fn for_another_rank(&self) -> Self {
        let mut fresh: Vec<(*const (), Arc<dyn AttentionMethod>)> = Vec::new();
        let mut renew = |method: &Arc<dyn AttentionMethod>| {
            let key = Arc::as_ptr(method) as *const ();
            if let Some((_, done)) = fresh.iter().find(|(k, _)| *k == key) {
                return Arc::clone(done);
            }
            let done = method.fresh().unwrap_or_else(|| Arc::clone(method));
            fresh.push((key, Arc::clone(&done)));
            done
        };
        Self {
            default: renew(&self.default),
            rules: self
                .rules
                .iter()
                .map(|rule| Rule {
                    method: renew(&rule.method),
                    ..rule.clone()
                })
                .collect(),
        }
    }

    /// Dense attention for the first `steps` steps.
    pub fn dense_steps(self, steps: StepCount) -> Self {
        self.rule(Rule {
            layers: None,
            from: StepCount::Steps(0),
            to: Some(steps),
            method: Arc::new(Dense),
        })
    }

    /// Dense attention in `layers` at every step.
    pub fn dense_layers(self, layers: LayerSet) -> Self {
        self.rule(Rule {
            layers: Some(layers),
            from: StepCount::Steps(0),
            to: None,
            method: Arc::new(Dense),
        })
    }

    /// Adds a rule after the existing ones.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// The method for a call site.
    pub fn method_at(&self, site: CallSite) -> &Arc<dyn AttentionMethod> {
        self.rules
            .iter()
            .find(|r| r.covers(site))
            .map_or(&self.default, |r| &r.method)
    }

    /// Every method of the schedule: the default, then each rule's.
    pub fn methods(&self) -> impl Iterator<Item = &Arc<dyn AttentionMethod>> {
        std::iter::once(&self.default).chain(self.rules.iter().map(|r| &r.method))
    }

    /// Checks every method against the run, and that the layers the rules name exist.
    pub fn validate(&self, target: &AttentionTarget) -> Result<()> {
        if let Some(count) = target.layers {
            for layers in self.rules.iter().filter_map(|r| r.layers.as_ref()) {
                if let Some(last) = layers.last().filter(|&l| l >= count) {
                    return Err(Error::Invalid(format!(
                        "layer {last} in --dense-layers {layers} does not exist: the transformer \
                         has layers 0-{}",
                        count.saturating_sub(1)
                    )));
                }
            }
        }
        self.methods().try_for_each(|m| m.validate(target))
    }

    /// The schedule as JSON: the default method and the rules in order, with resolved options.
    pub fn describe(&self) -> Value {
        let rules: Vec<Value> = self.rules.iter().map(Rule::describe).collect();
        json!({ "default": describe_method(self.default.as_ref()), "rules": rules })
    }
}

/// A method's name and every option it runs with.
pub fn describe_method(method: &dyn AttentionMethod) -> Value {
    json!({ "name": method.name(), "options": method.describe() })
}

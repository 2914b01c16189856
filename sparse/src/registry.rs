//! The methods a run can choose by name, and how a choice becomes a schedule.
//!
//! A [`MethodSpec`] is one method with option values as text: what `--attention vsa
//! --sparsity 0.9` says on the command line, what `"attention": "vsa", "sparsity": 0.9` says in
//! a batch job, and what `vsa:sparsity=0.9,dense_steps=2` says as one string. The [`Registry`]
//! turns it into an [`AttentionSchedule`] with the method's [`MethodEntry`]: the schedule
//! options every method takes (`dense_steps`, `dense_layers`) with the method's defaults, then
//! the method built from the rest; a value the method does not read is an error.

use crate::error::{Error, Result};
use crate::method::AttentionMethod;
use crate::options::{flag_of, OptionSpec, OptionValues};
use crate::schedule::{AttentionSchedule, LayerSet, StepCount};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How a method is made from its options.
#[derive(Clone, Copy)]
pub struct MethodEntry {
    /// Its name (`--attention NAME`).
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// The options it reads.
    pub options: &'static [OptionSpec],
    /// First steps that run dense when `dense_steps` is not given (`12`, `0.2`, `0`).
    pub dense_steps: &'static str,
    /// Layers that always run dense when `dense_layers` is not given (`0`, or empty).
    pub dense_layers: &'static str,
    /// Builds the method, taking the values of its options out of `values`.
    pub build: fn(&mut OptionValues) -> Result<Arc<dyn AttentionMethod>>,
}

/// True for exact attention, on which the schedule options (dense steps and layers) do nothing.
fn is_dense(entry: &MethodEntry) -> bool {
    entry.name == crate::methods::dense::ENTRY.name
}

/// The schedule options every method takes.
pub const SCHEDULE_OPTIONS: [OptionSpec; 2] = [
    OptionSpec {
        key: "dense_steps",
        value: "N|F",
        help: "first steps run dense: a count (12) or a fraction of the steps (0.2) (12 for vmoba, 0.2 for sparsed, else 0)",
    },
    OptionSpec {
        key: "dense_layers",
        value: "LAYERS",
        help: "layers that always run dense, e.g. 0 or 0-1,29 (0 for vmoba, else none)",
    },
];

/// A method by name with option values as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodSpec {
    /// The method's name.
    pub name: String,
    /// Values of its options and of the schedule options.
    pub options: OptionValues,
}

impl MethodSpec {
    /// `name` with no option values.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            options: OptionValues::new(),
        }
    }
}

impl FromStr for MethodSpec {
    type Err = Error;

    /// Parses `NAME` or `NAME:KEY=VALUE,KEY=VALUE` (e.g. `vsa:sparsity=0.875,dense_steps=2`).
    fn from_str(text: &str) -> Result<Self> {
        let (name, rest) = text.split_once(':').unwrap_or((text, ""));
        let mut spec = Self::named(name.trim());
        for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "method `{text}`: `{pair}` is not KEY=VALUE (write e.g. vsa:sparsity=0.875,dense_steps=2)"
                )));
            };
            spec.options
                .set(&key.trim().replace('-', "_"), value.trim());
        }
        Ok(spec)
    }
}

impl fmt::Display for MethodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        let pairs: Vec<String> = self
            .options
            .keys()
            .map(|k| format!("{k}={}", self.options.get(k).unwrap_or_default()))
            .collect();
        if !pairs.is_empty() {
            write!(f, ":{}", pairs.join(","))?;
        }
        Ok(())
    }
}

/// The methods a run can choose, by name.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<MethodEntry>,
}

impl Registry {
    /// The methods of this crate: dense, vsa, vmoba, paro and sparsed.
    pub fn builtin() -> Self {
        Self {
            entries: vec![
                crate::dense::ENTRY,
                crate::vsa::ENTRY,
                crate::vmoba::ENTRY,
                crate::paro::ENTRY,
                crate::sparsed::ENTRY,
            ],
        }
    }

    /// Adds a method; its name must be new.
    pub fn register(&mut self, entry: MethodEntry) -> Result<()> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::Invalid(format!(
                "an attention method named `{}` is registered already",
                entry.name
            )));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Every method, in registration order.
    pub fn entries(&self) -> &[MethodEntry] {
        &self.entries
    }

    /// The method called `name`.
    pub fn get(&self, name: &str) -> Result<&MethodEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::UnknownMethod {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// The names, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// Every option any method takes, once per key, with the methods that take it (the
    /// schedule options first, taken by all).
    pub fn options(&self) -> Vec<(OptionSpec, Vec<&'static str>)> {
        let mut all: Vec<(OptionSpec, Vec<&'static str>)> = SCHEDULE_OPTIONS
            .iter()
            .map(|o| (*o, self.names()))
            .collect();
        for entry in &self.entries {
            for option in entry.options {
                match all.iter_mut().find(|(o, _)| o.key == option.key) {
                    Some((_, methods)) => methods.push(entry.name),
                    None => all.push((*option, vec![entry.name])),
                }
            }
        }
        all
    }

    /// True when `key` is an option of some method (or a schedule option).
    pub fn is_option(&self, key: &str) -> bool {
        self.options().iter().any(|(o, _)| o.key == key)
    }

    /// `spec` without the values its method does not take: for defaults that apply to some
    /// methods only (a batch's command-line options under a job that picks another method).
    pub fn applicable(&self, spec: &MethodSpec) -> Result<MethodSpec> {
        let entry = self.get(&spec.name)?;
        let mut kept = spec.clone();
        kept.options.retain(|key| {
            let schedule = SCHEDULE_OPTIONS.iter().any(|o| o.key == key);
            (schedule && !is_dense(entry)) || entry.options.iter().any(|o| o.key == key)
        });
        Ok(kept)
    }

    /// The schedule `spec` asks for: its method, dense in the first `dense_steps` steps and in
    /// the `dense_layers` (the method's defaults where not given).
    pub fn schedule(&self, spec: &MethodSpec) -> Result<AttentionSchedule> {
        let entry = self.get(&spec.name)?;
        let mut values = spec.options.clone();
        if is_dense(entry) {
            if let Some(option) = SCHEDULE_OPTIONS
                .iter()
                .find(|o| values.get(o.key).is_some())
            {
                return Err(Error::NotForMethod {
                    flag: flag_of(option.key),
                    method: entry.name.to_string(),
                    hint: "dense attention is dense in every step and layer already".to_string(),
                });
            }
        }
        let steps = values
            .take_text("dense_steps")
            .unwrap_or_else(|| entry.dense_steps.to_string());
        let steps = StepCount::parse(&steps)?;
        let layers = values
            .take_text("dense_layers")
            .unwrap_or_else(|| entry.dense_layers.to_string());
        let layers = LayerSet::parse(&layers)?;
        let method = self.build(entry, values)?;
        Ok(AttentionSchedule::new(method)
            .dense_steps(steps)
            .dense_layers(layers))
    }

    /// The method `spec` names, alone (its schedule options are refused like any option it
    /// does not take): for one attention call outside a sampling loop.
    pub fn method(&self, spec: &MethodSpec) -> Result<Arc<dyn AttentionMethod>> {
        self.build(self.get(&spec.name)?, spec.options.clone())
    }

    /// Builds `entry`'s method from `values`, refusing values it does not read.
    fn build(
        &self,
        entry: &MethodEntry,
        mut values: OptionValues,
    ) -> Result<Arc<dyn AttentionMethod>> {
        let method = (entry.build)(&mut values)?;
        if let Some(key) = values.keys().next() {
            let takers: Vec<&str> = self
                .entries
                .iter()
                .filter(|e| e.options.iter().any(|o| o.key == key))
                .map(|e| e.name)
                .collect();
            return Err(Error::NotForMethod {
                flag: flag_of(key),
                method: entry.name.to_string(),
                hint: if takers.is_empty() {
                    "no attention method takes it".to_string()
                } else {
                    format!("it is an option of {}", takers.join(", "))
                },
            });
        }
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense steps or layers do nothing on dense attention: refused when asked for, and not
    /// inherited by a dense batch job from the command line.
    #[test]
    fn schedule_options_on_dense_attention_are_refused() {
        let registry = Registry::builtin();
        for spec in ["dense:dense_steps=2", "dense:dense_layers=0"] {
            let err = registry
                .schedule(&spec.parse().unwrap())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("dense in every step and layer already"),
                "{err}"
            );
        }
        let inherited = registry
            .applicable(&"dense:dense_steps=2".parse().unwrap())
            .unwrap();
        assert!(registry.schedule(&inherited).is_ok());
        let vsa = registry
            .applicable(&"vsa:dense_steps=2".parse().unwrap())
            .unwrap();
        assert_eq!(vsa.options.get("dense_steps"), Some("2"));
    }

    #[test]
    fn specs_parse_and_print_back() {
        let spec: MethodSpec = "vsa:sparsity=0.875, dense-steps=2".parse().unwrap();
        assert_eq!(spec.name, "vsa");
        assert_eq!(spec.options.get("sparsity"), Some("0.875"));
        assert_eq!(spec.options.get("dense_steps"), Some("2"));
        assert_eq!(spec.to_string(), "vsa:dense_steps=2,sparsity=0.875");
        assert!("vsa:sparsity".parse::<MethodSpec>().is_err());
    }

    #[test]
    fn schedules_take_defaults_and_refuse_options_of_other_methods() {
        let registry = Registry::builtin();
        let schedule = registry.schedule(&"vmoba".parse().unwrap()).unwrap();
        assert_eq!(schedule.rules.len(), 2); // 12 dense steps, layer 0 dense
        let err = registry
            .schedule(&"vmoba:sparsity=0.5".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "option --sparsity does not apply to --attention vmoba: it is an option of vsa"
        );
        let kept = registry
            .applicable(&"vsa:topk=2,dense_steps=3".parse().unwrap())
            .unwrap();
        assert_eq!(kept.to_string(), "vsa:dense_steps=3");
        let err = registry.schedule(&MethodSpec::named("magic")).unwrap_err();
        assert!(err
            .to_string()
            .contains("use one of dense, vsa, vmoba, paro, sparsed"));
    }
}

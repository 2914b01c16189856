//! Method options as text: what each method declares ([`OptionSpec`]), and the values given
//! for them ([`OptionValues`]) from command-line flags, batch job keys or a method spec string,
//! which a method reads into its own typed options struct.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::str::FromStr;

/// One option a method takes. Its key names the job key (`select_ratio`) and, with `-` for
/// `_`, the command-line flag (`--select-ratio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionSpec {
    /// Job key, snake_case.
    pub key: &'static str,
    /// Placeholder of the value in help texts (`S`, `FILE`).
    pub value: &'static str,
    /// What it sets, with its default in parentheses.
    pub help: &'static str,
}

impl OptionSpec {
    /// The command-line flag without dashes (`select-ratio`).
    pub fn flag(&self) -> String {
        flag_of(self.key)
    }
}

/// The flag of a job key: `select_ratio` -> `select-ratio`.
pub fn flag_of(key: &str) -> String {
    key.replace('_', "-")
}

/// Option values by key, as text. A method takes the ones it knows ([`OptionValues::take`]);
/// what is left over after it was built did not apply to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionValues(BTreeMap<String, String>);

impl OptionValues {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (snake_case) to `value`, replacing an earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_string(), value.into());
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// True when no value is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys given, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// These values with every value of `over` replacing ours.
    pub fn then(&self, over: &OptionValues) -> OptionValues {
        let mut merged = self.clone();
        merged.0.extend(over.0.clone());
        merged
    }

    /// Removes `key` and parses its value; `expected` describes a valid value for the error.
    pub fn take<T: FromStr>(&mut self, key: &str, expected: &str) -> Result<Option<T>> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(text) => match text.trim().parse() {
                Ok(value) => Ok(Some(value)),
                Err(_) => Err(Error::BadValue {
                    flag: flag_of(key),
                    value: text,
                    expected: expected.to_string(),
                }),
            },
        }
    }

    /// Removes `key` and returns its text.
    pub fn take_text(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Keeps only the keys `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.0.retain(|k, _| keep(k));
    }
}

/// Parses `4`, `3x4` or `4x6x4` into positive sizes.
pub fn parse_sizes(text: &str) -> std::result::Result<Vec<usize>, String> {
    text.split(['x', 'X', ','])
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{p}` is not a positive size")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_merge_and_name_their_flag_in_errors() {
        let mut base = OptionValues::new();
        base.set("sparsity", "0.5");
        base.set("block", "32");
        let mut job = OptionValues::new();
        job.set("sparsity", "0.9");
        let mut merged = base.then(&job);
        assert_eq!(
            merged.take::<f64>("sparsity", "a number").unwrap(),
            Some(0.9)
        );
        assert_eq!(merged.take::<f64>("sparsity", "a number").unwrap(), None);
        merged.set("select_ratio", "lots");
        let err = merged
            .take::<f64>("select_ratio", "a number in (0, 1]")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--select-ratio `lots`: a number in (0, 1]");
        assert_eq!(merged.keys().collect::<Vec<_>>(), vec!["block"]);
        assert_eq!(parse_sizes("3x4").unwrap(), vec![3, 4]);
        assert!(parse_sizes("0x4").is_err());
    }
}

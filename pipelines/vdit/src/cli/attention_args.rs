//! The attention flags of `generate`, `batch` and `attention`, made from a [`Registry`]: the
//! method by name, and one flag per option any registered method takes (`--sparsity`,
//! `--dense-steps`, ...), so that a method added to the registry brings its flags with it.
//! What the flags say is a [`MethodSpec`], the same thing a batch job's keys and a spec string
//! (`vsa:sparsity=0.875`) give.

use anyhow::{bail, Result};
use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgMatches, Command};
use sparse::options::OptionSpec;
use sparse::{MethodSpec, Registry, SCHEDULE_OPTIONS};

/// Where the method is named: `--attention` (default dense) or the probe's `--method`
/// (required).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodFlag {
    /// `--attention METHOD`, dense by default.
    Attention,
    /// `--method METHOD`, required.
    Method,
}

impl MethodFlag {
    fn id(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::Method => "method",
        }
    }
}

/// `command` with the method flag and every option flag of `registry`.
pub fn add_to(command: Command, registry: &Registry, flag: MethodFlag) -> Result<Command> {
    let mut method = Arg::new(flag.id())
        .long(flag.id())
        .value_name("METHOD")
        .value_parser(PossibleValuesParser::new(registry.names()));
    method = match flag {
        MethodFlag::Attention => method.default_value("dense").help("Self-attention method"),
        MethodFlag::Method => method.required(true).help("Method to run"),
    };
    let mut command = command.arg(method);
    for (option, methods) in options(registry, flag) {
        if command.get_arguments().any(|a| a.get_id() == option.key) {
            bail!(
                "the attention option `{}` clashes with a flag of `vdit {}`: rename the option",
                option.key,
                command.get_name()
            );
        }
        let takers = if methods.len() == registry.names().len() {
            "any method".to_string()
        } else {
            methods.join(", ")
        };
        command = command.arg(
            Arg::new(option.key)
                .long(option.flag())
                .value_name(option.value)
                .allow_negative_numbers(true)
                .help_heading("Attention options")
                .help(format!("{takers}: {}", option.help)),
        );
    }
    Ok(command)
}

/// The options with flags: every option of `registry`, without the schedule options for a
/// lone call (`--method`).
fn options(registry: &Registry, flag: MethodFlag) -> Vec<(OptionSpec, Vec<&'static str>)> {
    let mut all = registry.options();
    if flag == MethodFlag::Method {
        all.retain(|(o, _)| !SCHEDULE_OPTIONS.contains(o));
    }
    all
}

/// Whether the method flag was given on the command line (not left at its default).
pub fn named(matches: &ArgMatches, flag: MethodFlag) -> bool {
    matches.value_source(flag.id()) == Some(clap::parser::ValueSource::CommandLine)
}

/// The method and option values the flags of `matches` give.
pub fn spec(matches: &ArgMatches, registry: &Registry, flag: MethodFlag) -> MethodSpec {
    let mut spec = MethodSpec::named(
        matches
            .get_one::<String>(flag.id())
            .map_or("dense", String::as_str),
    );
    for (option, _) in options(registry, flag) {
        if let Some(value) = matches.get_one::<String>(option.key) {
            spec.options.set(option.key, value.clone());
        }
    }
    spec
}

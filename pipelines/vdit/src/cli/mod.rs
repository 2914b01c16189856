//! The `vdit` command line: argument parsing (the attention flags made from a method
//! [`Registry`]), dispatch, and one-line errors with exit code 1 for a failed run and 2 for
//! unusable arguments.

mod attention;
mod attention_args;
mod bars;
mod batch;
mod bench;
mod calibrate;
mod compare;
mod encode;
mod eval;
mod generate;
mod inspect;
mod options;
mod setup;
mod train;

use attention_args::MethodFlag;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use sparse::Registry;
use std::ffi::OsString;
use std::process::ExitCode;

/// Text-to-video generation with a Wan 2.1 diffusion transformer and sparse attention.
#[derive(Parser)]
#[command(name = "vdit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from a text prompt (default model: the embedded shapes model).
    Generate(Box<generate::GenerateArgs>),
    /// Generate many videos from a JSON-lines jobs file, loading the model once.
    Batch(Box<batch::BatchArgs>),
    /// Compare attention methods on prompts and seeds: timings, density, fidelity against
    /// dense, and a report (report.md, report.html) with side-by-side videos.
    Compare(Box<compare::CompareArgs>),
    /// Calibrate a sparse attention method on dense generations.
    Calibrate(Box<calibrate::CalibrateArgs>),
    /// Describe a transformer checkpoint: layout, configuration, parameter count.
    Inspect(inspect::InspectArgs),
    /// Run one attention method on q, k, v from a file and report the density it computed.
    Attention(attention::AttentionArgs),
    /// Encode a PNG frame folder or a .y4m file as a video (normally .mp4).
    Encode(encode::EncodeArgs),
    /// Generate held-out captions and read the pixels back: colour, shape and motion
    /// accuracies next to each method's fidelity to dense.
    Eval(Box<eval::EvalArgs>),
    /// Latency benchmarks (attention kernels, transformer forward).
    Bench(bench::BenchArgs),
    /// Compile the GPU kernels for this machine once, after installing (about 10 s), so that
    /// the first generation is as fast as later ones.
    Setup(setup::SetupArgs),
    /// Train the engine's own small model on procedural shape videos (VAE, then DiT).
    Train(train::TrainArgs),
    /// Compile some of candle's CUDA kernel modules into the driver's cache (run by vdit
    /// itself).
    #[command(hide = true)]
    CompileKernels(setup::CompileArgs),
}

/// `vdit` with the built-in attention methods, on this process's arguments.
pub fn main() -> ExitCode {
    run(&Registry::builtin(), std::env::args_os())
}

/// Runs `vdit` on `args` (the program name first) with the attention methods of `registry`,
/// reporting any failure as one line on stderr; returns the exit code.
pub fn run<I, T>(registry: &Registry, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let parsed = command(registry)
        .map_err(|e| ExitCode::from(report(&e)))
        .and_then(|command| command.try_get_matches_from(args).map_err(usage_error))
        .and_then(|matches| {
            Cli::from_arg_matches(&matches)
                .map(|cli| (cli, matches))
                .map_err(usage_error)
        });
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
    crate::interrupt::install();
    let result = match cli.command {
        Command::Generate(mut args) => {
            args.attention = attention_args::spec(sub, registry, MethodFlag::Attention);
            args.attention_named = attention_args::named(sub, MethodFlag::Attention);
            generate::run(*args, registry)
        }
        Command::Batch(mut args) => {
            args.attention = attention_args::spec(sub, registry, MethodFlag::Attention);
            args.attention_named = attention_args::named(sub, MethodFlag::Attention);
            batch::run(*args, registry)
        }
        Command::Attention(mut args) => {
            args.method = attention_args::spec(sub, registry, MethodFlag::Method);
            attention::run(args, registry)
        }
        Command::Compare(args) => compare::run(*args, registry),
        Command::Calibrate(args) => calibrate::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Eval(args) => eval::run(*args, registry),
        Command::Bench(args) => bench::run(args, registry),
        Command::Setup(args) => setup::run(args),
        Command::Train(args) => train::run(args, registry),
        Command::CompileKernels(args) => setup::compile(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report(&e)),
    }
}

/// The command with the attention flags of `registry` on the commands that take them.
fn command(registry: &Registry) -> anyhow::Result<clap::Command> {
    let mut command = Cli::command();
    for (name, flag) in [
        ("generate", MethodFlag::Attention),
        ("batch", MethodFlag::Attention),
        ("attention", MethodFlag::Method),
    ] {
        let sub = command
            .find_subcommand(name)
            .cloned()
            .expect("vdit has this subcommand");
        let sub = attention_args::add_to(sub, registry, flag)?;
        command = command.mut_subcommand(name, |_| sub);
    }
    Ok(command)
}

/// Prints `error` as one line and returns its exit code: 2 when the arguments cannot be used
/// as given, 130 when the command was interrupted, 1 when the run failed.
fn report(error: &anyhow::Error) -> u8 {
    eprintln!("error: {}", error_line(error));
    if is_usage(error) {
        2
    } else if crate::interrupt::caused(error) {
        crate::interrupt::EXIT_CODE
    } else {
        1
    }
}

/// True when some error in the chain says the arguments cannot be used as given.
fn is_usage(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<pipelines::Error>()
            .is_some_and(pipelines::Error::is_usage)
            || cause
                .downcast_ref::<sparse::Error>()
                .is_some_and(sparse::Error::is_usage)
            || cause
                .downcast_ref::<pipelines::t2v::SettingsError>()
                .is_some()
    })
}

/// An error and its causes on one line: `outer: cause: root cause`. A cause whose text its
/// wrapper already shows (errors that print their source) is not repeated, and a backtrace
/// that a library put in its message (candle does for driver errors) is dropped.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = without_backtrace(&cause.to_string());
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `text` up to the first line that is a backtrace frame (`  12: name`).
fn without_backtrace(text: &str) -> String {
    let frame = |l: &str| {
        let l = l.trim_start();
        let digits = l.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && l[digits..].starts_with(": ")
    };
    text.lines()
        .take_while(|l| !frame(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Exit code of a parse failure: help and version are not errors; anything else is one line
/// and code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let text = paragraph.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprintln!("error: {text} (see `vdit --help`)");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::error_line;

    /// An error that prints its source as part of its own message.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the VAE: {source}")]
    struct Wrapper {
        source: std::io::Error,
    }

    #[test]
    fn causes_are_not_repeated() {
        let error = anyhow::Error::new(Wrapper {
            source: std::io::Error::other("z_dim = 8 is not supported"),
        })
        .context("generate");
        assert_eq!(
            error_line(&error),
            "generate: cannot load the VAE: z_dim = 8 is not supported"
        );
        let plain = anyhow::anyhow!("root").context("middle\nsecond line");
        assert_eq!(error_line(&plain), "middle; second line: root");
    }

    #[test]
    fn backtraces_in_messages_are_dropped() {
        let error = anyhow::anyhow!(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: <unknown>\n   1: \
             candle_core::error::Error::bt\n             at src/error.rs:1"
        )
        .context("cannot load the transformer");
        assert_eq!(
            error_line(&error),
            "cannot load the transformer: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        );
    }
}

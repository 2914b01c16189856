//! The `vdit` command line: argument parsing, dispatch and one-line error reporting.

mod attention;
mod bars;
mod batch;
mod bench;
mod calibrate;
mod encode;
mod generate;
mod inspect;
pub mod method_args;
mod options;
mod plan;

use clap::{Parser, Subcommand};
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
    /// Generate a video from a text prompt (default model: the embedded tiny random one).
    Generate(Box<generate::GenerateArgs>),
    /// Generate many videos from a JSON-lines jobs file, loading the model once.
    Batch(Box<batch::BatchArgs>),
    /// Calibrate a sparse attention method on dense generations.
    Calibrate(Box<calibrate::CalibrateArgs>),
    /// Describe a transformer checkpoint: layout, configuration, parameter count.
    Inspect(inspect::InspectArgs),
    /// Run one attention method on q, k, v from a file and report the density it computed.
    Attention(attention::AttentionArgs),
    /// Encode a PNG frame folder or a .y4m file as a video (normally .mp4).
    Encode(encode::EncodeArgs),
    /// Latency benchmarks (attention kernels, transformer forward).
    Bench(bench::BenchArgs),
}

/// Parses the command line, runs the subcommand and turns any failure into one line on stderr
/// and exit code 1 (2 for unusable arguments).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Batch(args) => batch::run(*args),
        Command::Calibrate(args) => calibrate::run(*args),
        Command::Inspect(args) => inspect::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line: `outer: cause: root cause`.
pub fn error_line(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

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

//! `vdit`: text-to-video generation with sparse attention.

fn main() -> std::process::ExitCode {
    pipelines::cli::main()
}

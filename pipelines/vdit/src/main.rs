//! `vdit`: text-to-video generation with sparse attention.

fn main() -> std::process::ExitCode {
    vdit::cli::main()
}

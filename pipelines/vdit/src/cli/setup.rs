//! `vdit setup`: compiling candle's CUDA kernels once, after installing.
//!
//! candle ships its kernels as PTX, which the driver compiles the first time a module is used
//! (about 23 s of compiling for the eight modules vdit runs on an H200, 10 s of it the binary-op
//! module) and keeps in its on-disk cache; without this, a fresh machine's first generation
//! waits for it. The driver compiles one module at a time per process and holds up the
//! process's other CUDA calls meanwhile, so `setup` runs copies of `vdit` itself
//! (`vdit compile-kernels`), one per group of modules, in parallel: about 14 s on a fresh H200,
//! half a second where the cache is already warm.

use anyhow::{Context, Result};
use clap::Args;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// candle's modules in groups of about equal compile time (measured on an H200: binary 9.8 s,
/// unary 4.2, indexing 2.9, reduce 1.8, ternary 1.5, cast 1.3, affine 0.8, fill 0.6), one
/// helper process per group.
const GROUPS: [&[&str]; 4] = [
    &["binary"],
    &["unary", "affine"],
    &["indexing", "cast", "fill"],
    &["reduce", "ternary"],
];

/// `vdit setup`.
#[derive(Args, Debug)]
pub struct SetupArgs {
    /// The GPU: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
}

/// `vdit compile-kernels` (run by vdit itself).
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    ordinal: usize,
    /// candle modules to compile.
    modules: Vec<String>,
}

/// Compiles every module for the GPU asked for and waits.
pub fn run(args: SetupArgs) -> Result<()> {
    let device = crate::device::open_device(&args.device)?;
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        anyhow::bail!("vdit setup compiles GPU kernels: give --device cuda or cuda:N")
    };
    let started = Instant::now();
    for (mut helper, group) in start_helpers(gpu_id)?.into_iter().zip(GROUPS) {
        let status = helper.wait()?;
        if !status.success() {
            anyhow::bail!("compiling candle's kernel modules {group:?} for GPU {gpu_id} failed ({status}); run `vdit compile-kernels --ordinal {gpu_id} {}` to see why", group.join(" "))
        }
    }
    say!(
        "compiled candle's CUDA kernels for GPU {gpu_id} in {:.1} s; the driver keeps them in its cache",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Compiles the modules asked for.
pub fn compile(args: CompileArgs) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        vdit_core::cuda::compile_candle_modules(args.ordinal, &args.modules)?;
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    anyhow::bail!(
        "this vdit was built without CUDA, so it cannot compile kernel modules {:?} for GPU {}",
        args.modules,
        args.ordinal
    )
}

/// Starts the helper processes for GPU `ordinal`, one per group, output discarded.
fn start_helpers(ordinal: usize) -> Result<Vec<Child>> {
    let exe = std::env::current_exe().context("cannot find the vdit executable")?;
    GROUPS
        .iter()
        .map(|group| {
            Command::new(&exe)
                .arg("compile-kernels")
                .arg(format!("--ordinal={ordinal}"))
                .args(group.iter())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a kernel-compiling helper")
        })
        .collect()
}

//! Builds the VAE's CUDA kernels of `kernels/` (with the `cuda` feature) through the engine's one
//! kernel build, and checks the column kernels' parameter struct against
//! `src/kernel_params.rs`.

#[allow(dead_code)] // the build reads only the layout
#[path = "src/kernel_params.rs"]
mod kernel_params;

use kernel_build::{KernelBuild, Target};

fn main() {
    KernelBuild::new("kernels")
        .kernel("norm", Target::Portable)
        .kernel("frames", Target::Portable)
        .kernel("columns", Target::Portable)
        .params::<kernel_params::ColumnParams>()
        .build();
}

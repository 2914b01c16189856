//! Builds the VAE's CUDA kernels of `kernels/` (with the `cuda` feature) through the engine's one
//! kernel build.

use kernel_build::{KernelBuild, Target};

fn main() {
    KernelBuild::new("kernels")
        .kernel("norm", Target::Portable)
        .kernel("frames", Target::Portable)
        .build();
}

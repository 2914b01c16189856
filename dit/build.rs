//! Builds the fused kernels of `kernels/` (with the `cuda` feature) through the engine's one
//! kernel build.

use kernel_build::{KernelBuild, Target};

fn main() {
    KernelBuild::new("kernels")
        .kernel("fused", Target::Portable)
        .build();
}

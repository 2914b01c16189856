//! Builds the attention kernels of `kernels/` (with the `cuda` feature) through the engine's one
//! kernel build, and checks the kernels' parameter structs against `src/kernel_params.rs`.

#[allow(dead_code)] // the build reads only the layouts
#[path = "src/kernel_params.rs"]
mod kernel_params;

use kernel_build::{KernelBuild, Target};

fn main() {
    KernelBuild::new("kernels")
        .fast_math(true)
        .kernel("attention_fwd", Target::Portable)
        .kernel("attention_fwd_sm90", Target::Hopper)
        .kernel("attention_bwd", Target::Portable)
        .kernel("attention_bwd_sm90", Target::Hopper)
        .kernel("topk", Target::Portable)
        .kernel("pool", Target::Portable)
        .kernel("vmoba", Target::Portable)
        .kernel("vmoba_sm90", Target::Hopper)
        .kernel("vmoba_scores_sm90", Target::Hopper)
        .kernel("lists", Target::Portable)
        .params::<kernel_params::AttnParams>()
        .params::<kernel_params::BwdParams>()
        .params::<kernel_params::ListShape>()
        .build();
}

//! Benchmarks: attention kernels against density, and one DiT forward pass, on any device.
//! Peers (PyTorch SDPA, FlexAttention, diffusers) are timed by the scripts in `pipelines/vdit/bench/`
//! on the same machine, from the masks and settings these write.

pub mod attention;
pub mod dit;
pub mod e2e;
pub mod text;
pub mod vae;
pub mod write;

use anyhow::Result;
use candle_core::Device;
use std::time::Instant;

/// Seconds each case runs before it is timed. An H100 under these kernels reaches its power cap
/// within a second and lowers its clocks (1980 to about 1600 MHz), so every case, ours and the
/// peers' alike, is timed at the clocks it would keep in a long run.
pub const WARM_UP_SECONDS: f64 = 1.0;
/// Seconds of timed calls at least: a short case's median then spans the power controller's
/// swings instead of landing inside one.
pub const TIMED_SECONDS: f64 = 1.0;

/// Median wall time in milliseconds of at least `runs` calls and [`TIMED_SECONDS`] of calls,
/// after at least `warmup` calls and [`WARM_UP_SECONDS`] of calls, synchronising the device
/// around each timed call.
pub fn median_ms(
    device: &Device,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let start = Instant::now();
    let mut calls = 0;
    while calls < warmup || start.elapsed().as_secs_f64() < WARM_UP_SECONDS {
        f()?;
        device.synchronize()?;
        calls += 1;
    }
    let mut times = Vec::with_capacity(runs);
    let start = Instant::now();
    while times.len() < runs.max(1) || start.elapsed().as_secs_f64() < TIMED_SECONDS {
        let call = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(call.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&times).expect("at least one timed call"))
}

/// The median of `values` (the upper one of an even count); `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

//! Benchmarks: attention kernels against density, and one DiT forward pass, on any device.
//! Peers (PyTorch SDPA, FlexAttention, diffusers) are timed by the scripts in `pipelines/bench/`
//! on the same machine, from the masks and settings these write.

pub mod attention;
pub mod dit;
pub mod gpu_memory;

use anyhow::Result;
use candle_core::Device;
use std::time::Instant;

/// Median wall time in milliseconds of `runs` calls after `warmup` calls, synchronising the
/// device around each call.
pub fn median_ms(
    device: &Device,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

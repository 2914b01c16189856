//! CPU time of block-sparse attention against density (VSA plans on a 16x16x16 grid).
//!
//!     cargo run --release -p sparse --example cpu_density
//!
//! Prints one row per density: the median time of the exact block-sparse engine on the VSA
//! fine-stage plan, its ratio to the engine's dense time, and candle's dense matmul
//! attention for scale.

use candle_core::{Device, Result, Tensor};
use sparse::vsa::{vsa_attention, VsaOptions};
use sparse::{block_sparse_attention, BlockLayout, SparsePlan, TokenGrid};
use std::sync::Arc;
use std::time::Instant;

fn median_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[runs / 2])
}

fn main() -> Result<()> {
    let grid = TokenGrid::new(16, 16, 16);
    let (b, h, d) = (1, 4, 64);
    let r = || Tensor::randn(0f32, 1.0, (b, h, grid.len(), d), &Device::Cpu);
    let (q, k, v) = (r()?, r()?, r()?);
    let runs = 5;
    let candle_dense = median_ms(runs, || sparse::dense::attention(&q, &k, &v).map(|_| ()))?;
    let layout = Arc::new(BlockLayout::tiled(grid, [4, 4, 4]));
    let full = Arc::new(SparsePlan::dense(b, h, layout));
    let engine_dense = median_ms(runs, || {
        block_sparse_attention(&q, &k, &v, &full).map(|_| ())
    })?;
    println!(
        "tokens {} heads {h} head_dim {d}, {} threads",
        grid.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("candle dense (matmul + softmax): {candle_dense:.1} ms");
    println!("| density | block-sparse ms | vs engine dense | ideal (density x dense) |");
    println!("| --- | --- | --- | --- |");
    for sparsity in [0.0, 0.5, 0.75, 0.875] {
        let opts = VsaOptions {
            sparsity,
            ..Default::default()
        };
        let plan = vsa_attention(&q, &k, &v, None, grid, &opts)?.plan;
        let ms = if sparsity == 0.0 {
            engine_dense
        } else {
            median_ms(runs, || {
                block_sparse_attention(&q, &k, &v, &plan).map(|_| ())
            })?
        };
        println!(
            "| {:.3} | {ms:.1} | {:.3} | {:.3} |",
            plan.density()?,
            ms / engine_dense,
            plan.density()?
        );
    }
    Ok(())
}

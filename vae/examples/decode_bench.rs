//! Streaming decode throughput: random latents through a Wan 2.1 VAE, timed per latent frame.
//!
//! ```text
//! cargo run --release -p vae --example decode_bench [--features cuda] -- \
//!     [device=cpu|cuda] [dtype=f32|bf16] [frames=21] [height=60] [width=104] [tile=N] [weights=PATH]
//! ```
//! `height` and `width` are latent sizes (60x104 is 480x832 video). Without `weights` the VAE
//! has random weights of the full-size Wan 2.1 architecture.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use vae::{DecodeOptions, Tiling, VaeConfig, WanVae};

fn main() -> Result<()> {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .map(|a| match a.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("arguments are key=value, got `{a}`"),
        })
        .collect::<Result<_>>()?;
    let get = |key: &str, default: &str| args.get(key).cloned().unwrap_or(default.to_string());
    let number = |key: &str, default: &str| -> Result<usize> {
        get(key, default)
            .parse()
            .with_context(|| format!("{key} must be a number"))
    };
    let device = match get("device", "cpu").as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => bail!("device must be cpu or cuda, got {other}"),
    };
    let dtype = match get("dtype", "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("dtype must be f32 or bf16, got {other}"),
    };
    let (frames, height, width) = (
        number("frames", "21")?,
        number("height", "60")?,
        number("width", "104")?,
    );
    let opts = DecodeOptions {
        tiling: match args.get("tile") {
            Some(t) => Some(Tiling {
                size: t.parse().context("tile must be a number")?,
                ..Tiling::default()
            }),
            None => None,
        },
    };
    let vae = match args.get("weights") {
        Some(path) => WanVae::load(Path::new(path), dtype, &device)?,
        None => WanVae::random(&VaeConfig::wan2_1(), dtype, &device)?,
    };
    let z = Tensor::randn(0f32, 1.0, (1, 16, frames, height, width), &device)?;
    let start = Instant::now();
    let mut last = start;
    let mut decoded = 0;
    vae.decode_streaming(&z, &opts, &mut |chunk| {
        device.synchronize()?;
        decoded += chunk.dim(2)?;
        let now = Instant::now();
        println!(
            "chunk of {} frames: {:.1} ms",
            chunk.dim(2)?,
            (now - last).as_secs_f64() * 1e3
        );
        last = now;
        Ok(())
    })?;
    let total = start.elapsed().as_secs_f64();
    println!(
        "decoded {decoded} frames of {}x{} in {total:.2} s ({:.1} frames/s) on {device:?} in {dtype:?}",
        8 * height,
        8 * width,
        decoded as f64 / total
    );
    Ok(())
}

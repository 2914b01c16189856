//! `vdit bench`: latency benchmarks of the attention kernels and of the transformer.

use crate::bench::{self, attention::Shape};
use crate::device::open_device;
use anyhow::Result;
use candle_core::DType;
use clap::{Args, Subcommand};
use sparse::options::parse_sizes;
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{AttentionMethod, Dense};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `vdit bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Dense and block-sparse attention at densities 1, 1/2, 1/4, 1/8 and VSA, at the Wan 1.3B
    /// 480p shape (32,760 tokens, 12 heads of 128).
    Attention {
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Timed runs per case, at least (each case is also timed for at least a second after
        /// a second of warm-up; median reported).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Folder for attention.json and the masks used (masks.safetensors).
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
    /// One forward pass of the Wan 2.1 1.3B transformer (random weights, bf16) per attention
    /// method: dense, VSA at sparsity 0.875, and none.
    Dit {
        /// Device: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// Video size WIDTHxHEIGHT in pixels.
        #[arg(long, default_value = "832x480")]
        size: String,
        /// Frames (4k + 1).
        #[arg(long, default_value_t = 81)]
        frames: usize,
        /// Timed runs per method, at least (after a second of warm-up; median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where to write dit.json.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
}

/// Runs the chosen benchmark.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        What::Attention { device, runs, out } => bench::attention::run(
            &open_device(&device)?,
            Shape::WAN_1_3B_480P,
            DType::BF16,
            runs,
            &out,
        ),
        What::Dit {
            device,
            size,
            frames,
            runs,
            out,
        } => {
            let sizes = parse_sizes(&size).map_err(anyhow::Error::msg)?;
            let [width, height] = sizes[..] else {
                anyhow::bail!("--size `{size}` must be WIDTHxHEIGHT")
            };
            let vsa = Vsa::new(VsaOptions {
                sparsity: 0.875,
                ..Default::default()
            })?;
            let methods: Vec<(String, Arc<dyn AttentionMethod>)> = vec![
                ("dense".to_string(), Arc::new(Dense)),
                ("vsa 0.875".to_string(), Arc::new(vsa)),
            ];
            let device = open_device(&device)?;
            let cfg = dit::WanConfig::wan2_1_1_3b();
            let size = (frames, height, width);
            std::fs::create_dir_all(&out)?;
            let parts = bench::dit::breakdown(&device, &cfg, DType::BF16, size, runs.max(5))?;
            std::fs::write(
                out.join("dit_breakdown.json"),
                serde_json::to_string_pretty(&parts)?,
            )?;
            let rows = bench::dit::run(&device, &cfg, DType::BF16, size, &methods, runs)?;
            std::fs::write(out.join("dit.json"), serde_json::to_string_pretty(&rows)?)?;
            Ok(())
        }
    }
}

//! `vdit bench`: latency benchmarks of the attention kernels, the transformer, the VAE, the text
//! encoder, video writing and whole generations.

use super::options::{RuntimeArgs, SettingArgs};
use crate::bench::{self, attention::Shape};
use crate::device::open_device;
use anyhow::Result;
use candle_core::DType;
use clap::{Args, Subcommand};
use sparse::options::parse_sizes;
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{AttentionMethod, Dense, MethodSpec, Registry};
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
        /// Cases to time (repeatable; default all): dense (dense and block-sparse forward),
        /// vsa, vmoba (their forwards), backward (every trainable path's forward+backward).
        #[arg(long = "case", value_enum)]
        cases: Vec<bench::attention::Case>,
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
    /// Decoding random latents with a full-size Wan 2.1 VAE (random weights), whole and per
    /// latent frame, with the peak GPU memory.
    Vae {
        /// Video size WIDTHxHEIGHT in pixels.
        #[arg(long, default_value = "832x480")]
        size: String,
        /// Frames (4k + 1).
        #[arg(long, default_value_t = 81)]
        frames: usize,
        /// Timed decodes (after one warm-up; median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Then one more decode with each operation timed apart (device synchronised around
        /// each), printed as a table of where the time goes.
        #[arg(long)]
        parts: bool,
        /// Where to write vae.json.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Device and dtype.
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// The UMT5-XXL text encoder (random weights, written to --weights once): loading, encoding
    /// a prompt and the negative prompt at 512 tokens, peak memory and memory after it is freed.
    Text {
        /// Folder of the random weights (made on first use, about 11 GiB in bf16).
        #[arg(long, value_name = "DIR")]
        weights: PathBuf,
        /// Folder with the tokenizer.json to use (any UMT5-family tokenizer).
        #[arg(long, value_name = "DIR")]
        tokenizer: PathBuf,
        /// Timed encodes after the first (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Where to write text.json.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Device and dtype.
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Writing a synthetic clip to every format this build writes (y4m, PNG frames, GIF, and
    /// MP4 with FFmpeg), timed from opening the writer to the output in place.
    Write {
        /// Video size WIDTHxHEIGHT in pixels.
        #[arg(long, default_value = "832x480")]
        size: String,
        /// Frames.
        #[arg(long, default_value_t = 81)]
        frames: u32,
        /// Timed writes per format (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where to write write.json (the videos go to a folder there that is removed after).
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
    },
    /// Whole generations on a pipeline folder from pipelines/vdit/bench/make_random_wan.py
    /// (its inputs.safetensors holds the initial latents and the prompt embeddings): the model
    /// loaded once, then one generation per --attention spec, timed per stage, with the peak GPU
    /// memory and the relative L2 to diffusers' final latents when e2e_diffusers.py left them
    /// in the output folder.
    E2e {
        /// The pipeline folder.
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Attention of one generation, as a spec such as dense or vsa:sparsity=0.875
        /// (repeatable; default dense).
        #[arg(long = "attention", value_name = "SPEC")]
        specs: Vec<MethodSpec>,
        /// Settings (default: the folder's generation_config.json, else Wan's).
        #[command(flatten)]
        settings: SettingArgs,
        /// Where to write the videos, their records and e2e.json.
        #[arg(long, default_value = "bench-out")]
        out: PathBuf,
        /// Device and dtype.
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

/// `WIDTHxHEIGHT` as (width, height).
fn width_height(size: &str) -> Result<(usize, usize)> {
    let sizes = parse_sizes(size).map_err(anyhow::Error::msg)?;
    let [width, height] = sizes[..] else {
        anyhow::bail!("--size `{size}` must be WIDTHxHEIGHT")
    };
    Ok((width, height))
}

/// Runs the chosen benchmark.
pub fn run(args: BenchArgs, registry: &Registry) -> Result<()> {
    match args.what {
        What::Vae {
            size,
            frames,
            runs,
            parts,
            out,
            runtime,
        } => {
            let (width, height) = width_height(&size)?;
            let (device, dtype) = runtime.open()?;
            std::fs::create_dir_all(&out)?;
            let row = bench::vae::run(&device, dtype, (frames, height, width), runs, parts)?;
            std::fs::write(out.join("vae.json"), serde_json::to_string_pretty(&row)?)?;
            Ok(())
        }
        What::Text {
            weights,
            tokenizer,
            runs,
            out,
            runtime,
        } => {
            let (device, dtype) = runtime.open()?;
            std::fs::create_dir_all(&out)?;
            let row = bench::text::run(&device, dtype, &weights, &tokenizer, runs)?;
            std::fs::write(out.join("text.json"), serde_json::to_string_pretty(&row)?)?;
            Ok(())
        }
        What::Write {
            size,
            frames,
            runs,
            out,
        } => {
            let (width, height) = width_height(&size)?;
            let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
                anyhow::bail!("--size `{size}` is too large")
            };
            let rows = bench::write::run(width, height, frames, runs, &out)?;
            std::fs::write(out.join("write.json"), serde_json::to_string_pretty(&rows)?)?;
            Ok(())
        }
        What::E2e {
            model,
            specs,
            settings,
            out,
            runtime,
        } => {
            let specs = if specs.is_empty() {
                vec![MethodSpec::named("dense")]
            } else {
                specs
            };
            let (device, dtype) = runtime.open()?;
            let rows = bench::e2e::run(
                &model,
                &settings.overrides(None)?,
                &specs,
                registry,
                (&device, dtype),
                &out,
            )?;
            std::fs::write(out.join("e2e.json"), serde_json::to_string_pretty(&rows)?)?;
            Ok(())
        }
        What::Attention {
            device,
            runs,
            out,
            cases,
        } => bench::attention::run(
            &open_device(&device)?,
            Shape::WAN_1_3B_480P,
            DType::BF16,
            runs,
            &out,
            &cases,
        ),
        What::Dit {
            device,
            size,
            frames,
            runs,
            out,
        } => {
            let (width, height) = width_height(&size)?;
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

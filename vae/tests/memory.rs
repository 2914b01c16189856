//! Streaming decode memory does not grow with the number of frames.
//!
//! The test runs itself twice as a child process (same binary, same test, an environment
//! variable selecting the child's job), each decoding N latent frames of a reduced-width VAE
//! with random weights through `decode_streaming` and dropping every chunk, and compares the
//! children's peak resident memory (VmHWM).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::process::Command;
use vae::{DecodeOptions, VaeConfig, WanVae};

const CHILD_FRAMES: &str = "VAE_MEMORY_TEST_LATENT_FRAMES";
const TEST_NAME: &str = "decode_memory_does_not_grow_with_frames";

/// Latent height and width: 192x256 video frames, large enough that the decoder's activations
/// and time caches (~90 MiB), not the process's fixed ~12 MiB, set the peak; time caches that
/// grew with the frames decoded would break the bound many times over.
const LATENT_HW: (usize, usize) = (24, 32);

/// Wan 2.1's architecture at a 24th of its width, with random weights.
fn reduced_vae() -> Result<WanVae> {
    let cfg = VaeConfig {
        base_dim: 4,
        ..VaeConfig::wan2_1()
    };
    Ok(WanVae::random(&cfg, DType::F32, &Device::Cpu)?)
}

/// Peak resident set size of this process, KiB.
fn peak_rss_kib() -> Result<u64> {
    let bytes = vdit_core::memory::peak_rss_bytes().context("no VmHWM in /proc/self/status")?;
    Ok(bytes / 1024)
}

/// The child's job: decode `frames` latent frames, print the peak memory.
fn decode_and_report(frames: usize) -> Result<()> {
    let vae = reduced_vae()?;
    let (h, w) = LATENT_HW;
    let z = Tensor::randn(0f32, 1.0, (1, 16, frames, h, w), &Device::Cpu)?;
    let mut decoded = 0;
    vae.decode_streaming(&z, &DecodeOptions::default(), &mut |chunk| {
        decoded += chunk.dim(2)?;
        Ok(())
    })?;
    assert_eq!(decoded, 1 + 4 * (frames - 1));
    println!("peak_rss_kib={}", peak_rss_kib()?);
    Ok(())
}

/// Runs this test in a child process decoding `frames` latent frames; returns its peak RSS.
fn child_peak(frames: usize) -> Result<u64> {
    let out = Command::new(std::env::current_exe()?)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FRAMES, frames.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "child decoding {frames} frames failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value = stdout
        .lines()
        .find_map(|l| l.split("peak_rss_kib=").nth(1))
        .with_context(|| format!("child printed no peak: {stdout}"))?;
    Ok(value.trim().parse()?)
}

/// Decoding 21 latent frames (81 video frames) peaks at most 1.3x the memory of decoding 5.
#[test]
fn decode_memory_does_not_grow_with_frames() -> Result<()> {
    if let Ok(frames) = std::env::var(CHILD_FRAMES) {
        return decode_and_report(frames.parse()?);
    }
    let short = child_peak(5)?;
    let long = child_peak(21)?;
    let ratio = long as f64 / short as f64;
    println!(
        "peak RSS: 5 latent frames {:.1} MiB, 21 latent frames {:.1} MiB, ratio {ratio:.3}",
        short as f64 / 1024.0,
        long as f64 / 1024.0
    );
    assert!(ratio <= 1.3, "peak RSS ratio {ratio:.3} > 1.3");
    Ok(())
}

//! `vdit bench vae`: decoding random latents with a full-size Wan 2.1 VAE (random weights), the
//! decode timed whole and per latent frame, with its peak memory; then encoding a random video
//! of the same size. Compare with
//! `pipelines/vdit/bench/vae_diffusers.py` run on the same machine.

use super::median;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;
use vae::profile::Part;
use vae::{DecodeOptions, VaeConfig, WanVae};
use vdit_core::memory::{gib, peak_bytes, reset_peak};

/// Decodes `[1, 16, (frames - 1) / 4 + 1, height / 8, width / 8]` random latents `runs` times
/// after one warm-up decode; returns the row of the median decode. With `parts`, one more
/// decode is profiled operation by operation ([`vae::profile`]) and its table printed and added
/// to the row.
pub fn run(
    device: &Device,
    dtype: DType,
    (frames, height, width): (usize, usize, usize),
    runs: usize,
    parts: bool,
) -> Result<serde_json::Value> {
    let vae = WanVae::random(&VaeConfig::wan2_1(), dtype, device)?;
    let latent_frames = (frames - 1) / 4 + 1;
    let z = Tensor::randn(
        0f32,
        1.0,
        (1, 16, latent_frames, height / 8, width / 8),
        device,
    )?
    .to_dtype(dtype)?;
    let decode = |chunks: &mut Vec<f64>| -> Result<f64> {
        device.synchronize()?;
        let started = Instant::now();
        let mut last = Instant::now();
        vae.decode_streaming(&z, &DecodeOptions::default(), &mut |frames| {
            drop(frames);
            device.synchronize()?;
            chunks.push(last.elapsed().as_secs_f64());
            last = Instant::now();
            Ok(())
        })?;
        Ok(started.elapsed().as_secs_f64())
    };
    decode(&mut Vec::new())?;
    reset_peak(device)?;
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        let mut chunks = Vec::new();
        let seconds = decode(&mut chunks)?;
        results.push((seconds, chunks));
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (seconds, chunks) = &results[results.len() / 2];
    let peak = peak_bytes(device)?.map(gib);
    let mut row = json!({
        "impl": format!("vdit WanVae decode ({dtype:?})").to_lowercase(),
        "s": seconds,
        "first_chunk_s": chunks.first(),
        "chunk_s_median": median(chunks),
        "peak_gib": peak,
        "frames": frames, "height": height, "width": width,
    });
    let (encode_s, encode_peak) = time_encode(&vae, device, dtype, (frames, height, width), runs)?;
    row["encode_s"] = json!(encode_s);
    row["encode_peak_gib"] = json!(encode_peak);
    say!("{row}");
    if parts {
        let (total, parts) = vae::profile::record(|| decode(&mut Vec::new()));
        row["parts"] = parts_table(total?, &parts);
    }
    Ok(row)
}

/// Median seconds of encoding a random `[1, 3, frames, height, width]` video `runs` times after
/// one warm-up, and the peak memory of those encodes in GiB.
fn time_encode(
    vae: &WanVae,
    device: &Device,
    dtype: DType,
    (frames, height, width): (usize, usize, usize),
    runs: usize,
) -> Result<(f64, Option<f64>)> {
    let video = Tensor::rand(-1f32, 1.0, (1, 3, frames, height, width), device)?.to_dtype(dtype)?;
    vae.encode(&video)?;
    device.synchronize()?;
    reset_peak(device)?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        vae.encode(&video)?;
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
    }
    let peak = peak_bytes(device)?.map(gib);
    Ok((median(&times).expect("at least one run"), peak))
}

/// Prints the profiled parts, costliest first, and returns them as JSON rows.
fn parts_table(total: f64, parts: &BTreeMap<String, Part>) -> serde_json::Value {
    let mut rows: Vec<_> = parts.iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    let counted: f64 = rows.iter().map(|(_, p)| p.seconds).sum();
    say!("profiled decode {total:.3} s, of which the parts below {counted:.3} s");
    say!("{:>9} {:>6} {:>9}  part", "ms", "calls", "TFLOP/s");
    let mut json_rows = Vec::new();
    for (label, part) in rows {
        let rate = (part.flops > 0.0).then(|| part.flops / part.seconds / 1e12);
        let shown = rate.map_or(String::new(), |r| format!("{r:.0}"));
        say!(
            "{:>9.1} {:>6} {shown:>9}  {label}",
            part.seconds * 1e3,
            part.calls
        );
        json_rows
            .push(json!({"part": label, "calls": part.calls, "s": part.seconds, "tflops": rate}));
    }
    json!({"profiled_s": total, "rows": json_rows})
}

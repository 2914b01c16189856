//! `vdit bench text`: the UMT5-XXL text encoder of Wan 2.1 (5.7B parameters, random weights
//! written once to a folder) loaded from disk, a prompt and the empty negative prompt encoded at
//! Wan's 512 tokens, and the encoder dropped, each stage timed, with the memory it held and what
//! is left after it is freed.

use super::median;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;
use std::path::Path;
use std::time::Instant;
use umt5::{TextEncoder, Umt5Config, Umt5Encoder, WAN_TEXT_LEN};
use vdit_core::memory::{gib, peak_bytes, reset_peak, used_bytes};

/// Writes random UMT5-XXL weights (`model.safetensors`, in `dtype`) and a `config.json` into
/// `folder`, unless a `model.safetensors` is there already.
fn make_random_weights(folder: &Path, dtype: DType, device: &Device) -> Result<()> {
    let weights = folder.join("model.safetensors");
    if weights.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(folder)?;
    let cfg = Umt5Config::umt5_xxl();
    let started = Instant::now();
    let vars = VarMap::new();
    Umt5Encoder::new(&cfg, VarBuilder::from_varmap(&vars, dtype, device))?;
    vars.save(&weights)
        .with_context(|| format!("could not write {}", weights.display()))?;
    let config = json!({
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "feed_forward_proj": cfg.feed_forward_proj, "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "model_type": "umt5",
    });
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    eprintln!(
        "wrote random UMT5-XXL weights to {} in {:.1} s",
        folder.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Loads the encoder from `weights` (made there first if missing) with the tokenizer in
/// `tokenizer`, encodes two texts once and then `runs` more times, and drops it; returns the
/// row and prints it.
pub fn run(
    device: &Device,
    dtype: DType,
    weights: &Path,
    tokenizer: &Path,
    runs: usize,
) -> Result<serde_json::Value> {
    make_random_weights(weights, dtype, device)?;
    let before = used_bytes(device)?;
    reset_peak(device)?;
    let started = Instant::now();
    let encoder = TextEncoder::load(weights, tokenizer, dtype, device)?;
    device.synchronize()?;
    let load_s = started.elapsed().as_secs_f64();
    let texts = ["a red kite flies over a windy beach at sunset", ""];
    let started = Instant::now();
    encoder.encode(&texts, WAN_TEXT_LEN)?;
    device.synchronize()?;
    let first_s = started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        encoder.encode(&texts, WAN_TEXT_LEN)?;
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
    }
    let peak = peak_bytes(device)?;
    drop(encoder);
    let after = used_bytes(device)?;
    let row = json!({
        "device": format!("{device:?}"),
        "dtype": format!("{dtype:?}"),
        "load_s": load_s,
        "first_encode_s": first_s,
        "encode_s": median(&times),
        "peak_gib": peak.map(gib),
        "held_before_gib": before.map(gib),
        "held_after_drop_gib": after.map(gib),
    });
    say!(
        "UMT5-XXL ({dtype:?}): load {load_s:.2} s, first encode {first_s:.3} s, encode of 2 \
         texts x {WAN_TEXT_LEN} tokens {:.3} s, peak {}, held after drop {}",
        median(&times).unwrap_or(f64::NAN),
        peak.map_or("-".to_string(), |b| format!("{:.2} GiB", gib(b))),
        after.map_or("-".to_string(), |b| format!("{:.2} GiB", gib(b))),
    );
    Ok(row)
}

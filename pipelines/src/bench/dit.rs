//! `vdit bench dit`: one forward pass of a Wan transformer with random weights, per attention
//! method, with a run whose self-attention is a no-op to show what attention costs. Compare
//! with `pipelines/bench/dit_diffusers.py` run on the same machine.

use super::gpu_memory::{peak_bytes, reset_peak};
use super::median_ms;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dit::{Step, WanConfig, WanTransformer};
use serde_json::json;
use sparse::{AttentionCall, AttentionRouter, AttentionSchedule, Method, SelfAttention};

/// Self-attention that returns the values unchanged: the floor no attention method can beat.
struct NoAttention;

impl SelfAttention for NoAttention {
    fn attend(&self, call: &AttentionCall<'_>) -> candle_core::Result<Tensor> {
        Ok(call.v.clone())
    }
}

/// A model of `cfg` with random weights on `device` (normal, std 0.02; norms near 1).
pub fn random_model(cfg: &WanConfig, dtype: DType, device: &Device) -> Result<WanTransformer> {
    let varmap = VarMap::new();
    let model = WanTransformer::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        let noise = Tensor::randn(0f32, 0.02, var.shape(), device)?;
        let value = if name.contains("norm") {
            (noise + 1.0)?
        } else {
            noise
        };
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    // The model holds its own references to the (now randomised) variables.
    Ok(model)
}

/// Times one forward pass at `frames` x `height` x `width` pixels for each method (plus the
/// no-op attention), printing one JSON line per run.
pub fn run(
    device: &Device,
    cfg: &WanConfig,
    dtype: DType,
    (frames, height, width): (usize, usize, usize),
    methods: &[(String, Method)],
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    let model = random_model(cfg, dtype, device)?;
    let latent = (cfg.in_channels, (frames - 1) / 4 + 1, height / 8, width / 8);
    let latents = Tensor::randn(
        0f32,
        1.0,
        (1, latent.0, latent.1, latent.2, latent.3),
        device,
    )?
    .to_dtype(dtype)?;
    let text = Tensor::randn(0f32, 1.0, (1, 512, cfg.text_dim), device)?.to_dtype(dtype)?;
    let t = Tensor::new(&[500f32], device)?;
    let mut rows = Vec::new();
    let mut time = |name: &str, attention: &dyn SelfAttention| -> Result<()> {
        model.forward(&latents, &t, &text, attention, Step::SINGLE)?; // warm-up
        reset_peak(device)?;
        let ms = median_ms(device, 0, runs, || {
            Ok(model
                .forward(&latents, &t, &text, attention, Step::SINGLE)
                .map(|_| ())?)
        })?;
        let peak = peak_bytes(device)?.map(|b| b as f64 / (1u64 << 30) as f64);
        let row = json!({"attention": name, "ms": ms, "peak_gib": peak, "frames": frames, "height": height, "width": width, "layers": cfg.num_layers});
        println!("{row}");
        rows.push(row);
        Ok(())
    };
    for (name, method) in methods {
        let router = AttentionRouter::new(AttentionSchedule::new(method.clone()))
            .map_err(anyhow::Error::msg)?;
        time(name, &router)?;
    }
    time("none (self-attention skipped)", &NoAttention)?;
    Ok(rows)
}

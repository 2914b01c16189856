//! `vdit bench dit`: one forward pass of a Wan transformer with random weights, per attention
//! method, with a run whose self-attention is a no-op to show what attention costs. Compare
//! with `pipelines/vdit/bench/dit_diffusers.py` run on the same machine.

use super::median_ms;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use dit::{Step, WanConfig, WanTransformer};
use serde_json::json;
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{
    AttentionCall, AttentionMethod, AttentionRouter, AttentionSchedule, Dense, SelfAttention,
};
use std::sync::Arc;
use vdit_core::memory::{gib, peak_bytes, reset_peak};

/// Self-attention that returns the values unchanged: the floor no attention method can beat.
struct NoAttention;

impl SelfAttention for NoAttention {
    fn attend(&self, call: &AttentionCall<'_>) -> candle_core::Result<Tensor> {
        Ok(call.v.clone())
    }
}

/// A model of `cfg` with random weights on `device` (normal, std 0.02; norms near 1). The
/// weights are plain tensors, not training variables, so nothing records gradients.
pub fn random_model(cfg: &WanConfig, dtype: DType, device: &Device) -> Result<WanTransformer> {
    let varmap = VarMap::new();
    WanTransformer::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?; // learns the shapes
    let mut weights = std::collections::HashMap::new();
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        let noise = Tensor::randn(0f32, 0.02, var.shape(), device)?;
        let value = if name.contains("norm") {
            (noise + 1.0)?
        } else {
            noise
        };
        weights.insert(name.clone(), value.to_dtype(var.dtype())?);
    }
    Ok(WanTransformer::new(
        cfg,
        VarBuilder::from_tensors(weights, dtype, device),
    )?)
}

/// Times one forward pass at `frames` x `height` x `width` pixels for each method (plus the
/// no-op attention), printing one JSON line per run.
pub fn run(
    device: &Device,
    cfg: &WanConfig,
    dtype: DType,
    (frames, height, width): (usize, usize, usize),
    methods: &[(String, Arc<dyn AttentionMethod>)],
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
        reset_peak(device)?;
        let ms = median_ms(device, 1, runs, || {
            Ok(model
                .forward(&latents, &t, &text, attention, Step::SINGLE)
                .map(|_| ())?)
        })?;
        let peak = peak_bytes(device)?.map(gib);
        let row = json!({"attention": name, "ms": ms, "peak_gib": peak, "frames": frames, "height": height, "width": width, "layers": cfg.num_layers});
        say!("{row}");
        rows.push(row);
        Ok(())
    };
    for (name, method) in methods {
        let router = AttentionRouter::new(AttentionSchedule::new(Arc::clone(method)));
        time(name, &router)?;
    }
    time("none (self-attention skipped)", &NoAttention)?;
    Ok(rows)
}

/// One row of the breakdown: an operation of a block at the benchmark shape, its median time
/// and how often a forward pass runs it.
fn breakdown_row(op: &str, ms: f64, per_forward: usize) -> serde_json::Value {
    json!({"op": op, "ms": ms, "per_forward": per_forward, "ms_per_forward": ms * per_forward as f64})
}

/// Times each operation of a transformer block standalone at the shapes of one forward pass
/// (`[1, S, dim]` tokens, 512 text tokens), so that a forward's time can be attributed.
pub fn breakdown(
    device: &Device,
    cfg: &WanConfig,
    dtype: DType,
    (frames, height, width): (usize, usize, usize),
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    use dit::fused::Epilogue;
    use dit::linear::Projection;
    use sparse::TokenGrid;
    let grid = TokenGrid::new((frames - 1) / 4 + 1, height / 16, width / 16);
    let (s, dim, ffn, heads, hd, layers) = (
        grid.len(),
        cfg.dim(),
        cfg.ffn_dim,
        cfg.num_heads,
        cfg.head_dim,
        cfg.num_layers,
    );
    let rand = |shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?)
    };
    let mut weights = std::collections::HashMap::new();
    for (name, rows, cols) in [("sq", dim, dim), ("up", ffn, dim), ("down", dim, ffn)] {
        weights.insert(
            format!("{name}.weight"),
            (Tensor::randn(0f32, 0.02, (rows, cols), device)?).to_dtype(dtype)?,
        );
        weights.insert(format!("{name}.bias"), Tensor::zeros(rows, dtype, device)?);
    }
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let square = Projection::new(dim, dim, vb.pp("sq"))?;
    let weight_sq = vb.pp("sq").get((dim, dim), "weight")?;
    let (up, down) = (
        Projection::new(dim, ffn, vb.pp("up"))?,
        Projection::new(ffn, dim, vb.pp("down"))?,
    );
    let x = rand(&[1, s, dim])?;
    let hidden = rand(&[1, s, ffn])?;
    let text = rand(&[1, 512, dim])?;
    let table = Tensor::randn(0f32, 0.5, (1, 6, dim), device)?;
    let m = table.chunk(6, 1)?;
    let weight = (rand(&[dim])? + 1.0)?;
    let rope = dit::rope::Rope3d::new(hd, grid, device)?;
    let heads_view =
        |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((1, s, heads, hd))?.transpose(1, 2)?) };
    let (q, k, v) = (
        heads_view(&rand(&[1, s, dim])?)?,
        heads_view(&rand(&[1, s, dim])?)?,
        heads_view(&rand(&[1, s, dim])?)?,
    );
    let text_kv = rand(&[1, 512, dim])?
        .reshape((1, 512, heads, hd))?
        .transpose(1, 2)?;
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(device, 2, runs, f);
    let mut rows = Vec::new();
    let (l, l2) = (layers, 2 * layers);
    rows.push(breakdown_row(
        "linear dim->dim (q,k,v,o + cross q,o)",
        time(&mut || Ok(square.forward(&x).map(|_| ())?))?,
        6 * l,
    ));
    rows.push(breakdown_row(
        "linear dim->dim on 512 text tokens (cross k,v)",
        time(&mut || Ok(square.forward(&text).map(|_| ())?))?,
        l2,
    ));
    rows.push(breakdown_row(
        "linear dim->ffn",
        time(&mut || Ok(up.forward(&x).map(|_| ())?))?,
        l,
    ));
    rows.push(breakdown_row(
        "linear ffn->dim",
        time(&mut || Ok(down.forward(&hidden).map(|_| ())?))?,
        l,
    ));
    let gelu = Epilogue {
        gelu: true,
        ..Default::default()
    };
    rows.push(breakdown_row(
        "linear dim->ffn + gelu",
        time(&mut || Ok(up.forward_with(&x, gelu).map(|_| ())?))?,
        l,
    ));
    let gated = Epilogue {
        gate: Some(&m[2]),
        residual: Some(&x),
        ..Default::default()
    };
    rows.push(breakdown_row(
        "linear dim->dim + gated residual",
        time(&mut || Ok(square.forward_with(&x, gated).map(|_| ())?))?,
        l2,
    ));
    rows.push(breakdown_row(
        "matmul dim->dim alone",
        time(&mut || Ok(x.broadcast_matmul(&weight_sq.t()?).map(|_| ())?))?,
        0,
    ));
    rows.push(breakdown_row(
        "fused layernorm+modulate",
        time(&mut || Ok(dit::fused::ln_modulate(&x, &m[0], &m[1], 1e-6).map(|_| ())?))?,
        3 * l,
    ));
    rows.push(breakdown_row(
        "fused rmsnorm+rope (q, k)",
        time(&mut || Ok(dit::fused::rms_rope(&x, &weight, &rope, hd, 1e-6).map(|_| ())?))?,
        l2,
    ));
    rows.push(breakdown_row(
        "fused rmsnorm (cross q)",
        time(&mut || Ok(dit::fused::rms_norm(&x, &weight, 1e-6).map(|_| ())?))?,
        l,
    ));
    rows.push(breakdown_row(
        "candle add of two activations (bandwidth reference)",
        time(&mut || Ok((&x + &x).map(|_| ())?))?,
        0,
    ));
    rows.push(breakdown_row(
        "self-attention, dense",
        time(&mut || Ok(sparse::dense::attention(&q, &k, &v).map(|_| ())?))?,
        l,
    ));
    rows.push(breakdown_row(
        "cross-attention (512 keys)",
        time(&mut || Ok(sparse::dense::attention(&q, &text_kv, &text_kv).map(|_| ())?))?,
        l,
    ));
    rows.push(breakdown_row(
        "RoPE tables (once per generation)",
        time(&mut || Ok(dit::rope::Rope3d::new(hd, grid, device).map(|_| ())?))?,
        1,
    ));
    // VSA's coarse stage and selection, without the fine attention.
    let cubes = sparse::BlockLayout::tiled_shared(grid, [4, 4, 4]);
    let coarse = || -> Result<()> {
        let (qc, kc) = (
            sparse::pool::block_means(&q, &cubes)?,
            sparse::pool::block_means(&k, &cubes)?,
        );
        let n = cubes.num_blocks();
        let scores = qc.matmul(&kc.t()?)?.reshape((heads * n, n))?;
        sparse::top_k(&scores, n.div_ceil(8))?;
        Ok(())
    };
    rows.push(breakdown_row(
        "VSA coarse: block means of q, k",
        time(&mut || {
            sparse::pool::block_means(&q, &cubes)?;
            sparse::pool::block_means(&k, &cubes)?;
            Ok(())
        })?,
        l,
    ));
    rows.push(breakdown_row(
        "VSA coarse: means + scores + top-k",
        time(&mut || coarse())?,
        l,
    ));
    // One whole block, to compare with the sum of its parts.
    let model = random_model(
        &WanConfig {
            num_layers: 1,
            ..cfg.clone()
        },
        dtype,
        device,
    )?;
    let block = &model.blocks()[0];
    let modulation = rand(&[1, 6, dim])?;
    for (name, attention) in [
        (
            "block (dense)",
            &AttentionRouter::new(AttentionSchedule::of(Dense)) as &dyn SelfAttention,
        ),
        (
            "block (vsa 0.875)",
            &AttentionRouter::new(AttentionSchedule::of(Vsa::new(VsaOptions {
                sparsity: 0.875,
                ..Default::default()
            })?)),
        ),
        ("block (no self-attention)", &NoAttention),
    ] {
        let inputs = dit::block::BlockInputs {
            modulation: &modulation,
            context: &text,
            rope: &rope,
            grid,
            step: dit::Step::SINGLE,
            attention,
        };
        rows.push(breakdown_row(
            name,
            time(&mut || Ok(block.forward(&x, 0, &inputs).map(|_| ())?))?,
            l,
        ));
    }
    let full = random_model(cfg, dtype, device)?;
    let latents = Tensor::randn(
        0f32,
        1.0,
        (1, cfg.in_channels, grid.t, height / 8, width / 8),
        device,
    )?
    .to_dtype(dtype)?;
    let text_in = rand(&[1, 512, cfg.text_dim])?;
    let t = Tensor::new(&[500f32], device)?;
    rows.push(breakdown_row(
        "whole forward, no self-attention",
        time(&mut || {
            Ok(full
                .forward(&latents, &t, &text_in, &NoAttention, Step::SINGLE)
                .map(|_| ())?)
        })?,
        1,
    ));
    for row in &rows {
        say!("{row}");
    }
    Ok(rows)
}

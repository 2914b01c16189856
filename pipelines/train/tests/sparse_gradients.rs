//! Training through the sparse methods: at keep-all, VSA (sparsity 0, its gate at zero) and
//! VMoBA (top 64 chunks, more than there are; no dense layers) give the dense method's loss and gradients for every
//! weight they share, on the CPU and, with the `cuda` feature, on the GPU at the shipped
//! model's real tiling (5 x 16 x 16 tokens: partial VSA cubes and partial VMoBA chunks).

use candle_core::{DType, Device, Tensor};
use dit::WanTransformer;
use pipelines::t2v::noise::NoiseGenerator;
use sparse::{AttentionRouter, Registry};
use std::collections::BTreeMap;
use train::params::Params;
use train::recipe::{self, Preset};
use vdit_core::Step;

/// Every weight random (the output projection too, so every gradient is non-zero), VSA's
/// gate at zero.
fn init(name: &str, dims: &[usize], rng: &mut NoiseGenerator) -> Vec<f32> {
    let n: usize = dims.iter().product();
    if name.contains("to_gate_compress") {
        return vec![0.0; n];
    }
    let std = if dims.len() == 1 {
        0.1
    } else {
        (1.0 / dims[1..].iter().product::<usize>() as f32).sqrt()
    };
    let offset = if name.contains("norm") && dims.len() == 1 {
        1.0
    } else {
        0.0
    };
    rng.normals(n)
        .into_iter()
        .map(|v| offset + v * std)
        .collect()
}

/// The loss and the gradient of every weight for one forward pass through `spec`.
fn loss_and_grads(
    preset: Preset,
    grid: (usize, usize, usize),
    spec: &str,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> anyhow::Result<(f32, BTreeMap<String, Tensor>)> {
    let config = preset.dit_config(recipe::TEXT_DIM);
    let mut shapes = Params::shapes_of(|vb| {
        WanTransformer::new(&config, vb)?;
        Ok(())
    })?;
    recipe::add_vsa_gates(&mut shapes, &config);
    let params = Params::initialised(&shapes, &init, seed, device)?;
    let model = WanTransformer::new(&config, params.var_builder(dtype, device))?;
    let (t, h, w) = grid;
    let mut rng = NoiseGenerator::new(seed + 1);
    let mut random = |dims: &[usize]| -> anyhow::Result<Tensor> {
        let n = dims.iter().product();
        Ok(Tensor::from_vec(rng.normals(n), dims, &Device::Cpu)?.to_device(device)?)
    };
    let x = random(&[2, 16, t, h, w])?;
    let target = random(&[2, 16, t, h, w])?;
    let text = random(&[2, 24, recipe::TEXT_DIM])?;
    let timesteps = Tensor::new(&[250f32, 800.0], device)?;
    let mut spec: sparse::MethodSpec = spec.parse()?;
    if spec.name != "dense" {
        spec.options.set("dense_steps", "0");
    }
    let router = AttentionRouter::new(Registry::builtin().schedule(&spec)?);
    let v = model.forward(
        &x.to_dtype(dtype)?,
        &timesteps,
        &text.to_dtype(dtype)?,
        &router,
        Step::SINGLE,
    )?;
    let loss = (v.to_dtype(DType::F32)? - target)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let mut out = BTreeMap::new();
    for (name, var) in params.vars() {
        if let Some(g) = grads.get(var.as_tensor()) {
            out.insert(
                name.clone(),
                g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            );
        }
    }
    Ok((loss.to_scalar::<f32>()?, out))
}

/// Relative L2 distance of two tensors.
fn relative(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let diff = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let norm = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(diff / norm.max(1e-12))
}

/// Checks every shared weight's gradient (finite, non-zero, close to dense's) and the loss.
fn check_against_dense(
    preset: Preset,
    grid: (usize, usize, usize),
    vmoba: &str,
    dtype: DType,
    device: &Device,
    tolerance: f32,
) -> anyhow::Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!("seed {seed}");
    let (dense_loss, dense) = loss_and_grads(preset, grid, "dense", dtype, device, seed)?;
    assert!(dense.len() > 20, "{} gradients", dense.len());
    let vmoba = format!("vmoba:select=topk,topk=64,dense_layers=,{vmoba}");
    for spec in ["vsa:sparsity=0", vmoba.trim_end_matches(',')] {
        let (loss, grads) = loss_and_grads(preset, grid, spec, dtype, device, seed)?;
        assert!(
            ((loss - dense_loss) / dense_loss).abs() < tolerance,
            "{spec}: loss {loss} vs {dense_loss}"
        );
        for (name, g) in &dense {
            let ours = grads
                .get(name)
                .unwrap_or_else(|| panic!("{spec}: no gradient for {name}"));
            let values: Vec<f32> = ours.flatten_all()?.to_vec1()?;
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{spec}: {name} not finite"
            );
            let err = relative(ours, g)?;
            assert!(
                err < tolerance,
                "{spec}: {name} gradient off by {err} (relative L2)"
            );
        }
        if spec.starts_with("vsa") {
            let gates = grads
                .keys()
                .filter(|k| k.contains("to_gate_compress"))
                .count();
            assert_eq!(
                gates,
                2 * preset.dit_config(recipe::TEXT_DIM).num_layers,
                "VSA gate gradients"
            );
        }
    }
    Ok(())
}

/// CPU, f32, the tiny preset's grid (2 x 4 x 4 tokens, VMoBA chunks of 1 x 2 x 3 with partial
/// ones): 1e-4 relative.
#[test]
fn sparse_methods_match_dense_gradients_at_keep_all_on_the_cpu() -> anyhow::Result<()> {
    let chunks = "chunk_kind=spatiotemporal,chunk=1x2x3";
    check_against_dense(
        Preset::Tiny,
        (2, 4, 4),
        chunks,
        DType::F32,
        &Device::Cpu,
        1e-4,
    )
}

/// CUDA, bf16, the shipped model's grid (5 x 16 x 16 tokens, head dim 64): 3e-2 relative.
#[cfg(feature = "cuda")]
#[test]
fn sparse_methods_match_dense_gradients_at_keep_all_on_the_gpu() -> anyhow::Result<()> {
    let device = Device::new_cuda(0)?;
    // VMoBA's default chunks, cycling temporal, spatial and spatio-temporal by layer
    check_against_dense(Preset::Small, (5, 16, 16), "", DType::BF16, &device, 3e-2)
}

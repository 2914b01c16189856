//! Attention methods plugged into the whole transformer through the router.

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device, Tensor};
use candle_nn::VarBuilder;
use dit::{load_transformer, LoraSet, Step, WanTransformer};
use sparse::sparsed::{Sparsed, SparsedOptions};
use sparse::vmoba::{Selection, Vmoba, VmobaOptions};
use sparse::vsa::{Vsa, VsaOptions};
use sparse::{AttentionMethod, AttentionRouter, AttentionSchedule, Dense, SelfAttention};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use vdit_core::metrics::relative_l2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn inputs() -> Result<HashMap<String, Tensor>> {
    Ok(load(fixture("tiny_h12_io.safetensors"), &Device::Cpu)?)
}

fn forward(model: &WanTransformer, attention: &dyn SelfAttention) -> Result<Tensor> {
    let io = inputs()?;
    Ok(model.forward(
        &io["latents"],
        &io["timesteps"],
        &io["text"],
        attention,
        Step::SINGLE,
    )?)
}

fn router(method: Arc<dyn AttentionMethod>) -> AttentionRouter {
    AttentionRouter::new(AttentionSchedule::new(method))
}

fn vsa(options: VsaOptions) -> Arc<dyn AttentionMethod> {
    Arc::new(Vsa::new(options).unwrap())
}

#[test]
fn keep_everything_methods_equal_dense_through_the_model() -> Result<()> {
    let model = load_transformer(
        &fixture("tiny_h12"),
        &LoraSet::default(),
        DType::F32,
        &Device::Cpu,
    )?
    .model;
    let dense = forward(&model, &Dense)?;
    let methods: [Arc<dyn AttentionMethod>; 3] = [
        vsa(VsaOptions {
            sparsity: 0.0,
            ..Default::default()
        }),
        Arc::new(
            Vmoba::new(VmobaOptions {
                selection: Selection::TopK(Some(1000)),
                st_chunk: [1, 2, 2],
                ..Default::default()
            })
            .unwrap(),
        ),
        Arc::new(
            Sparsed::new(SparsedOptions {
                select: 1.0,
                block: 8,
            })
            .unwrap(),
        ),
    ];
    for method in methods {
        let name = method.name();
        let err = relative_l2(&forward(&model, &router(method))?, &dense)?;
        assert!(err < 1e-5, "{name}: {err:e}");
    }
    // A sparse setting changes the output and is reported per layer.
    let sparse = router(vsa(VsaOptions {
        sparsity: 0.5,
        tile: [1, 2, 2],
    }));
    let err = relative_l2(&forward(&model, &sparse)?, &dense)?;
    assert!(
        err > 1e-4,
        "VSA at sparsity 0.5 left the output unchanged ({err:e})"
    );
    let report = sparse.report()?;
    assert_eq!(report.per_layer.len(), model.config().num_layers);
    assert!(
        report.layer_densities().iter().all(|&d| d > 0.4 && d < 0.6),
        "{:?}",
        report.layer_densities()
    );
    Ok(())
}

/// A model with `to_gate_compress` feeds VSA's coarse branch; zero gate weights add nothing.
#[test]
fn vsa_gate_projection_is_loaded_and_used() -> Result<()> {
    let cfg = load_transformer(
        &fixture("tiny_h12"),
        &LoraSet::default(),
        DType::F32,
        &Device::Cpu,
    )?
    .config;
    let mut weights = load(
        fixture("tiny_h12/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?;
    let plain = WanTransformer::new(
        &cfg,
        VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu),
    )?;
    let with_gate = |scale: f64, weights: &mut HashMap<String, Tensor>| -> Result<WanTransformer> {
        let dim = cfg.dim();
        for layer in 0..cfg.num_layers {
            let w = (Tensor::randn(0f32, 1.0, (dim, dim), &Device::Cpu)? * scale)?;
            let b = (Tensor::randn(0f32, 1.0, dim, &Device::Cpu)? * scale)?;
            weights.insert(format!("blocks.{layer}.attn1.to_gate_compress.weight"), w);
            weights.insert(format!("blocks.{layer}.attn1.to_gate_compress.bias"), b);
        }
        Ok(WanTransformer::new(
            &cfg,
            VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu),
        )?)
    };
    let vsa = || {
        router(vsa(VsaOptions {
            sparsity: 0.5,
            tile: [1, 2, 2],
        }))
    };
    let zero = with_gate(0.0, &mut weights)?;
    let random = with_gate(0.3, &mut weights)?;
    assert!(!plain.blocks()[0].has_gate() && zero.blocks()[0].has_gate());
    let base = forward(&plain, &vsa())?;
    assert!(relative_l2(&forward(&zero, &vsa())?, &base)? < 1e-6);
    assert!(relative_l2(&forward(&random, &vsa())?, &base)? > 1e-3);
    // Dense attention ignores the gate.
    assert!(relative_l2(&forward(&random, &Dense)?, &forward(&plain, &Dense)?)? < 1e-6);
    Ok(())
}

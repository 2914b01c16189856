//! The CUDA kernels against the CPU engine (run on a machine with a GPU:
//! `cargo test --release -p sparse --features cuda --test cuda`). Inputs are rounded to bf16
//! once and given to both paths; bf16 (and, for dense, f16) outputs must be within 2e-2
//! relative L2 of the CPU's f32.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{rel, Lcg};
use sparse::paro::{Paro, ParoOptions, ParoRecorder};
use sparse::sparsed::{Sparsed, SparsedOptions};
use sparse::vmoba::{
    vmoba_attention, vmoba_attention_with, ChunkKind, Selection, Vmoba, VmobaOptions,
};
use sparse::vsa::{vsa_attention, vsa_attention_with, VsaOptions};
use sparse::{
    block_sparse_attention, block_sparse_attention_with, AttentionCall, AttentionMethod,
    AttentionRouter, AttentionSchedule, BlockLayout, BlockMask, CallSite, ForwardKernel,
    Permutation, SelfAttention, SparsePlan, TokenGrid,
};
use std::sync::Arc;
use vdit_core::Step;

const TOLERANCE: f64 = 2e-2;

/// Makes a fresh method (its state unshared).
type MakeMethod<'a> = dyn Fn() -> Arc<dyn AttentionMethod> + 'a;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU")
}

/// The forward kernel families this GPU runs (wgmma on Hopper only); tests loop over them.
fn kernels() -> Vec<ForwardKernel> {
    let mut all = vec![ForwardKernel::Mma];
    if sparse::cuda::is_hopper(&gpu()) {
        all.push(ForwardKernel::Wgmma);
    }
    all
}

/// Runs `f` once per kernel family, labelled.
fn each_kernel(mut f: impl FnMut(ForwardKernel) -> Result<()>) -> Result<()> {
    for kernel in kernels() {
        println!("== forward kernel {kernel:?}");
        f(kernel)?;
    }
    Ok(())
}

/// The same bf16-representable values on the CPU (f32) and the GPU (bf16).
fn pair(shape: (usize, usize, usize, usize)) -> Result<(Tensor, Tensor)> {
    let cpu = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?;
    let gpu = cpu.to_dtype(DType::BF16)?.to_device(&gpu())?;
    Ok((cpu, gpu))
}

fn check(name: &str, gpu_out: &Tensor, cpu_out: &Tensor) -> Result<()> {
    let err = rel(
        &gpu_out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
        cpu_out,
    );
    println!("{name}: relative L2 {err:.2e}");
    assert!(
        err <= TOLERANCE,
        "{name}: relative L2 {err:.3e} > {TOLERANCE}"
    );
    Ok(())
}

#[test]
fn dense_kernel_matches_cpu_for_head_dims_partial_blocks_strides_and_cross_lengths() -> Result<()> {
    each_kernel(|kernel| {
        for d in [64, 128] {
            let shape = (2, 3, 300, d); // 300 = two full blocks of 128 and a partial one
            let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
            check(
                &format!("dense d{d}"),
                &sparse::dense::attention_with(&qg, &kg, &vg, kernel)?,
                &sparse::dense::attention(&qc, &kc, &vc)?,
            )?;
            // f16 (bf16 values are exact in f16 at these magnitudes)
            let f16 = |x: &Tensor| x.to_dtype(DType::F16);
            check(
                &format!("dense f16 d{d}"),
                &sparse::dense::attention_with(&f16(&qg)?, &f16(&kg)?, &f16(&vg)?, kernel)?,
                &sparse::dense::attention(&qc, &kc, &vc)?,
            )?;
            // strided views, as the DiT passes them
            let t = |x: &Tensor| {
                x.transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
            };
            check(
                &format!("dense strided d{d}"),
                &sparse::dense::attention_with(&t(&qg), &t(&kg), &t(&vg), kernel)?,
                &sparse::dense::attention(&qc, &kc, &vc)?,
            )?;
            // cross-attention: 77 keys
            let ((kc2, kg2), (vc2, vg2)) = (pair((2, 3, 77, d))?, pair((2, 3, 77, d))?);
            check(
                &format!("cross d{d}"),
                &sparse::dense::attention_with(&qg, &kg2, &vg2, kernel)?,
                &sparse::dense::attention(&qc, &kc2, &vc2)?,
            )?;
        }
        Ok(())
    })
}

/// Key tiles are windows of the key stream: with key blocks of 20 tokens (the last partial),
/// per-head token orders and random lists (some empty), every tile spans several blocks.
#[test]
fn key_tiles_span_small_partial_and_permuted_key_blocks() -> Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64);
    println!("plan seed {seed}");
    let mut rng = Lcg(seed);
    let (b, h, s) = (2, 3, 310);
    let permutation = |rng: &mut Lcg| {
        let mut order: Vec<u32> = (0..s as u32).collect();
        for i in (1..s).rev() {
            order.swap(i, rng.below(i + 1));
        }
        Permutation::from_order(order).unwrap()
    };
    let k_orders = (0..h).map(|_| permutation(&mut rng)).collect();
    let k_layout = Arc::new(BlockLayout::per_head(k_orders, 20));
    each_kernel(|kernel| {
        for (d, q_block) in [(64, 64), (128, 128), (128, 64)] {
            let q_layout = Arc::new(BlockLayout::from_order(permutation(&mut rng), q_block));
            let (nq, nk) = (q_layout.num_blocks(), k_layout.num_blocks());
            let lists: Vec<Vec<u32>> = (0..b * h * nq)
                .map(|_| {
                    let len = rng.below(nk + 1);
                    (0..len)
                        .map(|_| rng.below(nk) as u32)
                        .collect::<std::collections::BTreeSet<u32>>()
                        .into_iter()
                        .collect()
                })
                .collect();
            let mask = BlockMask::from_lists(b * h, nq, nk, &lists)?;
            let plan = Arc::new(SparsePlan::new(b, h, q_layout, k_layout.clone(), mask)?);
            let shape = (b, h, s, d);
            let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
            check(
                &format!("key stream d{d} query blocks of {q_block}"),
                &block_sparse_attention_with(&qg, &kg, &vg, &plan, kernel)?,
                &block_sparse_attention(&qc, &kc, &vc, &plan)?,
            )?;
        }
        Ok(())
    })
}

#[test]
fn vsa_on_gpu_matches_cpu_on_partial_cubes() -> Result<()> {
    each_kernel(|kernel| {
        for grid in [TokenGrid::new(5, 6, 10), TokenGrid::new(9, 7, 13)] {
            let shape = (2, 3, grid.len(), 64);
            let ((qc, qg), (kc, kg), (vc, vg), (gc, gg)) =
                (pair(shape)?, pair(shape)?, pair(shape)?, pair(shape)?);
            for sparsity in [0.0, 0.5, 0.875] {
                let opts = VsaOptions {
                    sparsity,
                    ..Default::default()
                };
                let g = vsa_attention_with(&qg, &kg, &vg, Some(&gg), grid, &opts, kernel)?;
                let c = vsa_attention(&qc, &kc, &vc, Some(&gc), grid, &opts)?;
                check(&format!("vsa {grid} sparsity {sparsity}"), &g.out, &c.out)?;
                assert!(
                    (g.plan.density()? - c.plan.density()?).abs() < 0.02,
                    "selections differ"
                );
            }
        }
        Ok(())
    })
}

#[test]
fn every_method_through_the_router_matches_cpu() -> Result<()> {
    each_kernel(|kernel| {
        let grid = TokenGrid::new(6, 6, 8);
        let shape = (2, 2, grid.len(), 64);
        let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
        let paro = {
            let recorder = ParoRecorder::new(
                grid,
                ParoOptions {
                    density: 0.3,
                    block: 64,
                    step_groups: 1,
                },
            )
            .unwrap();
            let call = AttentionCall {
                q: &qc,
                k: &kc,
                v: &vc,
                gate: None,
                grid,
                site: CallSite::single(0),
                first_head: 0,
            };
            recorder.attend(&call)?;
            Arc::new(recorder.finish().unwrap())
        };
        // A fresh method per router: SparseD keeps the masks it froze.
        let methods: [(&str, &MakeMethod<'_>); 3] = [
            ("paro", &|| Arc::new(Paro::new(paro.clone(), None))),
            ("sparsed", &|| {
                Arc::new(
                    Sparsed::new(SparsedOptions {
                        select: 0.4,
                        block: 64,
                    })
                    .unwrap(),
                )
            }),
            ("vmoba", &|| {
                Arc::new(
                    Vmoba::new(VmobaOptions {
                        kind: Some(ChunkKind::Spatiotemporal),
                        st_chunk: [2, 3, 4],
                        ..Default::default()
                    })
                    .unwrap(),
                )
            }),
        ];
        for (name, method) in methods {
            let outs = [(&qc, &kc, &vc), (&qg, &kg, &vg)].map(|(q, k, v)| {
                let router =
                    AttentionRouter::new(AttentionSchedule::new(method())).with_kernel(kernel);
                let mut out = None;
                for step in 0..2 {
                    let call = AttentionCall {
                        q,
                        k,
                        v,
                        gate: None,
                        grid,
                        site: CallSite {
                            layer: 0,
                            step: Step::new(step, 2),
                        },
                        first_head: 0,
                    };
                    out = Some(router.attend(&call).unwrap());
                }
                (out.unwrap(), router.report().unwrap().overall())
            });
            check(name, &outs[1].0, &outs[0].0)?;
            assert!(
                (outs[0].1 - outs[1].1).abs() < 0.02 && outs[1].1 < 1.0,
                "{name}: densities {} {}",
                outs[0].1,
                outs[1].1
            );
        }
        Ok(())
    })
}

/// VMoBA's GPU path (selection on the device, gathered-query kernel, log-sum-exp merge) against
/// the CPU path, for every chunk kind (partial chunks included) and both selection rules.
#[test]
fn vmoba_gathered_path_matches_cpu() -> Result<()> {
    each_kernel(|kernel| {
        for (grid, d) in [
            (TokenGrid::new(5, 6, 10), 64),
            (TokenGrid::new(7, 9, 11), 128),
        ] {
            let shape = (2, 3, grid.len(), d);
            let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
            for kind in [
                ChunkKind::Temporal,
                ChunkKind::Spatial,
                ChunkKind::Spatiotemporal,
            ] {
                for selection in [Selection::TopK(Some(3)), Selection::Threshold(0.25)] {
                    let opts = VmobaOptions {
                        kind: Some(kind),
                        temporal_chunk: 2,
                        spatial_chunk: [3, 4],
                        st_chunk: [2, 3, 4],
                        selection,
                        ..Default::default()
                    };
                    let g = vmoba_attention_with(&qg, &kg, &vg, grid, kind, &opts, kernel)?;
                    let c = vmoba_attention(&qc, &kc, &vc, grid, kind, &opts)?;
                    check(
                        &format!("vmoba {grid} d{d} {kind} {selection:?}"),
                        &g.out,
                        &c.out,
                    )?;
                    assert!(
                        (g.density() - c.density()).abs() < 0.01,
                        "selections differ: density {} on the GPU, {} on the CPU",
                        g.density(),
                        c.density()
                    );
                }
            }
        }
        Ok(())
    })
}

#[test]
fn top_k_kernel_equals_the_cpu_rule_with_ties() -> Result<()> {
    // Many ties, and both zeros (-0.0 ranks below 0.0, as f32::total_cmp has it).
    let scores = Tensor::randn(0f32, 1.0, (67, 700), &Device::Cpu)?.round()?;
    // The warp-per-row kernel (k <= 128) and the sorting one.
    for k in [1, 37, 128, 129, 700] {
        let cpu = sparse::top_k(&scores, k)?.to_vec2::<u32>()?;
        let gpu_out = sparse::top_k(&scores.to_device(&gpu())?, k)?
            .to_device(&Device::Cpu)?
            .to_vec2::<u32>()?;
        assert_eq!(cpu, gpu_out, "top-{k}");
    }
    Ok(())
}

#[test]
fn gradients_on_gpu_match_cpu() -> Result<()> {
    each_kernel(|kernel| {
        let grid = TokenGrid::new(5, 6, 10);
        let shape = (1, 2, grid.len(), 64);
        let layout = BlockLayout::tiled_shared(grid, [4, 4, 4]);
        let ((qc, qg), (kc, kg), (vc, vg), (wc, wg)) =
            (pair(shape)?, pair(shape)?, pair(shape)?, pair(shape)?);
        let n = layout.num_blocks();
        let lists: Vec<Vec<u32>> = (0..2 * n)
            .map(|i| vec![(i % n) as u32, ((i * 7 + 3) % n) as u32])
            .collect();
        let mask = sparse::BlockMask::from_lists(2, n, n, &lists)?;
        let plan = Arc::new(SparsePlan::new(1, 2, layout.clone(), layout, mask)?);
        let grads = |q: &Tensor, k: &Tensor, v: &Tensor, w: &Tensor| -> Result<Vec<Tensor>> {
            let vars = [q, k, v].map(|t| Var::from_tensor(t).unwrap());
            let out = block_sparse_attention_with(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                &plan,
                kernel,
            )?;
            let store = (out.to_dtype(DType::F32)? * w.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            Ok(vars
                .iter()
                .map(|x| {
                    store
                        .get(x.as_tensor())
                        .unwrap()
                        .to_device(&Device::Cpu)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                })
                .collect())
        };
        let (g, c) = (grads(&qg, &kg, &vg, &wg)?, grads(&qc, &kc, &vc, &wc)?);
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&c)) {
            let err = rel(a, b);
            println!("gradient {name}: relative L2 {err:.2e}");
            assert!(
                err <= 3e-2,
                "{name}: {err:.3e} (bf16 gradients, tolerance 3e-2)"
            );
        }
        Ok(())
    })
}

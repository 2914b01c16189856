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
    vmoba_attention, vmoba_attention_with, ChunkKind, Selection, Vmoba, VmobaOptions, VmobaOutput,
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

/// A generator seeded from the clock (the seed is printed, to replay a failure).
fn seeded_rng() -> Lcg {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64);
    println!("plan seed {seed}");
    Lcg(seed)
}

/// A uniformly random order of `s` tokens.
fn random_permutation(rng: &mut Lcg, s: usize) -> Permutation {
    let mut order: Vec<u32> = (0..s as u32).collect();
    for i in (1..s).rev() {
        order.swap(i, rng.below(i + 1));
    }
    Permutation::from_order(order).unwrap()
}

/// `lists` sorted lists of distinct key blocks out of `nk`, of random lengths (some empty).
fn random_lists(rng: &mut Lcg, lists: usize, nk: usize) -> Vec<Vec<u32>> {
    (0..lists)
        .map(|_| {
            let len = rng.below(nk + 1);
            (0..len)
                .map(|_| rng.below(nk) as u32)
                .collect::<std::collections::BTreeSet<u32>>()
                .into_iter()
                .collect()
        })
        .collect()
}

/// Key tiles are windows of the key stream: with key blocks of 20 tokens (the last partial),
/// per-head token orders and random lists (some empty), every tile spans several blocks.
#[test]
fn key_tiles_span_small_partial_and_permuted_key_blocks() -> Result<()> {
    let mut rng = seeded_rng();
    let (b, h, s) = (2, 3, 310);
    let k_orders = (0..h).map(|_| random_permutation(&mut rng, s)).collect();
    let k_layout = Arc::new(BlockLayout::per_head(k_orders, 20));
    each_kernel(|kernel| {
        for (d, q_block) in [(64, 64), (128, 128), (128, 64)] {
            let q_layout = Arc::new(BlockLayout::from_order(
                random_permutation(&mut rng, s),
                q_block,
            ));
            let (nq, nk) = (q_layout.num_blocks(), k_layout.num_blocks());
            let lists = random_lists(&mut rng, b * h * nq, nk);
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

/// Key streams of one-token blocks, longer and shorter than what the Hopper producers stage in
/// shared memory (1,024 blocks): a staged tile crosses 64 blocks, and a list past the capacity
/// takes the walk through the plan in global memory; the forward and the gradients.
#[test]
fn long_streams_of_one_token_blocks_match_cpu() -> Result<()> {
    let mut rng = seeded_rng();
    let (b, h, s, d) = (1, 2, 1300, 64);
    let k_layout = Arc::new(BlockLayout::from_order(random_permutation(&mut rng, s), 1));
    let q_layout = Arc::new(BlockLayout::from_order(random_permutation(&mut rng, s), 64));
    let (nq, nk) = (q_layout.num_blocks(), k_layout.num_blocks());
    each_kernel(|kernel| {
        // Lists of 1,100 and 900 distinct blocks in turn, in random orders.
        let lists: Vec<Vec<u32>> = (0..b * h * nq)
            .map(|i| {
                let order = random_permutation(&mut rng, nk);
                order.order()[..if i % 2 == 0 { 1100 } else { 900 }].to_vec()
            })
            .collect();
        let mask = BlockMask::from_lists(b * h, nq, nk, &lists)?;
        let plan = Arc::new(SparsePlan::new(
            b,
            h,
            q_layout.clone(),
            k_layout.clone(),
            mask,
        )?);
        let shape = (b, h, s, d);
        let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
        check(
            "one-token key blocks",
            &block_sparse_attention_with(&qg, &kg, &vg, &plan, kernel)?,
            &block_sparse_attention(&qc, &kc, &vc, &plan)?,
        )?;
        check_plan_gradients(
            "one-token key blocks",
            kernel,
            [&plan, &plan],
            &grad_inputs(shape, s)?,
        )
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
/// VMoBA's options for small test grids: every chunk kind (chunks of 2 frames, 3x4 and
/// 2x3x4 tokens) under each selection rule.
fn small_chunk_options() -> Vec<(ChunkKind, VmobaOptions)> {
    let kinds = [
        ChunkKind::Temporal,
        ChunkKind::Spatial,
        ChunkKind::Spatiotemporal,
    ];
    let rules = [Selection::TopK(Some(3)), Selection::Threshold(0.25)];
    kinds
        .into_iter()
        .flat_map(|kind| {
            rules.map(|selection| {
                let opts = VmobaOptions {
                    kind: Some(kind),
                    temporal_chunk: 2,
                    spatial_chunk: [3, 4],
                    st_chunk: [2, 3, 4],
                    selection,
                    ..Default::default()
                };
                (kind, opts)
            })
        })
        .collect()
}

#[test]
fn vmoba_gathered_path_matches_cpu() -> Result<()> {
    each_kernel(|kernel| {
        for (grid, d) in [
            (TokenGrid::new(5, 6, 10), 64),
            (TokenGrid::new(7, 9, 11), 128),
        ] {
            let shape = (2, 3, grid.len(), d);
            let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
            for (kind, opts) in small_chunk_options() {
                let g = vmoba_attention_with(&qg, &kg, &vg, grid, kind, &opts, kernel)?;
                let c = vmoba_attention(&qc, &kc, &vc, grid, kind, &opts)?;
                let name = format!("vmoba {grid} d{d} {kind} {:?}", opts.selection);
                check_vmoba(&name, &g, &c)?;
            }
        }
        Ok(())
    })
}

/// VMoBA's GPU output against the CPU's, and their selections' densities within 0.01.
fn check_vmoba(name: &str, gpu_out: &VmobaOutput, cpu_out: &VmobaOutput) -> Result<()> {
    check(name, &gpu_out.out, &cpu_out.out)?;
    let (g, c) = (gpu_out.density()?, cpu_out.density()?);
    assert!(
        (g - c).abs() < 0.01,
        "{name}: selections differ: density {g} on the GPU, {c} on the CPU"
    );
    Ok(())
}

/// VMoBA's chunk-stationary kernel (Hopper) on chunks of two key tiles (192 keys: spatial
/// chunks of 4x6 tokens over 8 frames) with more pairs per chunk than one work item takes
/// (about 2,300 at top-12 of 16 chunks, items of 2,048), so that a chunk spans items and an
/// item's query tiles go round the ring; spatio-temporal chunks of 48 keys likewise; against
/// the CPU path, under both selection rules.
#[test]
fn vmoba_long_chunk_lists_match_cpu() -> Result<()> {
    let grid = TokenGrid::new(8, 16, 24);
    let shape = (1, 2, grid.len(), 128);
    let ((qc, qg), (kc, kg), (vc, vg)) = (pair(shape)?, pair(shape)?, pair(shape)?);
    for kind in [ChunkKind::Spatial, ChunkKind::Spatiotemporal] {
        for selection in [Selection::TopK(Some(12)), Selection::Threshold(0.5)] {
            let opts = VmobaOptions {
                kind: Some(kind),
                spatial_chunk: [4, 6],
                st_chunk: [2, 4, 6],
                selection,
                ..Default::default()
            };
            let g = vmoba_attention(&qg, &kg, &vg, grid, kind, &opts)?;
            let c = vmoba_attention(&qc, &kc, &vc, grid, kind, &opts)?;
            check_vmoba(&format!("vmoba {grid} {kind} {selection:?}"), &g, &c)?;
        }
    }
    Ok(())
}

/// VMoBA's device selection breaks ties as the CPU rule does: with every key the same vector,
/// each query scores all chunks equally, so both rules keep the lowest-numbered chunks (after
/// the own chunk); a different tie-break would average other values.
#[test]
fn vmoba_selection_breaks_ties_like_cpu() -> Result<()> {
    let grid = TokenGrid::new(5, 6, 10);
    let shape = (1, 2, grid.len(), 64);
    let ((qc, qg), (vc, vg)) = (pair(shape)?, pair(shape)?);
    let (row_c, row_g) = pair((1, 2, 1, 64))?;
    let (kc, kg) = (
        row_c.broadcast_as(shape)?.contiguous()?,
        row_g.broadcast_as(shape)?.contiguous()?,
    );
    for (kind, opts) in small_chunk_options() {
        let g = vmoba_attention(&qg, &kg, &vg, grid, kind, &opts)?;
        let c = vmoba_attention(&qc, &kc, &vc, grid, kind, &opts)?;
        let name = format!("vmoba ties {kind} {:?}", opts.selection);
        check(&name, &g.out, &c.out)?;
        assert_eq!(g.density()?, c.density()?, "{name}: selections differ");
    }
    Ok(())
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

/// Gradients of `sum(attention(q, k, v) * w)` with respect to q, k and v, as f32 on the host.
fn gradients(
    attention: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    [q, k, v, w]: [&Tensor; 4],
) -> Result<Vec<Tensor>> {
    let vars = [q, k, v].map(|t| Var::from_tensor(t).unwrap());
    let out = attention(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    )?;
    let store = (out.to_dtype(DType::F32)? * w.to_dtype(DType::F32)?)?
        .sum_all()?
        .backward()?;
    vars.iter()
        .map(|x| {
            store
                .get(x.as_tensor())
                .expect("every input gets a gradient")
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)
        })
        .collect()
}

/// The GPU's gradients against the CPU's: within 3e-2 relative L2 (bf16 inputs, bf16 P and dS
/// in the products, f32 accumulation).
fn check_gradients(name: &str, gpu: &[Tensor], cpu: &[Tensor]) {
    for (grad, (a, b)) in ["dq", "dk", "dv"].iter().zip(gpu.iter().zip(cpu)) {
        let err = rel(a, b);
        println!("{name} {grad}: relative L2 {err:.2e}");
        assert!(err <= 3e-2, "{name} {grad}: {err:.3e} > 3e-2");
    }
}

/// q, k, v, w as CPU/GPU pairs for queries of `shape` and `k_tokens` keys.
type Inputs = ([Tensor; 4], [Tensor; 4]);
fn grad_inputs(shape: (usize, usize, usize, usize), k_tokens: usize) -> Result<Inputs> {
    let kshape = (shape.0, shape.1, k_tokens, shape.3);
    let ((qc, qg), (kc, kg), (vc, vg), (wc, wg)) =
        (pair(shape)?, pair(kshape)?, pair(kshape)?, pair(shape)?);
    Ok(([qc, kc, vc, wc], [qg, kg, vg, wg]))
}

fn refs(t: &[Tensor; 4]) -> [&Tensor; 4] {
    [&t[0], &t[1], &t[2], &t[3]]
}

/// Block-sparse attention's gradients through `kernel` on the GPU plan against the CPU's on
/// the CPU plan (the same lists, held where each side reads them).
fn check_plan_gradients(
    name: &str,
    kernel: ForwardKernel,
    [gpu_plan, cpu_plan]: [&Arc<SparsePlan>; 2],
    (c, g): &Inputs,
) -> Result<()> {
    check_gradients(
        name,
        &gradients(
            |q, k, v| block_sparse_attention_with(q, k, v, gpu_plan, kernel),
            refs(g),
        )?,
        &gradients(|q, k, v| block_sparse_attention(q, k, v, cpu_plan), refs(c))?,
    );
    Ok(())
}

#[test]
fn gradients_on_gpu_match_cpu() -> Result<()> {
    each_kernel(|kernel| {
        let grid = TokenGrid::new(5, 6, 10);
        let shape = (1, 2, grid.len(), 64);
        let layout = BlockLayout::tiled_shared(grid, [4, 4, 4]);
        let n = layout.num_blocks();
        let lists: Vec<Vec<u32>> = (0..2 * n)
            .map(|i| vec![(i % n) as u32, ((i * 7 + 3) % n) as u32])
            .collect();
        let mask = sparse::BlockMask::from_lists(2, n, n, &lists)?;
        let plan = Arc::new(SparsePlan::new(1, 2, layout.clone(), layout, mask)?);
        let inputs = grad_inputs(shape, grid.len())?;
        check_plan_gradients("cubes", kernel, [&plan, &plan], &inputs)
    })
}

/// Dense attention's backward on the GPU (over every block: on Hopper at head dim 128 the
/// one-pass kernel, with 300 keys, or the two passes, with 77) against
/// candle's differentiated matrix products on the CPU: both head dims, bf16 and f16, a partial
/// last block, query blocks of 128 rows (two CTAs each) and cross-attention to 77 keys.
#[test]
fn dense_gradients_match_cpu_for_head_dims_partial_blocks_and_cross_lengths() -> Result<()> {
    each_kernel(|kernel| {
        for (d, keys) in [(64, 300), (128, 300), (128, 77)] {
            let (c, g) = grad_inputs((2, 3, 300, d), keys)?;
            let on_gpu = |inputs: [&Tensor; 4]| {
                gradients(
                    |q, k, v| sparse::dense::attention_with(q, k, v, kernel),
                    inputs,
                )
            };
            let cpu = gradients(sparse::dense::attention, refs(&c))?;
            check_gradients(&format!("dense d{d} {keys} keys"), &on_gpu(refs(&g))?, &cpu);
            // f16 kernels (bf16 values are exact in f16 at these magnitudes)
            let f16 = g
                .iter()
                .map(|t| t.to_dtype(DType::F16))
                .collect::<Result<Vec<_>>>()?;
            check_gradients(
                &format!("dense f16 d{d} {keys} keys"),
                &on_gpu([&f16[0], &f16[1], &f16[2], &f16[3]])?,
                &cpu,
            );
        }
        Ok(())
    })
}

/// The backward at the real shape's tiling: VSA's 4x4x4 cubes on a grid whose frames, height
/// and width leave partial cubes (21 x 30 x 52 has remainders 1, 2, 0; so does 5 x 6 x 12), with
/// random lists and with uniform ones (whose transpose the device makes), and
/// the key-stream case of small, partial, per-head permuted key blocks with random lists (some
/// empty) under query blocks of 64 and 128, and of 8 (whose dq the dk/dv pass adds by atomics);
/// key blocks of 128 and 200 (the one-pass backward at head dim 128), and natural 40-row query
/// blocks under natural 128-token keys (the one-pass backward's query tiles then are one run of
/// tokens or span listed blocks, and take its dq map or its per-row additions); both head dims.
#[test]
fn gradients_at_real_tiling_match_cpu() -> Result<()> {
    let mut rng = seeded_rng();
    let (b, h) = (1, 2);
    let grid = TokenGrid::new(5, 6, 12);
    let cubes = BlockLayout::tiled_shared(grid, [4, 4, 4]);
    let s = grid.len();
    let mut per_head_keys = |block: usize| {
        Arc::new(BlockLayout::per_head(
            (0..h).map(|_| random_permutation(&mut rng, s)).collect(),
            block,
        ))
    };
    let small_keys = per_head_keys(20);
    // Key blocks of 128 and more take the one-pass Hopper backward at head dim 128: two
    // consumers of 64 key rows per CTA, the second idle or partial at a block's end.
    let (keys_128, keys_200) = (per_head_keys(128), per_head_keys(200));
    each_kernel(|kernel| {
        for d in [64, 128] {
            let layouts = [
                ("cubes", cubes.clone(), cubes.clone()),
                (
                    "64-row query blocks, 20-token keys",
                    Arc::new(BlockLayout::from_order(random_permutation(&mut rng, s), 64)),
                    small_keys.clone(),
                ),
                (
                    "128-row query blocks, 20-token keys",
                    Arc::new(BlockLayout::from_order(
                        random_permutation(&mut rng, s),
                        128,
                    )),
                    small_keys.clone(),
                ),
                (
                    "128-row query blocks, 128-token keys",
                    Arc::new(BlockLayout::from_order(
                        random_permutation(&mut rng, s),
                        128,
                    )),
                    keys_128.clone(),
                ),
                (
                    "64-row query blocks, 200-token keys",
                    Arc::new(BlockLayout::from_order(random_permutation(&mut rng, s), 64)),
                    keys_200.clone(),
                ),
                (
                    "40-row natural query blocks, 128-token natural keys",
                    BlockLayout::natural_shared(s, 40),
                    BlockLayout::natural_shared(s, 128),
                ),
                (
                    "8-row query blocks (dq by atomics), 20-token keys",
                    Arc::new(BlockLayout::from_order(random_permutation(&mut rng, s), 8)),
                    small_keys.clone(),
                ),
            ];
            // Uniform lists (as VSA's and VMoBA's top-k make them, transposed on the device
            // for dk/dv): 3 distinct random cubes per query cube.
            let n = cubes.num_blocks();
            let picks: Vec<u32> = (0..b * h * n)
                .flat_map(|_| {
                    let mut row: Vec<u32> = Vec::new();
                    while row.len() < 3 {
                        let c = rng.below(n) as u32;
                        if !row.contains(&c) {
                            row.push(c);
                        }
                    }
                    row
                })
                .collect();
            let uniform = |device: &Device| -> Result<Arc<SparsePlan>> {
                let indices = Tensor::from_vec(picks.clone(), (b * h * n, 3), device)?;
                let plan = SparsePlan::uniform(b, h, cubes.clone(), cubes.clone(), indices)?;
                Ok(Arc::new(plan))
            };
            check_plan_gradients(
                &format!("uniform lists on cubes d{d}"),
                kernel,
                [&uniform(&gpu())?, &uniform(&Device::Cpu)?],
                &grad_inputs((b, h, s, d), s)?,
            )?;
            for (name, q_layout, k_layout) in layouts {
                let (nq, nk) = (q_layout.num_blocks(), k_layout.num_blocks());
                let lists = random_lists(&mut rng, b * h * nq, nk);
                let mask = BlockMask::from_lists(b * h, nq, nk, &lists)?;
                let plan = Arc::new(SparsePlan::new(b, h, q_layout, k_layout, mask)?);
                check_plan_gradients(
                    &format!("{name} d{d}"),
                    kernel,
                    [&plan, &plan],
                    &grad_inputs((b, h, s, d), s)?,
                )?;
            }
        }
        Ok(())
    })
}

/// VSA's gradients with its gate (the pooling and spreading operations' backward, the coarse
/// branch, the fine stage) on the GPU against candle's index operations on the CPU; sparsity 0
/// keeps every cube, so that no near-tie in the selection can differ between the two.
#[test]
fn vsa_gradients_with_gate_match_cpu_on_partial_cubes() -> Result<()> {
    each_kernel(|kernel| {
        let grid = TokenGrid::new(5, 6, 12);
        let shape = (1, 2, grid.len(), 64);
        let (c, g) = grad_inputs(shape, grid.len())?;
        let (gate_c, gate_g) = pair(shape)?;
        let opts = VsaOptions {
            sparsity: 0.0,
            ..Default::default()
        };
        check_gradients(
            "vsa with gate",
            &gradients(
                |q, k, v| Ok(vsa_attention_with(q, k, v, Some(&gate_g), grid, &opts, kernel)?.out),
                refs(&g),
            )?,
            &gradients(
                |q, k, v| Ok(vsa_attention(q, k, v, Some(&gate_c), grid, &opts)?.out),
                refs(&c),
            )?,
        );
        Ok(())
    })
}

/// VMoBA's plan path (the one training takes: selection on the device for top-k, host rules
/// otherwise), forward and gradients, against the CPU's host selection, for every chunk kind.
#[test]
fn vmoba_plan_path_gradients_match_cpu() -> Result<()> {
    each_kernel(|kernel| {
        let grid = TokenGrid::new(5, 6, 10);
        let (c, g) = grad_inputs((1, 2, grid.len(), 64), grid.len())?;
        for (kind, opts) in small_chunk_options() {
            check_gradients(
                &format!("vmoba plan path {kind} {:?}", opts.selection),
                &gradients(
                    |q, k, v| Ok(vmoba_attention_with(q, k, v, grid, kind, &opts, kernel)?.out),
                    refs(&g),
                )?,
                &gradients(
                    |q, k, v| Ok(vmoba_attention(q, k, v, grid, kind, &opts)?.out),
                    refs(&c),
                )?,
            );
        }
        Ok(())
    })
}

/// VSA's output kernel (`fine + gate * coarse` per cube, one pass) against its composed form
/// on the CPU: `fine` and `gate` as `[B, H, S, D]` views of `[B, S, H, D]` buffers (how the
/// attention kernels and the DiT's projections hand them over), partial cubes, and the
/// gradients of all three operands. Also the cube means at blocks of 3,120 tokens (VMoBA's
/// temporal chunks), where the pooling kernel splits each block over token lanes.
#[test]
fn gated_add_and_block_means_match_cpu() -> Result<()> {
    let grid = TokenGrid::new(5, 6, 10);
    let layout = BlockLayout::tiled_shared(grid, [4, 4, 4]);
    let (b, h, s, d) = (2, 3, grid.len(), 64);
    let ((fc, fg), (gc, gg), (wc, wg)) = (
        pair((b, s, h, d))?,
        pair((b, s, h, d))?,
        pair((b, h, s, d))?,
    );
    let coarse_c = Tensor::randn(0f32, 1.0, (b, h, layout.num_blocks(), d), &Device::Cpu)?;
    let coarse_g = coarse_c.to_device(&gpu())?;
    let run = |fine: &Tensor, gate: &Tensor, coarse: &Tensor, w: &Tensor| -> Result<Vec<Tensor>> {
        let vars = [fine, gate, coarse].map(|t| Var::from_tensor(t).unwrap());
        let out = sparse::pool::add_gated_blocks(
            &vars[0].as_tensor().transpose(1, 2)?,
            &vars[1].as_tensor().transpose(1, 2)?,
            vars[2].as_tensor(),
            &layout,
        )?;
        let store = (out.to_dtype(DType::F32)? * w.to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        let mut all = vec![out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?];
        for var in &vars {
            let grad = store
                .get(var.as_tensor())
                .expect("every operand gets a gradient");
            all.push(grad.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
        }
        Ok(all)
    };
    let (ours, reference) = (
        run(&fg, &gg, &coarse_g, &wg)?,
        run(&fc, &gc, &coarse_c, &wc)?,
    );
    for (name, (a, r)) in ["out", "d fine", "d gate", "d coarse"]
        .iter()
        .zip(ours.iter().zip(&reference))
    {
        check(&format!("gated add {name}"), a, r)?;
    }

    let grid = TokenGrid::new(4, 30, 52);
    let chunks = BlockLayout::tiled_shared(grid, [2, 30, 52]);
    let (xc, xg) = pair((1, 2, grid.len(), 128))?;
    check(
        "block means of 3120-token blocks",
        &sparse::pool::block_means(&xg, &chunks)?,
        &sparse::pool::block_means(&xc, &chunks)?,
    )
}

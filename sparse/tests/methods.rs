//! Each method against an independent brute-force reference, keep-everything identities,
//! gradients, PARO's order choice and the router's schedule.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use common::*;
use sparse::paro::{Paro, ParoOptions, ParoRecorder};
use sparse::sparsed::{Sparsed, SparsedOptions};
use sparse::vmoba::{vmoba_attention, ChunkKind, Scope, Selection, Vmoba, VmobaOptions};
use sparse::vsa::{vsa_attention, VsaOptions};
use sparse::{
    AttentionCall, AttentionMethod, AttentionRouter, AttentionSchedule, AxisOrder, CallSite,
    LayerSet, SelfAttention, StepCount, TokenGrid,
};
use std::sync::Arc;
use vdit_core::Step;

const GRIDS: [[usize; 3]; 2] = [[5, 6, 10], [9, 7, 13]];

fn grid_of(g: [usize; 3]) -> TokenGrid {
    TokenGrid::new(g[0], g[1], g[2])
}

fn dense(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    sparse::dense::attention(q, k, v).unwrap()
}

/// Brute-force VSA: coarse attention over cube means, top-k cubes per query cube from the
/// coarse scores, masked dense fine attention, plus coarse * gate.
fn vsa_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    gate: Option<&Tensor>,
    grid: [usize; 3],
    sparsity: f64,
) -> Result<Tensor> {
    let (b, h, _, d) = q.dims4()?;
    let (ids, n) = box_ids(grid, [4, 4, 4]);
    let pool = pooling_matrix(&ids, n)?;
    let (qc, kc, vc) = (
        pool.broadcast_matmul(q)?,
        pool.broadcast_matmul(k)?,
        pool.broadcast_matmul(v)?,
    );
    let scores = (qc.matmul(&kc.t()?)? / (d as f64).sqrt())?;
    let keep = ((1.0 - sparsity) * n as f64 - 1e-9).ceil() as usize;
    let flat: Vec<f32> = scores.detach().flatten_all()?.to_vec1()?;
    let mut chosen = vec![vec![false; n]; b * h * n];
    for (row, sel) in flat.chunks(n).zip(chosen.iter_mut()) {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
        order[..keep].iter().for_each(|&c| sel[c] = true);
    }
    let mask = token_mask(b, h, &ids, |g, qtok, kcube| {
        chosen[g * n + ids[qtok]][kcube]
    })?;
    let fine = masked_attention(q, k, v, &mask)?;
    match gate {
        None => Ok(fine),
        Some(gate) => {
            let coarse = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&vc)?;
            let index = Tensor::from_vec(
                ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ids.len(),
                &Device::Cpu,
            )?;
            fine + (coarse.index_select(&index, 2)? * gate)?
        }
    }
}

#[test]
fn vsa_matches_brute_force_on_partial_cubes() -> Result<()> {
    for grid in GRIDS {
        let s = grid.iter().product();
        let (q, k, v) = random_qkv(2, 3, s, 8)?;
        let gate = Tensor::randn(0f32, 1.0, (2, 3, s, 8), &Device::Cpu)?;
        for sparsity in [0.5, 0.875] {
            let opts = VsaOptions {
                sparsity,
                ..Default::default()
            };
            for g in [None, Some(&gate)] {
                let ours = vsa_attention(&q, &k, &v, g, grid_of(grid), &opts)?;
                let err = rel(&ours.out, &vsa_reference(&q, &k, &v, g, grid, sparsity)?);
                assert!(
                    err < 1e-5,
                    "{grid:?} sparsity {sparsity} gate {}: {err:e}",
                    g.is_some()
                );
                assert!(
                    ours.plan.density()? < 1.0 - sparsity + 0.2,
                    "density {}",
                    ours.plan.density()?
                );
            }
        }
    }
    Ok(())
}

/// Brute-force VMoBA selection for one (group, query): gates against chunk means, own chunk
/// always, then the rule. Also returns the smallest margin of any selection: how far the score
/// at the edge of a top-k, or the mass at the edge of a threshold, is from flipping. Below
/// [`TIE_MARGIN`] rounding decides which chunk is kept, so a comparison means nothing.
fn vmoba_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grid: [usize; 3],
    tile: [usize; 3],
    sel: Selection,
    scope: Scope,
) -> Result<(Tensor, f64)> {
    let (b, h, s, _) = q.dims4()?;
    let (ids, n) = box_ids(grid, tile);
    let mut margin = f64::INFINITY;
    let pool = pooling_matrix(&ids, n)?;
    let gates: Vec<f32> = q
        .matmul(&pool.broadcast_matmul(k)?.t()?)?
        .flatten_all()?
        .to_vec1()?; // [B,H,S,n]
    let mut allowed = vec![vec![false; n]; b * h * s];
    for g in 0..b * h {
        let head = &gates[g * s * n..(g + 1) * s * n];
        let (lo, hi) = match scope {
            Scope::HeadGlobal => {
                let lo = head.iter().cloned().fold(f32::INFINITY, f32::min);
                let hi = head.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                (vec![lo; s], vec![hi; s])
            }
            Scope::QueryHead => head
                .chunks(n)
                .map(|r| {
                    (
                        r.iter().cloned().fold(f32::INFINITY, f32::min),
                        r.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
                    )
                })
                .unzip(),
        };
        let norm = |qi: usize, c: usize| ((head[qi * n + c] - lo[qi]) / (hi[qi] - lo[qi])) as f64;
        let mut candidates = Vec::new(); // (score, query, chunk) of non-own pairs
        let (mut mass, mut total) = (0.0, 0.0);
        for qi in 0..s {
            allowed[g * s + qi][ids[qi]] = true;
            if scope == Scope::QueryHead {
                let mut others: Vec<usize> = (0..n).filter(|&c| c != ids[qi]).collect();
                others.sort_by(|&x, &y| {
                    norm(qi, y)
                        .partial_cmp(&norm(qi, x))
                        .unwrap()
                        .then(x.cmp(&y))
                });
                let keep = match sel {
                    Selection::TopK(Some(k)) => k - 1,
                    Selection::Threshold(tau) => {
                        let total: f64 = (0..n).map(|c| norm(qi, c)).sum();
                        let mut m = norm(qi, ids[qi]);
                        others
                            .iter()
                            .take_while(|&&c| {
                                margin = margin.min((m - tau * total).abs());
                                let go = m < tau * total;
                                m += norm(qi, c);
                                go
                            })
                            .count()
                    }
                    Selection::TopK(None) => unreachable!(),
                };
                if let (Some(&last), Some(&next)) =
                    (others.get(keep.wrapping_sub(1)), others.get(keep))
                {
                    margin = margin.min(norm(qi, last) - norm(qi, next));
                }
                others[..keep]
                    .iter()
                    .for_each(|&c| allowed[g * s + qi][c] = true);
            } else {
                for c in 0..n {
                    total += norm(qi, c);
                    if c == ids[qi] {
                        mass += norm(qi, c)
                    } else {
                        candidates.push((norm(qi, c), qi, c))
                    }
                }
            }
        }
        if scope == Scope::HeadGlobal {
            candidates.sort_by(|x, y| {
                y.0.partial_cmp(&x.0)
                    .unwrap()
                    .then((x.1 * n + x.2).cmp(&(y.1 * n + y.2)))
            });
            let Selection::Threshold(tau) = sel else {
                unreachable!()
            };
            let mut last_kept = f64::INFINITY;
            for (score, qi, c) in candidates {
                margin = margin.min((mass - tau * total).abs());
                if mass >= tau * total {
                    // the first candidate left out against the last one kept
                    margin = margin.min(last_kept - score);
                    break;
                }
                last_kept = score;
                mass += score;
                allowed[g * s + qi][c] = true;
            }
        }
    }
    let mask = token_mask(b, h, &ids, |g, qi, kc| allowed[g * s + qi][kc])?;
    Ok((masked_attention(q, k, v, &mask)?, margin))
}

/// Selection margins below this (in normalised gate units, where the two implementations differ
/// by about 1e-7 from f32 rounding) leave the choice to rounding.
const TIE_MARGIN: f64 = 1e-6;
/// Fresh draws at most per case: with a global threshold over ~200,000 candidate chunks, most
/// draws hold a near-tie somewhere, so it may take several.
const MAX_DRAWS: usize = 60;

#[test]
fn vmoba_matches_brute_force_for_every_chunk_kind_and_rule() -> Result<()> {
    for grid in GRIDS {
        let s = grid.iter().product();
        let (q, k, v) = random_qkv(2, 2, s, 8)?;
        let opts = VmobaOptions {
            temporal_chunk: 2,
            spatial_chunk: [3, 4],
            st_chunk: [2, 3, 4],
            ..Default::default()
        };
        for kind in [
            ChunkKind::Temporal,
            ChunkKind::Spatial,
            ChunkKind::Spatiotemporal,
        ] {
            let tile = opts.tile(kind, grid_of(grid));
            for (sel, scope) in [
                (Selection::Threshold(0.25), Scope::QueryHead),
                (Selection::Threshold(0.4), Scope::HeadGlobal),
                (Selection::TopK(Some(2)), Scope::QueryHead),
            ] {
                let o = VmobaOptions {
                    selection: sel,
                    scope,
                    ..opts.clone()
                };
                // Fresh inputs until no selection is a near-tie.
                let (mut q, mut k, mut v) = (q.clone(), k.clone(), v.clone());
                let mut reference = vmoba_reference(&q, &k, &v, grid, tile, sel, scope)?;
                for _ in 0..MAX_DRAWS {
                    if reference.1 >= TIE_MARGIN {
                        break;
                    }
                    (q, k, v) = random_qkv(2, 2, s, 8)?;
                    reference = vmoba_reference(&q, &k, &v, grid, tile, sel, scope)?;
                }
                assert!(
                    reference.1 >= TIE_MARGIN,
                    "{grid:?} {kind} {sel:?} {scope:?}: every draw had a near-tie ({:e})",
                    reference.1
                );
                let ours = vmoba_attention(&q, &k, &v, grid_of(grid), kind, &o)?;
                let err = rel(&ours.out, &reference.0);
                assert!(err < 1e-5, "{grid:?} {kind} {sel:?} {scope:?}: {err:e}");
                assert!(ours.density()? < 1.0, "{kind} {sel:?}: nothing skipped");
            }
        }
    }
    Ok(())
}

/// The DiT passes q, k, v as strided views of [B, S, H, D]; every method accepts them.
#[test]
fn methods_accept_strided_views() -> Result<()> {
    let g = grid_of([5, 6, 10]);
    let r = || {
        Tensor::randn(0f32, 1.0, (2, g.len(), 3, 8), &Device::Cpu)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    let (q, k, v, gate) = (r(), r(), r(), r());
    assert!(!q.is_contiguous());
    let (qc, kc, vc, gc) = [&q, &k, &v, &gate].map(|t| t.contiguous().unwrap()).into();
    let vsa = VsaOptions {
        sparsity: 0.5,
        ..Default::default()
    };
    let a = vsa_attention(&q, &k, &v, Some(&gate), g, &vsa)?.out;
    assert!(rel(&a, &vsa_attention(&qc, &kc, &vc, Some(&gc), g, &vsa)?.out) < 1e-6);
    let opts = VmobaOptions {
        st_chunk: [2, 3, 4],
        ..Default::default()
    };
    let a = vmoba_attention(&q, &k, &v, g, ChunkKind::Spatiotemporal, &opts)?.out;
    assert!(
        rel(
            &a,
            &vmoba_attention(&qc, &kc, &vc, g, ChunkKind::Spatiotemporal, &opts)?.out
        ) < 1e-6
    );
    let plan = sparse::sparsed::sparsed_plan(&q, &k, &SparsedOptions::default())?;
    let other = sparse::sparsed::sparsed_plan(&qc, &kc, &SparsedOptions::default())?;
    assert_eq!(*plan.host_mask()?, *other.host_mask()?);
    Ok(())
}

#[test]
fn keep_everything_equals_dense() -> Result<()> {
    let grid = [5, 6, 10];
    let g = grid_of(grid);
    let (q, k, v) = random_qkv(2, 2, g.len(), 8)?;
    let reference = dense(&q, &k, &v);
    let vsa = vsa_attention(
        &q,
        &k,
        &v,
        None,
        g,
        &VsaOptions {
            sparsity: 0.0,
            ..Default::default()
        },
    )?;
    assert!(rel(&vsa.out, &reference) < 1e-5);
    assert_eq!(vsa.plan.density()?, 1.0);
    for kind in [
        ChunkKind::Temporal,
        ChunkKind::Spatial,
        ChunkKind::Spatiotemporal,
    ] {
        let opts = VmobaOptions {
            selection: Selection::TopK(Some(10_000)),
            st_chunk: [2, 3, 4],
            ..Default::default()
        };
        let out = vmoba_attention(&q, &k, &v, g, kind, &opts)?;
        assert!(rel(&out.out, &reference) < 1e-5, "{kind}");
        assert_eq!(out.density()?, 1.0);
    }
    // PARO at density 1 and SparseD with select 1 through the router, after their dense steps.
    let paro = {
        let recorder = ParoRecorder::new(
            g,
            ParoOptions {
                density: 1.0,
                block: 16,
                step_groups: 1,
            },
        )
        .unwrap();
        recorder.attend(&call(&q, &k, &v, g, 0, 0, 1))?;
        Arc::new(recorder.finish().unwrap())
    };
    let methods: [Arc<dyn AttentionMethod>; 3] = [
        Arc::new(Paro::new(paro, None)),
        Arc::new(
            Sparsed::new(SparsedOptions {
                select: 1.0,
                block: 16,
            })
            .unwrap(),
        ),
        Arc::new(sparse::Dense),
    ];
    for method in methods {
        let name = method.name();
        let router =
            AttentionRouter::new(AttentionSchedule::new(method).dense_steps(StepCount::Steps(1)));
        for step in 0..3 {
            let out = router.attend(&call(&q, &k, &v, g, 0, step, 3))?;
            assert!(rel(&out, &reference) < 1e-5, "{name} step {step}");
        }
        assert!((router.report()?.overall() - 1.0).abs() < 1e-12, "{name}");
    }
    Ok(())
}

fn call<'a>(
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    grid: TokenGrid,
    layer: usize,
    step: usize,
    num_steps: usize,
) -> AttentionCall<'a> {
    AttentionCall {
        q,
        k,
        v,
        gate: None,
        grid,
        site: CallSite {
            layer,
            step: Step::new(step, num_steps),
        },
        first_head: 0,
    }
}

#[test]
fn vsa_and_vmoba_gradients_match_the_reference_autograd() -> Result<()> {
    let grid = [5, 6, 10];
    let g = grid_of(grid);
    let (q, k, v) = random_qkv(2, 2, g.len(), 8)?;
    let gate = Tensor::randn(0f32, 1.0, (2, 2, g.len(), 8), &Device::Cpu)?;
    let weights = Tensor::randn(0f32, 1.0, (2, 2, g.len(), 8), &Device::Cpu)?;
    type Attn<'a> = Box<dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'a>;
    let grads = |f: &Attn| -> Result<Vec<Tensor>> {
        let vars = [&q, &k, &v, &gate].map(|t| Var::from_tensor(t).unwrap());
        let out = f(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            vars[3].as_tensor(),
        )?;
        let store = (out * &weights)?.sum_all()?.backward()?;
        Ok(vars
            .iter()
            .map(|x| {
                store
                    .get(x.as_tensor())
                    .cloned()
                    .unwrap_or_else(|| x.zeros_like().unwrap())
            })
            .collect())
    };
    let opts = VsaOptions {
        sparsity: 0.75,
        ..Default::default()
    };
    let vopts = VmobaOptions {
        selection: Selection::Threshold(0.3),
        ..Default::default()
    };
    let cases: Vec<(&str, Attn, Attn)> = vec![
        (
            "vsa",
            Box::new(|q, k, v, gt| Ok(vsa_attention(q, k, v, Some(gt), g, &opts)?.out)),
            Box::new(|q, k, v, gt| vsa_reference(q, k, v, Some(gt), grid, 0.75)),
        ),
        (
            "vmoba",
            Box::new(|q, k, v, _| Ok(vmoba_attention(q, k, v, g, ChunkKind::Spatial, &vopts)?.out)),
            Box::new(|q, k, v, _| {
                vmoba_reference(
                    q,
                    k,
                    v,
                    grid,
                    vopts.tile(ChunkKind::Spatial, g),
                    vopts.selection,
                    Scope::QueryHead,
                )
                .map(|(out, _margin)| out)
            }),
        ),
    ];
    for (name, ours, reference) in &cases {
        let (a, b) = (grads(ours)?, grads(reference)?);
        for (which, (x, y)) in ["q", "k", "v", "gate"].iter().zip(a.iter().zip(&b)) {
            let err = rel(x, y);
            assert!(err < 1e-4, "{name} d{which}: {err:e}");
        }
        assert!(
            a[0].abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            "{name}: zero dq"
        );
    }
    Ok(())
}

/// Queries and keys that only match tokens sharing all coordinates but one: attention is
/// local along that axis, and PARO must pick an order that makes the axis innermost.
#[test]
fn paro_picks_the_order_that_makes_the_local_axis_contiguous() -> Result<()> {
    let grid = TokenGrid::new(8, 4, 4);
    for axis in 0..3 {
        let dims = grid.dims();
        let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        let codes = dims[others[0]] * dims[others[1]];
        let mut x = vec![0f32; grid.len() * codes];
        for t in 0..dims[0] {
            for h in 0..dims[1] {
                for w in 0..dims[2] {
                    let pos = [t, h, w];
                    let code = pos[others[0]] * dims[others[1]] + pos[others[1]];
                    x[grid.index(t, h, w) * codes + code] = 8.0;
                }
            }
        }
        let x = Tensor::from_vec(x, (1, 1, grid.len(), codes), &Device::Cpu)?;
        let recorder = ParoRecorder::new(
            grid,
            ParoOptions {
                density: 0.125,
                block: 8,
                step_groups: 1,
            },
        )
        .unwrap();
        recorder.attend(&call(&x, &x, &x, grid, 0, 0, 1))?;
        let calibration = recorder.finish().unwrap();
        let order = calibration.order(0, 0);
        assert_eq!(
            order.innermost(),
            axis,
            "local along axis {axis}: picked {order}"
        );
    }
    Ok(())
}

#[test]
fn paro_calibration_round_trips_through_a_file_and_runs_sparse() -> Result<()> {
    let g = grid_of([5, 6, 10]);
    let (q, k, v) = random_qkv(1, 2, g.len(), 8)?;
    let recorder = ParoRecorder::new(
        g,
        ParoOptions {
            density: 0.3,
            block: 16,
            step_groups: 2,
        },
    )
    .unwrap();
    for step in 0..4 {
        for layer in 0..2 {
            recorder.attend(&call(&q, &k, &v, g, layer, step, 4))?;
        }
    }
    let calibration = recorder.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paro.safetensors");
    calibration.save(&path).unwrap();
    let loaded = sparse::paro::ParoCalibration::load(&path).unwrap();
    assert_eq!(loaded, calibration);
    let plan = loaded.plan(1, 1, 2, 0..2)?;
    assert!(
        plan.density()? > 0.25 && plan.density()? < 0.5,
        "density {}",
        plan.density()?
    );
    let mask = plan_token_mask(&plan)?;
    let (q2, k2, v2) = random_qkv(2, 2, g.len(), 8)?;
    let out = sparse::block_sparse_attention(&q2, &k2, &v2, &plan)?;
    assert!(rel(&out, &masked_attention(&q2, &k2, &v2, &mask)?) < 1e-5);
    // A rank of a sequence-parallel run plans only its heads: head 1 alone attends as it does
    // in the plan of both.
    let head1 = |t: &Tensor| t.narrow(1, 1, 1);
    let one = loaded.plan(1, 1, 2, 1..2)?;
    let alone = sparse::block_sparse_attention(&head1(&q2)?, &head1(&k2)?, &head1(&v2)?, &one)?;
    assert!(rel(&alone, &head1(&out)?) < 1e-6);
    assert!(loaded.plan(1, 1, 2, 1..3).is_err());
    assert!(sparse::paro::ParoCalibration::load(dir.path()).is_err());
    Ok(())
}

#[test]
fn router_follows_dense_steps_and_layers_and_cycles_vmoba_chunks() -> Result<()> {
    let g = grid_of([6, 6, 8]);
    let (q, k, v) = random_qkv(1, 2, g.len(), 8)?;
    let schedule = AttentionSchedule::of(
        Vmoba::new(VmobaOptions {
            st_chunk: [2, 3, 4],
            ..Default::default()
        })
        .unwrap(),
    )
    .dense_steps(StepCount::Fraction(0.5))
    .dense_layers(LayerSet::parse("0").unwrap());
    let router = AttentionRouter::new(schedule);
    for step in 0..4 {
        for layer in 0..4 {
            let out = router.attend(&call(&q, &k, &v, g, layer, step, 4))?;
            let exact = rel(&out, &dense(&q, &k, &v)) < 1e-5;
            assert_eq!(exact, step < 2 || layer == 0, "step {step} layer {layer}");
        }
    }
    let per_layer = router.report()?.layer_densities();
    assert_eq!(per_layer[0], 1.0);
    assert!(per_layer[1..].iter().all(|&d| d < 1.0), "{per_layer:?}");
    // layers 1, 2, 3 are the first, second and third sparse layers: temporal, spatial, 3D
    let opts = VmobaOptions {
        st_chunk: [2, 3, 4],
        ..Default::default()
    };
    let mut expect = Vec::new();
    for kind in [
        ChunkKind::Temporal,
        ChunkKind::Spatial,
        ChunkKind::Spatiotemporal,
    ] {
        expect.push(vmoba_attention(&q, &k, &v, g, kind, &opts)?.out);
    }
    for (layer, e) in (1..4).zip(&expect) {
        assert!(
            rel(&router.attend(&call(&q, &k, &v, g, layer, 3, 4))?, e) < 1e-6,
            "layer {layer}"
        );
    }
    Ok(())
}

#[test]
fn sparsed_freezes_masks_at_the_last_dense_step() -> Result<()> {
    let g = grid_of([4, 4, 4]);
    let opts = SparsedOptions {
        select: 0.25,
        block: 8,
    };
    let router = AttentionRouter::new(
        AttentionSchedule::of(Sparsed::new(opts.clone()).unwrap()).dense_steps(StepCount::Steps(2)),
    );
    let inputs: Vec<_> = (0..4)
        .map(|_| random_qkv(1, 2, g.len(), 8).unwrap())
        .collect();
    for (step, (q, k, v)) in inputs.iter().enumerate() {
        let out = router.attend(&call(q, k, v, g, 0, step, 4))?;
        if step < 2 {
            assert!(rel(&out, &dense(q, k, v)) < 1e-5);
        } else {
            // masks from step 1's exact attention, not from this step's
            let frozen = sparse::sparsed::sparsed_plan(&inputs[1].0, &inputs[1].1, &opts)?;
            let expected = masked_attention(q, k, v, &plan_token_mask(&frozen)?)?;
            assert!(rel(&out, &expected) < 1e-5, "step {step}");
            let fresh = sparse::sparsed::sparsed_plan(q, k, &opts)?;
            assert_ne!(
                *fresh.host_mask()?,
                *frozen.host_mask()?,
                "inputs too similar to tell the masks apart"
            );
        }
    }
    assert!((router.report()?.overall() - (2.0 + 2.0 * 0.25) / 4.0).abs() < 1e-9);
    Ok(())
}

#[test]
fn bad_options_are_rejected_with_the_fix() {
    let err = VsaOptions {
        sparsity: 1.0,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("outside [0, 1)"), "{err}");
    let opts = VmobaOptions {
        kind: Some(ChunkKind::Temporal),
        temporal_chunk: 9,
        ..Default::default()
    };
    let err = opts
        .validate(Some(TokenGrid::new(5, 6, 10)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than the token grid"), "{err}");
    let (q, k, v) = random_qkv(1, 1, 20, 4).unwrap();
    let err = vsa_attention(
        &q,
        &k,
        &v,
        None,
        TokenGrid::new(2, 2, 2),
        &VsaOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("do not fill the grid"), "{err}");
    assert!(StepCount::parse("1.5").is_err() && LayerSet::parse("3-1").is_err());
    assert_eq!(StepCount::parse("0.2").unwrap().resolve(50), 10);
    let _ = (DType::F32, AxisOrder::Thw);
}

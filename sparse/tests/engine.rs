//! The block-sparse engine against dense attention under the same token mask.

mod common;

use candle_core::{Device, Result, Tensor, Var};
use common::*;
use sparse::{
    block_sparse_attention, AxisOrder, BlockLayout, BlockMask, Permutation, SparsePlan, TokenGrid,
};
use std::sync::Arc;

/// A plan with random key-block lists (each query block keeps at least one key block).
fn random_plan(
    b: usize,
    h: usize,
    ql: Arc<BlockLayout>,
    kl: Arc<BlockLayout>,
    rng: &mut Lcg,
) -> Result<SparsePlan> {
    let (nq, nk) = (ql.num_blocks(), kl.num_blocks());
    let lists: Vec<Vec<u32>> = (0..b * h * nq)
        .map(|_| {
            let mut list: Vec<u32> = (0..nk as u32).filter(|_| rng.below(3) == 0).collect();
            if list.is_empty() {
                list.push(rng.below(nk) as u32);
            }
            list
        })
        .collect();
    SparsePlan::new(b, h, ql, kl, BlockMask::from_lists(b * h, nq, nk, &lists)?)
}

fn layouts(
    grid: TokenGrid,
    heads: usize,
) -> Vec<(&'static str, Arc<BlockLayout>, Arc<BlockLayout>)> {
    let cubes = Arc::new(BlockLayout::tiled(grid, [4, 4, 4]));
    let per_head: Vec<Permutation> = (0..heads)
        .map(|h| Permutation::axis_order(grid, AxisOrder::ALL[(h * 5 + 1) % 6]))
        .collect();
    let paro = Arc::new(BlockLayout::per_head(per_head, 16));
    let chunks = Arc::new(BlockLayout::tiled(grid, [2, grid.h, grid.w]));
    vec![
        ("cubes", cubes.clone(), cubes),
        ("per-head orders", paro.clone(), paro),
        (
            "singleton queries x chunks",
            Arc::new(BlockLayout::singletons(grid.len())),
            chunks,
        ),
    ]
}

#[test]
fn sparse_engine_equals_dense_under_the_plan_mask() -> Result<()> {
    let mut rng = Lcg(7);
    for grid in [TokenGrid::new(5, 3, 5), TokenGrid::new(9, 7, 13)] {
        let (b, h, d) = (2, 3, 16);
        let (q, k, v) = random_qkv(b, h, grid.len(), d)?;
        for (name, ql, kl) in layouts(grid, h) {
            let plan = Arc::new(random_plan(b, h, ql, kl, &mut rng)?);
            let out = block_sparse_attention(&q, &k, &v, &plan)?;
            let reference = masked_attention(&q, &k, &v, &plan_token_mask(&plan)?)?;
            let err = rel(&out, &reference);
            assert!(
                err < 1e-5,
                "{grid} {name}: rel err {err:e} (density {:.3})",
                plan.density()?
            );
            assert!(
                plan.density()? < 0.8,
                "{name}: random plan should be sparse"
            );
        }
    }
    Ok(())
}

#[test]
fn full_plan_equals_dense_attention() -> Result<()> {
    let grid = TokenGrid::new(5, 3, 5);
    let (q, k, v) = random_qkv(2, 2, grid.len(), 12)?;
    let plan = Arc::new(SparsePlan::dense(
        2,
        2,
        Arc::new(BlockLayout::tiled(grid, [4, 4, 4])),
    ));
    let err = rel(
        &block_sparse_attention(&q, &k, &v, &plan)?,
        &sparse::dense::attention(&q, &k, &v)?,
    );
    assert!(err < 1e-5, "{err:e}");
    Ok(())
}

/// The backward runs on detached copies of the forward's tensors, so the gradients it returns
/// carry no graph: one that did would keep every intermediate of the backward (the dense
/// path's per-chunk scores) alive until the step ends. Both backward paths: every block kept
/// (matrix products over query chunks) and random key-block lists (the block engine).
#[test]
fn gradients_carry_no_graph() -> Result<()> {
    let grid = TokenGrid::new(5, 3, 5);
    let (b, h, d) = (1, 2, 8);
    let layout = Arc::new(BlockLayout::tiled(grid, [4, 4, 4]));
    let mut rng = Lcg(5);
    let plans = [
        ("every block", SparsePlan::dense(b, h, layout.clone())),
        (
            "random lists",
            random_plan(b, h, layout.clone(), layout, &mut rng)?,
        ),
    ];
    for (name, plan) in plans {
        let (q, k, v) = random_qkv(b, h, grid.len(), d)?;
        let vars = [
            Var::from_tensor(&q)?,
            Var::from_tensor(&k)?,
            Var::from_tensor(&v)?,
        ];
        let [vq, vk, vv] = &vars;
        let out = block_sparse_attention(vq, vk, vv, &Arc::new(plan))?;
        let store = out.sum_all()?.backward()?;
        for (input, var) in ["q", "k", "v"].iter().zip(&vars) {
            let grad = store.get(var).expect("a gradient");
            assert!(
                !grad.track_op(),
                "{name}: the gradient of {input} carries a graph"
            );
        }
    }
    Ok(())
}

#[test]
fn gradients_match_autograd_of_the_masked_reference() -> Result<()> {
    let mut rng = Lcg(11);
    let grid = TokenGrid::new(5, 3, 5);
    let (b, h, d) = (2, 2, 8);
    for (name, ql, kl) in layouts(grid, h) {
        let plan = Arc::new(random_plan(b, h, ql, kl, &mut rng)?);
        let (q, k, v) = random_qkv(b, h, grid.len(), d)?;
        let weights = Tensor::randn(0f32, 1.0, (b, h, grid.len(), d), &Device::Cpu)?;
        let grads =
            |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| -> Result<Vec<Tensor>> {
                let (vq, vk, vv) = (
                    Var::from_tensor(&q)?,
                    Var::from_tensor(&k)?,
                    Var::from_tensor(&v)?,
                );
                let loss =
                    (f(vq.as_tensor(), vk.as_tensor(), vv.as_tensor())? * &weights)?.sum_all()?;
                let store = loss.backward()?;
                Ok([vq, vk, vv]
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        store
                            .get(x.as_tensor())
                            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"))
                            .clone()
                    })
                    .collect())
            };
        let mask = plan_token_mask(&plan)?;
        let ours = grads(&|q, k, v| block_sparse_attention(q, k, v, &plan))?;
        let reference = grads(&|q, k, v| masked_attention(q, k, v, &mask))?;
        for (which, (a, r)) in ["dq", "dk", "dv"].iter().zip(ours.iter().zip(&reference)) {
            let err = rel(a, r);
            assert!(err < 1e-4, "{name} {which}: rel err {err:e}");
        }
    }
    Ok(())
}

#[test]
fn mismatched_shapes_are_rejected() -> Result<()> {
    let grid = TokenGrid::new(2, 2, 2);
    let plan = Arc::new(SparsePlan::dense(
        1,
        1,
        Arc::new(BlockLayout::natural(grid.len(), 4)),
    ));
    let (q, k, v) = random_qkv(1, 2, grid.len(), 4)?;
    let err = block_sparse_attention(&q, &k, &v, &plan)
        .unwrap_err()
        .to_string();
    assert!(err.contains("plan is for"), "{err}");
    Ok(())
}

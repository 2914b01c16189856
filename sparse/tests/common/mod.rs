//! Test-only references: dense attention under an explicit token mask, built with plain
//! differentiable candle ops, and helpers for random inputs.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, D};
use sparse::SparsePlan;

/// Dense attention where `mask[b, h, i, j] = 1` allows query i to see key j (f32 0/1 tensor).
pub fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    // Disallowed pairs get a large negative score; every row keeps at least one key.
    let scores = (scores + ((mask - 1.0)? * 1e30)?)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
}

/// The token-level mask a plan describes, expanded naively: `[B, H, S, S]` of 0/1.
pub fn plan_token_mask(plan: &SparsePlan) -> Result<Tensor> {
    let s = plan.q_layout.tokens();
    let host = plan.host_mask()?;
    let mut mask = vec![0f32; plan.batch * plan.heads * s * s];
    for b in 0..plan.batch {
        for h in 0..plan.heads {
            let g = b * plan.heads + h;
            let qo = plan.q_layout.order(h).order();
            let ko = plan.k_layout.order(h).order();
            for qb in 0..plan.q_layout.num_blocks() {
                for &kb in host.keys(g, qb) {
                    for qs in plan.q_layout.block(qb) {
                        for ks in plan.k_layout.block(kb as usize) {
                            mask[(g * s + qo[qs] as usize) * s + ko[ks] as usize] = 1.0;
                        }
                    }
                }
            }
        }
    }
    Tensor::from_vec(mask, (plan.batch, plan.heads, s, s), &Device::Cpu)
}

/// Random `[b, h, s, d]` f32 tensors q, k, v.
pub fn random_qkv(b: usize, h: usize, s: usize, d: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let r = || Tensor::randn(0f32, 1.0, (b, h, s, d), &Device::Cpu);
    Ok((r()?, r()?, r()?))
}

/// Relative L2 error of `a` against `b`.
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    vdit_core::metrics::relative_l2(
        &a.to_dtype(DType::F32).unwrap(),
        &b.to_dtype(DType::F32).unwrap(),
    )
    .unwrap()
}

/// A small deterministic pseudo-random generator for building random plans.
pub struct Lcg(pub u64);

impl Lcg {
    /// Next value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Box id of every natural token when `grid` (t, h, w) is cut into boxes of `tile`, boxes
/// numbered t-major: computed directly from coordinates.
pub fn box_ids(grid: [usize; 3], tile: [usize; 3]) -> (Vec<usize>, usize) {
    let n = [0, 1, 2].map(|a| grid[a].div_ceil(tile[a]));
    let mut ids = Vec::new();
    for t in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                ids.push(((t / tile[0]) * n[1] + h / tile[1]) * n[2] + w / tile[2]);
            }
        }
    }
    (ids, n[0] * n[1] * n[2])
}

/// `[boxes, S]` matrix averaging the tokens of each box.
pub fn pooling_matrix(ids: &[usize], boxes: usize) -> Result<Tensor> {
    let mut counts = vec![0f32; boxes];
    ids.iter().for_each(|&i| counts[i] += 1.0);
    let mut m = vec![0f32; boxes * ids.len()];
    for (t, &i) in ids.iter().enumerate() {
        m[i * ids.len() + t] = 1.0 / counts[i];
    }
    Tensor::from_vec(m, (boxes, ids.len()), &Device::Cpu)
}

/// `[B, H, S, S]` mask from per-(group, query token) sets of allowed key boxes.
pub fn token_mask(
    b: usize,
    h: usize,
    key_ids: &[usize],
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> Result<Tensor> {
    let s = key_ids.len();
    let mut m = vec![0f32; b * h * s * s];
    for g in 0..b * h {
        for q in 0..s {
            for (k, &kid) in key_ids.iter().enumerate() {
                if allowed(g, q, kid) {
                    m[(g * s + q) * s + k] = 1.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, h, s, s), &Device::Cpu)
}

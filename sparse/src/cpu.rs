//! The exact block-sparse attention engine on the CPU (f32).
//!
//! Only the key blocks a plan lists are read and multiplied: work falls with density. Keys and
//! values are first gathered into the key layout's order so every key block is a contiguous run;
//! queries are read through the query layout and outputs written back in natural order.

use crate::plan::{BlockMask, SparsePlan};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shape of contiguous `[batch, heads, tokens, head_dim]` buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Query tokens.
    pub tokens: usize,
    /// Key (and value) tokens.
    pub k_tokens: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl Dims {
    fn groups(&self) -> usize {
        self.batch * self.heads
    }

    /// Row of (group, token) in a `[B, H, S, D]` buffer.
    fn row(&self, group: usize, token: usize) -> std::ops::Range<usize> {
        let start = (group * self.tokens + token) * self.head_dim;
        start..start + self.head_dim
    }

    /// Row of key (group, token) in a `[B, H, Sk, D]` buffer.
    fn k_row(&self, group: usize, token: usize) -> std::ops::Range<usize> {
        let start = (group * self.k_tokens + token) * self.head_dim;
        start..start + self.head_dim
    }

    /// Row of (group, token) in a `[B, S, H, D]` buffer (the output layout).
    fn bshd_row(&self, group: usize, token: usize) -> std::ops::Range<usize> {
        let (b, h) = (group / self.heads, group % self.heads);
        let start = ((b * self.tokens + token) * self.heads + h) * self.head_dim;
        start..start + self.head_dim
    }
}

/// Output and log-sum-exp of a forward pass.
pub struct Forward {
    /// `[B, S, H, D]` attention output, natural token order.
    pub out: Vec<f32>,
    /// `[B, H, S]` log-sum-exp of the scaled scores over each query's keys.
    pub lse: Vec<f32>,
}

/// Gradients of a backward pass, natural order, `[B, H, S, D]` each.
pub struct Gradients {
    /// d loss / d q.
    pub dq: Vec<f32>,
    /// d loss / d k.
    pub dk: Vec<f32>,
    /// d loss / d v.
    pub dv: Vec<f32>,
}

/// Runs `f(item)` for every item in `0..items` on all cores.
fn parallel_for(items: usize, f: impl Fn(usize) + Sync) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.max(1));
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= items {
                    break;
                }
                f(item);
            });
        }
    });
}

/// A buffer that worker threads write to at disjoint positions.
struct SharedOut(*mut f32, usize);
// SAFETY: every use writes disjoint index ranges from different threads (see call sites).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(buf: &mut [f32]) -> Self {
        Self(buf.as_mut_ptr(), buf.len())
    }

    /// # Safety
    /// No two threads may write overlapping ranges, and nothing may read them concurrently.
    // Handing out `&mut` from `&self` is the point: workers write disjoint rows of one buffer.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(range.end <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `src` rows gathered into the key layout's order, per group: `out[g][slot] = src[g][order[slot]]`.
fn gather_keys(plan: &SparsePlan, dims: Dims, src: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for g in 0..dims.groups() {
        let order = plan.k_layout.order(g % dims.heads).order();
        for (slot, &tok) in order.iter().enumerate() {
            out[dims.k_row(g, slot)].copy_from_slice(&src[dims.k_row(g, tok as usize)]);
        }
    }
    out
}

/// Inverse of [`gather_keys`]: rows in key-layout order back to natural order.
fn scatter_keys(plan: &SparsePlan, dims: Dims, src: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for g in 0..dims.groups() {
        let order = plan.k_layout.order(g % dims.heads).order();
        for (slot, &tok) in order.iter().enumerate() {
            out[dims.k_row(g, tok as usize)].copy_from_slice(&src[dims.k_row(g, slot)]);
        }
    }
    out
}

/// Exact softmax attention of every query over the key blocks `mask` lists for it; `q`, `k`,
/// `v` are `[B, H, S, D]`.
pub fn forward(
    plan: &SparsePlan,
    mask: &BlockMask,
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
) -> Forward {
    let d = dims.head_dim;
    let kp = gather_keys(plan, dims, k);
    let vp = gather_keys(plan, dims, v);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; dims.groups() * dims.tokens];
    let out_w = SharedOut::new(&mut out);
    let lse_w = SharedOut::new(&mut lse);
    let q_blocks = plan.q_layout.num_blocks();
    parallel_for(dims.groups() * q_blocks, |item| {
        let (g, qb) = (item / q_blocks, item % q_blocks);
        let q_order = plan.q_layout.order(g % dims.heads).order();
        let tokens: Vec<usize> = plan
            .q_layout
            .block(qb)
            .map(|s| q_order[s] as usize)
            .collect();
        let n = tokens.len();
        let mut m = vec![f32::NEG_INFINITY; n];
        let mut l = vec![0f32; n];
        let mut acc = vec![0f32; n * d];
        let mut scores = Vec::new();
        for &kb in mask.keys(g, qb) {
            let slots = plan.k_layout.block(kb as usize);
            scores.clear();
            scores.resize(slots.len(), 0.0);
            for (r, &tok) in tokens.iter().enumerate() {
                let qrow = &q[dims.row(g, tok)];
                let mut block_max = f32::NEG_INFINITY;
                for (j, slot) in slots.clone().enumerate() {
                    let s = dot(qrow, &kp[dims.k_row(g, slot)]) * scale;
                    scores[j] = s;
                    block_max = block_max.max(s);
                }
                let m_new = m[r].max(block_max);
                let alpha = (m[r] - m_new).exp();
                let row_acc = &mut acc[r * d..(r + 1) * d];
                if alpha != 1.0 {
                    row_acc.iter_mut().for_each(|a| *a *= alpha);
                }
                let mut sum = 0f32;
                for (j, slot) in slots.clone().enumerate() {
                    let p = (scores[j] - m_new).exp();
                    sum += p;
                    axpy(p, &vp[dims.k_row(g, slot)], row_acc);
                }
                l[r] = l[r] * alpha + sum;
                m[r] = m_new;
            }
        }
        for (r, &tok) in tokens.iter().enumerate() {
            // SAFETY: the query blocks of one group partition its tokens, and groups are
            // disjoint, so each (group, token) row is written by exactly one item.
            let row = unsafe { out_w.slice(dims.bshd_row(g, tok)) };
            let (lr, mr) = (l[r], m[r]);
            if lr > 0.0 {
                row.iter_mut()
                    .zip(&acc[r * d..(r + 1) * d])
                    .for_each(|(o, a)| *o = a / lr);
            }
            let at = g * dims.tokens + tok;
            // SAFETY: as above, one writer per (group, token).
            let lse_row = unsafe { lse_w.slice(at..at + 1) };
            lse_row[0] = if lr > 0.0 {
                mr + lr.ln()
            } else {
                f32::NEG_INFINITY
            };
        }
    });
    Forward { out, lse }
}

/// Gradients of [`forward`] given its log-sum-exp `lse` and `delta = rowsum(dout * out)` (both
/// `[B, H, S]`) and the output gradient `dout` (`[B, S, H, D]`); the gradients are `[B, H, S, D]`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    plan: &SparsePlan,
    mask: &BlockMask,
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    delta: &[f32],
    dout: &[f32],
    scale: f32,
) -> Gradients {
    let kp = gather_keys(plan, dims, k);
    let vp = gather_keys(plan, dims, v);
    let q_blocks = plan.q_layout.num_blocks();
    let k_blocks = plan.k_layout.num_blocks();

    // dQ: one item per (group, query block); rows written once.
    let mut dq = vec![0f32; q.len()];
    let dq_w = SharedOut::new(&mut dq);
    parallel_for(dims.groups() * q_blocks, |item| {
        let (g, qb) = (item / q_blocks, item % q_blocks);
        let q_order = plan.q_layout.order(g % dims.heads).order();
        for slot_q in plan.q_layout.block(qb) {
            let tok = q_order[slot_q] as usize;
            let i = g * dims.tokens + tok;
            let (qrow, dorow) = (&q[dims.row(g, tok)], &dout[dims.bshd_row(g, tok)]);
            // SAFETY: as in `forward`, each (group, token) row belongs to one item.
            let dqrow = unsafe { dq_w.slice(dims.row(g, tok)) };
            for &kb in mask.keys(g, qb) {
                for slot in plan.k_layout.block(kb as usize) {
                    let krow = &kp[dims.k_row(g, slot)];
                    let p = (dot(qrow, krow) * scale - lse[i]).exp();
                    let ds = p * (dot(dorow, &vp[dims.k_row(g, slot)]) - delta[i]);
                    axpy(ds * scale, krow, dqrow);
                }
            }
        }
    });

    // dK, dV in key-layout order: one item per (group, key block) over the transposed mask.
    let transposed = mask.transpose();
    let mut dkp = vec![0f32; k.len()];
    let mut dvp = vec![0f32; v.len()];
    let dk_w = SharedOut::new(&mut dkp);
    let dv_w = SharedOut::new(&mut dvp);
    parallel_for(dims.groups() * k_blocks, |item| {
        let (g, kb) = (item / k_blocks, item % k_blocks);
        let q_order = plan.q_layout.order(g % dims.heads).order();
        for slot in plan.k_layout.block(kb) {
            let (krow, vrow) = (&kp[dims.k_row(g, slot)], &vp[dims.k_row(g, slot)]);
            // SAFETY: key blocks of one group partition its slots; one item per (group, block).
            let (dkrow, dvrow) = unsafe {
                (
                    dk_w.slice(dims.k_row(g, slot)),
                    dv_w.slice(dims.k_row(g, slot)),
                )
            };
            for &qb in transposed.keys(g, kb) {
                for slot_q in plan.q_layout.block(qb as usize) {
                    let tok = q_order[slot_q] as usize;
                    let i = g * dims.tokens + tok;
                    let (qrow, dorow) = (&q[dims.row(g, tok)], &dout[dims.bshd_row(g, tok)]);
                    let p = (dot(qrow, krow) * scale - lse[i]).exp();
                    axpy(p, dorow, dvrow);
                    let ds = p * (dot(dorow, vrow) - delta[i]);
                    axpy(ds * scale, qrow, dkrow);
                }
            }
        }
    });
    Gradients {
        dq,
        dk: scatter_keys(plan, dims, &dkp),
        dv: scatter_keys(plan, dims, &dvp),
    }
}

//! The backward pass of attention that keeps every key, as matrix products over chunks of
//! query rows: scores and probabilities are recomputed one chunk at a time (never the whole
//! `S x Sk` matrix), and every product is one batched GEMM. With nothing to skip, this beats
//! walking the block lists, and on the GPU it runs on cuBLAS.
//!
//! For `P = softmax(scale · q kᵀ)` and `out = P v`, with `dout` the output's gradient and
//! `delta = rowsum(dout ⊙ out)`:
//!
//! ```text
//! dv = Pᵀ dout
//! dS = P ⊙ (dout vᵀ − delta)
//! dq = scale · dS k
//! dk = scale · dSᵀ q
//! ```

use candle_core::{DType, Result, Tensor, D};

/// Upper bound on the bytes of one chunk's f32 score matrix.
pub(crate) const CHUNK_BYTES: usize = 256 << 20;

/// The gradients `(dq, dk, dv)` of full attention `softmax(scale · q kᵀ) v`, for
/// `q: [B, H, S, D]` and `k, v: [B, H, Sk, D]`, given the output `out` and its gradient `dout`,
/// both `[B, S, H, D]`, over chunks of query rows whose f32 scores take at most `chunk_bytes`
/// (one row at least). The arithmetic is f32; each gradient has its input's dtype. The inputs
/// must be untracked (detached), or every chunk's scores stay referenced by their graph.
pub(crate) fn full_attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    dout: &Tensor,
    scale: f32,
    chunk_bytes: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, s, _) = q.dims4()?;
    let row_bytes = [b, h, k.dim(2)?]
        .iter()
        .fold(4usize, |n, &x| n.saturating_mul(x));
    let rows = (chunk_bytes / row_bytes.max(1)).clamp(1, s.max(1));
    let f32_bhsd = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let (qf, kf, vf) = (f32_bhsd(q)?, f32_bhsd(k)?, f32_bhsd(v)?);
    let dout = f32_bhsd(&dout.transpose(1, 2)?)?;
    let delta = (&dout * out.to_dtype(DType::F32)?.transpose(1, 2)?)?.sum_keepdim(D::Minus1)?;
    let kt = kf.transpose(2, 3)?.contiguous()?;
    let vt = vf.transpose(2, 3)?.contiguous()?;
    let scale = f64::from(scale);
    let mut dq = Vec::with_capacity(s.div_ceil(rows));
    let mut dk = kf.zeros_like()?;
    let mut dv = vf.zeros_like()?;
    for start in (0..s).step_by(rows) {
        let len = rows.min(s - start);
        let qc = qf.narrow(2, start, len)?.contiguous()?;
        let dc = dout.narrow(2, start, len)?.contiguous()?;
        let p = candle_nn::ops::softmax_last_dim(&(qc.matmul(&kt)? * scale)?)?;
        dv = (dv + p.transpose(2, 3)?.matmul(&dc)?)?;
        let ds = (&p
            * dc.matmul(&vt)?
                .broadcast_sub(&delta.narrow(2, start, len)?)?)?;
        dq.push((ds.matmul(&kf)? * scale)?);
        dk = (dk + (ds.transpose(2, 3)?.matmul(&qc)? * scale)?)?;
    }
    Ok((
        Tensor::cat(&dq, 2)?.to_dtype(q.dtype())?,
        dk.to_dtype(k.dtype())?,
        dv.to_dtype(v.dtype())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{self, Dims};
    use crate::layout::BlockLayout;
    use crate::plan::SparsePlan;
    use candle_core::Device;

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1()
    }

    /// On fresh random inputs (queries and keys of different lengths), in one chunk and in
    /// chunks of 5 rows (`chunk_bytes` of 5 score rows; the last chunk shorter), the products
    /// give the block engine's gradients for a plan keeping every block, to 1e-4 relative to
    /// the largest gradient.
    #[test]
    fn matches_the_block_engine_with_every_block_kept() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, s, sk, d) = (2, 3, 37, 29, 16);
        let q = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, h, sk, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, h, sk, d), &dev)?;
        let dout = Tensor::randn(0f32, 1.0, (b, s, h, d), &dev)?;
        let scale = 1.0 / (d as f32).sqrt();
        let plan = SparsePlan::all(
            b,
            h,
            BlockLayout::natural_shared(s, 8),
            BlockLayout::natural_shared(sk, 8),
        );
        let mask = plan.host_mask()?;
        let dims = Dims {
            batch: b,
            heads: h,
            tokens: s,
            k_tokens: sk,
            head_dim: d,
        };
        let (qv, kv, vv) = (values(&q)?, values(&k)?, values(&v)?);
        let fwd = cpu::forward(&plan, &mask, dims, &qv, &kv, &vv, scale);
        let out = Tensor::from_vec(fwd.out.clone(), (b, s, h, d), &dev)?;
        let dout_values = values(&dout)?;
        let delta = values(&(&dout * &out)?.sum(D::Minus1)?.transpose(1, 2)?)?;
        let want = cpu::backward(
            &plan,
            &mask,
            dims,
            &qv,
            &kv,
            &vv,
            &fwd.lse,
            &delta,
            &dout_values,
            scale,
        );
        for rows in [s, 5] {
            let bytes = 4 * b * h * sk * rows;
            let (dq, dk, dv) = full_attention_backward(&q, &k, &v, &out, &dout, scale, bytes)?;
            for (name, got, want) in [
                ("dq", values(&dq)?, &want.dq),
                ("dk", values(&dk)?, &want.dk),
                ("dv", values(&dv)?, &want.dv),
            ] {
                let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let worst = got
                    .iter()
                    .zip(want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 1e-4 * peak,
                    "{name} in chunks of {rows} off by {worst} (peak {peak})"
                );
            }
        }
        Ok(())
    }
}

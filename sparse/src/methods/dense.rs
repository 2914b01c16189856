//! Exact softmax attention: the reference every method reduces to when it keeps everything.

use crate::method::{Attended, AttentionMethod, MethodCall};
use crate::op::ForwardKernel;
use crate::registry::MethodEntry;
use crate::seam::{AttentionCall, SelfAttention};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// Upper bound on the bytes of one chunk of attention scores (f32), so that long sequences
/// never materialise the full `S x S` matrix.
const SCORE_CHUNK_BYTES: usize = 256 << 20;

/// Exact attention `softmax(q kᵀ / sqrt(D)) v` for `q: [B, H, Sq, D]`, `k, v: [B, H, Sk, D]`.
///
/// On CUDA (bf16/f16, head dim 64 or 128) this is the flash kernel with every block kept;
/// elsewhere scores and softmax are computed in f32 in chunks. The result has `q`'s dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_with(q, k, v, ForwardKernel::Auto)
}

/// [`attention`] with the forward kernel family `kernel` on the GPU.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub fn attention_with(q: &Tensor, k: &Tensor, v: &Tensor, kernel: ForwardKernel) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        use crate::layout::BlockLayout;
        use crate::plan::SparsePlan;
        let (b, h, s, d) = q.dims4()?;
        let q_layout = BlockLayout::natural_shared(s, DENSE_BLOCK);
        let k_layout = BlockLayout::natural_shared(k.dim(2)?, DENSE_BLOCK);
        let plan = std::sync::Arc::new(SparsePlan::all(b, h, q_layout, k_layout));
        if crate::cuda::supports(q.dtype(), d, &plan) {
            return crate::op::block_sparse_attention_with(q, k, v, &plan, kernel);
        }
    }
    Ok(attention_with_lse(q, k, v)?.0)
}

/// Query block size of dense attention on the GPU (8 warps of 16 rows).
#[cfg(feature = "cuda")]
const DENSE_BLOCK: usize = 128;

/// Exact attention that also returns the log-sum-exp of the scaled scores, `[B, H, Sq]` f32,
/// which lets partial attentions over disjoint key sets be merged exactly.
pub fn attention_with_lse(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, h, sq, d) = q.dims4()?;
    let sk = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let out_dtype = q.dtype();
    let kt = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let rows_per_chunk = (SCORE_CHUNK_BYTES / (4 * b * h * sk.max(1))).clamp(1, sq.max(1));
    let mut outs = Vec::with_capacity(sq.div_ceil(rows_per_chunk));
    let mut lses = Vec::with_capacity(outs.capacity());
    let mut start = 0;
    while start < sq {
        let len = rows_per_chunk.min(sq - start);
        let qc = q
            .narrow(2, start, len)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        outs.push(exp.matmul(&v)?.broadcast_div(&sum)?);
        lses.push((sum.log()? + max)?.squeeze(D::Minus1)?);
        start += len;
    }
    let out = Tensor::cat(&outs, 2)?.to_dtype(out_dtype)?;
    let lse = Tensor::cat(&lses, 2)?;
    Ok((out, lse))
}

/// The dense method: every query attends to every key.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dense;

/// The dense method by name (no options).
pub const ENTRY: MethodEntry = MethodEntry {
    name: "dense",
    about: "exact attention, the reference",
    options: &[],
    dense_steps: "0",
    dense_layers: "",
    build: |_| Ok(Arc::new(Dense)),
};

impl AttentionMethod for Dense {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    fn attend(&self, call: &MethodCall<'_>) -> Result<Attended> {
        let c = call.call;
        Ok(Attended::dense(attention_with(c.q, c.k, c.v, call.kernel)?))
    }
}

/// Dense attention alone, without a router (tests, references).
impl SelfAttention for Dense {
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor> {
        attention(call.q, call.k, call.v)
    }
}

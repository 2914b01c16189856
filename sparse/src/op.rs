//! Block-sparse attention as a candle operation with a backward pass.

use crate::cpu::{self, Dims};
use crate::plan::SparsePlan;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Exact attention of `q, k, v: [B, H, S, D]` restricted to the key blocks `plan` lists, in
/// natural token order. Differentiable with respect to `q`, `k` and `v`.
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Arc<SparsePlan>,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    if k.dims4()? != (b, h, s, d) || v.dims4()? != (b, h, s, d) {
        candle_core::bail!(
            "block-sparse attention: q {:?}, k {:?}, v {:?} must share one [B, H, S, D] shape",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if (b, h, s) != (plan.batch, plan.heads, plan.q_layout.tokens()) || plan.k_layout.tokens() != s
    {
        candle_core::bail!(
            "block-sparse attention: tensors are B={b} H={h} S={s} but the plan is for B={} H={} S={}",
            plan.batch,
            plan.heads,
            plan.q_layout.tokens()
        )
    }
    let dtype = q.dtype();
    let device = q.device().clone();
    // The CPU engine works on contiguous f32; other devices go through it until they have kernels.
    let prep = |t: &Tensor| {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()
    };
    let op = BlockSparseOp {
        plan: Arc::clone(plan),
        scale: (1.0 / (d as f64).sqrt()) as f32,
        lse: Mutex::new(None),
    };
    let out = prep(q)?.apply_op3(&prep(k)?, &prep(v)?, op)?;
    out.to_dtype(dtype)?.to_device(&device)
}

struct BlockSparseOp {
    plan: Arc<SparsePlan>,
    scale: f32,
    /// Log-sum-exp saved by the forward pass for the backward pass.
    lse: Mutex<Option<Vec<f32>>>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("block-sparse attention expects contiguous f32 inputs"),
    }
}

fn dims_of(l: &Layout) -> Result<Dims> {
    let (batch, heads, tokens, head_dim) = l.shape().dims4()?;
    Ok(Dims {
        batch,
        heads,
        tokens,
        head_dim,
    })
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

impl CustomOp3 for BlockSparseOp {
    fn name(&self) -> &'static str {
        "block-sparse-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(l1)?;
        let fwd = cpu::forward(
            &self.plan,
            dims,
            f32_slice(s1, l1)?,
            f32_slice(s2, l2)?,
            f32_slice(s3, l3)?,
            self.scale,
        );
        *self.lse.lock().expect("lse lock") = Some(fwd.lse);
        Ok((CpuStorage::F32(fwd.out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, heads, tokens, head_dim) = q.dims4()?;
        let dims = Dims {
            batch,
            heads,
            tokens,
            head_dim,
        };
        let (qv, kv, vv) = (vec_of(q)?, vec_of(k)?, vec_of(v)?);
        let lse = match self.lse.lock().expect("lse lock").clone() {
            Some(lse) => lse,
            None => cpu::forward(&self.plan, dims, &qv, &kv, &vv, self.scale).lse,
        };
        let fwd = cpu::Forward {
            out: vec_of(out)?,
            lse,
        };
        let g = cpu::backward(
            &self.plan,
            dims,
            &qv,
            &kv,
            &vv,
            &fwd,
            &vec_of(grad)?,
            self.scale,
        );
        let shape = q.shape();
        let make = |data: Vec<f32>| Tensor::from_vec(data, shape, q.device());
        Ok((Some(make(g.dq)?), Some(make(g.dk)?), Some(make(g.dv)?)))
    }
}

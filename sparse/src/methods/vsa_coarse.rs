//! VSA's coarse branch, attention between mean-pooled cubes, as one graph operation whose
//! gradient reaches q, k and v through the fine stage's backward.
//!
//! The branch reads q, k and v only through their cube means. Differentiated as composed
//! operations, each input would get two gradients (the fine stage's and its means'), and
//! candle adds every gradient into fresh zeros: a full pass over the input each. Here the
//! means are computed outside the graph; the branch enters it as an operation on the fine
//! stage's output (which it does not read), so that autograd runs its backward before the
//! fine stage's, and hands its means' gradients over to that backward, which adds them to its
//! own (see [`MeansGradient`]).

use crate::op::MeansGradient;
use crate::pool::softmax_last;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, D};
use std::sync::Arc;

/// The coarse branch's inputs, outside the graph: the cube means of q, k and v (`[B, H,
/// cubes, D]` f32) and the softmax scale.
pub(crate) struct CubeMeans {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub scale: f64,
}

/// `softmax(scores) @ v_means`, `[B, H, cubes, D]` f32, as an operation on `fine` (the fine
/// stage's output, which orders the backward and is not read); its backward hands the
/// gradients of the cube means to `grads`.
pub(crate) fn coarse_branch(
    fine: &Tensor,
    means: CubeMeans,
    scores: &Tensor,
    grads: Arc<MeansGradient>,
) -> Result<Tensor> {
    let probs = softmax_last(scores)?;
    let value = probs.matmul(&means.v)?.contiguous()?;
    fine.apply_op1(CoarseBranch {
        means,
        probs,
        value,
        grads,
    })
}

struct CoarseBranch {
    means: CubeMeans,
    /// `softmax(scores)`, `[B, H, cubes, cubes]`.
    probs: Tensor,
    /// The branch's output, computed outside the graph.
    value: Tensor,
    grads: Arc<MeansGradient>,
}

impl CoarseBranch {
    /// A copy of the branch's output, as the operation's forward hands it over.
    fn value_copy(&self) -> Result<(Storage, Shape)> {
        let (storage, layout) = self.value.storage_and_layout();
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }

    /// The gradients of the q, k and v means for the output gradient `g`, as a softmax
    /// attention's: `dV = P^T g`, `dP = g V^T`, `dS = P (dP - rowsum(P dP))`, `dQ = dS K s`,
    /// `dK = dS^T Q s`.
    fn means_gradients(&self, g: &Tensor) -> Result<[Tensor; 3]> {
        let (p, m) = (&self.probs, &self.means);
        let dv = p.t()?.matmul(g)?;
        let dp = g.matmul(&m.v.t()?)?;
        let rows = (&dp * p)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&rows)?)?;
        let dq = (ds.matmul(&m.k)? * m.scale)?;
        let dk = (ds.t()?.matmul(&m.q)? * m.scale)?;
        Ok([dq, dk, dv])
    }
}

impl CustomOp1 for CoarseBranch {
    fn name(&self) -> &'static str {
        "vsa-coarse-branch"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        match self.value_copy()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("VSA coarse branch: value and fine on different devices"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.value_copy()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("VSA coarse branch: value and fine on different devices"),
        }
    }

    /// Hands the means' gradients to the fine stage; `fine` itself gets none.
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.grads.put(self.means_gradients(grad)?);
        Ok(None)
    }
}

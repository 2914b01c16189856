//! Block-sparse attention as candle operations: a forward with a backward, on the CPU engine
//! or the CUDA kernels, and row-wise top-k for block selection.

use crate::cpu::{self, Dims};
use crate::full_backward::{full_attention_backward, CHUNK_BYTES};
use crate::layout::BlockLayout;
use crate::plan::{KeyBlocks, SparsePlan};
use crate::pool::add_means_gradient;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D,
};
use std::str::FromStr;
use std::sync::Arc;
use vdit_core::storage::contiguous_f32;

/// The family of forward attention kernels on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardKernel {
    /// Hopper warpgroup MMAs on compute capability 9.x, warp MMAs elsewhere.
    #[default]
    Auto,
    /// Warp-level `mma.sync` (any GPU from sm_80).
    Mma,
    /// Hopper `wgmma` (compute capability 9.x only).
    Wgmma,
}

impl FromStr for ForwardKernel {
    type Err = String;

    /// `auto`, `mma` or `wgmma`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "mma" => Ok(Self::Mma),
            "wgmma" => Ok(Self::Wgmma),
            other => Err(format!(
                "`{other}` is not an attention kernel family: use auto, mma or wgmma"
            )),
        }
    }
}

/// Exact attention of `q: [B, H, S, D]` over `k, v: [B, H, Sk, D]` restricted to the key
/// blocks `plan` lists, in natural token order. Differentiable with respect to `q`, `k` and
/// `v`. Where the CUDA kernels run it and nothing differentiates it, the result is a `[B, H,
/// S, D]` view of a `[B, S, H, D]` buffer (so merging heads afterwards is free); where
/// something may, it is contiguous, so that a gradient handed back in its shape needs no
/// transpose (candle adds every gradient into fresh zeros, and an addition with a transposed
/// operand costs several times a contiguous one).
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Arc<SparsePlan>,
) -> Result<Tensor> {
    block_sparse_attention_with(q, k, v, plan, ForwardKernel::Auto)
}

/// [`block_sparse_attention`] with the forward kernel family `kernel` on the GPU.
pub fn block_sparse_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Arc<SparsePlan>,
    kernel: ForwardKernel,
) -> Result<Tensor> {
    let mut op = checked_op(q, k, v, plan, kernel)?;
    if on_kernels(q, plan)? && [q, k, v].iter().any(|t| t.track_op()) {
        op.rows = TokenRows::Bhsd;
        return q.apply_op3(k, v, op);
    }
    attend(q, k, v, plan, op)?.into_bhsd()
}

/// How the rows of a `[B, H, S, D]` tensor lie in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenRows {
    /// `[B, S, H, D]`: a token's heads side by side (the attention kernels' output).
    Bshd,
    /// `[B, H, S, D]`: a head's tokens side by side (contiguous in the logical shape).
    Bhsd,
}

impl TokenRows {
    /// The shape a buffer of `[B, H, S, D] = dims` rows laid out this way has.
    pub(crate) fn shape(self, (b, h, s, d): (usize, usize, usize, usize)) -> Shape {
        match self {
            Self::Bshd => Shape::from((b, s, h, d)),
            Self::Bhsd => Shape::from((b, h, s, d)),
        }
    }

    /// The element strides over batch, head and token of `[B, H, S, D] = dims` rows laid out
    /// this way (channels contiguous).
    #[cfg(feature = "cuda")]
    pub(crate) fn strides(self, (_, h, s, d): (usize, usize, usize, usize)) -> [i64; 3] {
        match self {
            Self::Bshd => [s * h * d, d, h * d],
            Self::Bhsd => [h * s * d, s * d, d],
        }
        .map(|x| x as i64)
    }

    /// The `[B, H, S, D]` view of `t`, a tensor of [`TokenRows::shape`].
    pub(crate) fn bhsd_view(self, t: &Tensor) -> Result<Tensor> {
        match self {
            Self::Bshd => t.transpose(1, 2),
            Self::Bhsd => Ok(t.clone()),
        }
    }
}

/// Block-sparse attention's output as a method that consumes it gets it: in the CUDA kernels'
/// own `[B, S, H, D]` layout where they run (no transpose in the graph, so that a consumer
/// taking that layout hands back a contiguous gradient: candle adds every gradient into fresh
/// zeros, and an addition with a transposed operand costs several times a contiguous one),
/// `[B, H, S, D]` elsewhere.
pub(crate) struct MethodOutput {
    /// How `tensor` lies: `Bshd` from the kernels, `Bhsd` (a view) from the CPU engine.
    pub(crate) rows: TokenRows,
    pub(crate) tensor: Tensor,
}

impl MethodOutput {
    /// The output as `[B, H, S, D]` (a view where it lies `[B, S, H, D]`).
    pub(crate) fn into_bhsd(self) -> Result<Tensor> {
        self.rows.bhsd_view(&self.tensor)
    }
}

/// Block-sparse attention for a method that consumes the output itself (see
/// [`MethodOutput`]); `means`, where given, is where the backward finds the gradient of q's,
/// k's and v's block means to add to their own.
pub(crate) fn method_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Arc<SparsePlan>,
    kernel: ForwardKernel,
    means: Option<&Arc<MeansGradient>>,
) -> Result<MethodOutput> {
    let mut op = checked_op(q, k, v, plan, kernel)?;
    op.means = means.cloned();
    attend(q, k, v, plan, op)
}

/// Runs `op` (with `[B, S, H, D]` rows) on the kernels where they take the call, else on the
/// CPU engine.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &SparsePlan,
    op: BlockSparseOp,
) -> Result<MethodOutput> {
    if on_kernels(q, plan)? {
        return Ok(MethodOutput {
            rows: TokenRows::Bshd,
            tensor: q.apply_op3(k, v, op)?,
        });
    }
    // The CPU engine works on contiguous f32 host buffers.
    let (dtype, device) = (q.dtype(), q.device().clone());
    let prep = |t: &Tensor| {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()
    };
    let out = prep(q)?.apply_op3(&prep(k)?, &prep(v)?, op)?;
    Ok(MethodOutput {
        rows: TokenRows::Bhsd,
        tensor: out.to_dtype(dtype)?.to_device(&device)?.transpose(1, 2)?,
    })
}

/// Gradients of an attention's inputs' block means (`[B, H, blocks, D]` f32 for q, k and v,
/// over one layout of queries and keys), handed by a consumer of the attention's output to
/// the attention's backward, which adds each token's share to its own gradients. A method
/// whose other branch reads q, k and v only through their block means (VSA's coarse
/// attention) thus gives each input one gradient rather than two (candle adds every gradient
/// into fresh zeros: a full pass over the input each). The consumer must take the attention's
/// output as an input, even without reading it, so that autograd runs its backward first.
pub(crate) struct MeansGradient {
    layout: Arc<BlockLayout>,
    grads: std::sync::Mutex<Option<[Tensor; 3]>>,
}

impl MeansGradient {
    /// An empty hand-over for block means over `layout`.
    pub(crate) fn new(layout: &Arc<BlockLayout>) -> Self {
        Self {
            layout: Arc::clone(layout),
            grads: Default::default(),
        }
    }

    /// Hands over the gradients of q's, k's and v's block means.
    pub(crate) fn put(&self, grads: [Tensor; 3]) {
        *self.grads.lock().unwrap_or_else(|e| e.into_inner()) = Some(grads);
    }

    /// Adds what was handed over (if anything) to `[dq, dk, dv]`, in place.
    fn add_to(&self, grads: [&Tensor; 3]) -> Result<()> {
        let taken = self.grads.lock().unwrap_or_else(|e| e.into_inner()).take();
        for (grad, means) in grads.into_iter().zip(taken.iter().flatten()) {
            add_means_gradient(grad, means, &self.layout)?;
        }
        Ok(())
    }
}

/// The forward operation for `q, k, v` under `plan`, once their shapes are checked against
/// each other and the plan.
fn checked_op(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Arc<SparsePlan>,
    kernel: ForwardKernel,
) -> Result<BlockSparseOp> {
    let (b, h, s, d) = q.dims4()?;
    let sk = k.dim(2)?;
    if k.dims4()? != (b, h, sk, d) || v.dims4()? != (b, h, sk, d) {
        candle_core::bail!(
            "block-sparse attention: q {:?}, k {:?}, v {:?} must be [B, H, S, D], [B, H, Sk, D], [B, H, Sk, D]",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    if (b, h, s) != (plan.batch, plan.heads, plan.q_layout.tokens()) || plan.k_layout.tokens() != sk
    {
        candle_core::bail!(
            "block-sparse attention: tensors are B={b} H={h} S={s} but the plan is for B={} H={} S={}",
            plan.batch,
            plan.heads,
            plan.q_layout.tokens()
        )
    }
    Ok(BlockSparseOp {
        plan: Arc::clone(plan),
        scale: (1.0 / (d as f64).sqrt()) as f32,
        kernel,
        rows: TokenRows::Bshd,
        means: None,
        #[cfg(feature = "cuda")]
        saved_lse: (q.track_op() || k.track_op() || v.track_op()).then(Default::default),
    })
}

/// True when the CUDA kernels can run this call as is.
fn on_kernels(q: &Tensor, plan: &SparsePlan) -> Result<bool> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return Ok(crate::cuda::supports(q.dtype(), q.dim(3)?, plan));
    }
    let _ = (q, plan);
    Ok(false)
}

/// The indices of the `k` largest entries of each row of `scores: [rows, n]` (f32), best
/// first, ties to the lower index: `[rows, k]` u32 on the same device.
pub fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    scores
        .to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&TopK { k })
}

struct TopK {
    k: usize,
}

impl CustomOp1 for TopK {
    fn name(&self) -> &'static str {
        "top-k-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = l.shape().dims2()?;
        let scores = contiguous_f32(s, l, "top-k rows")?;
        let k = self.k.min(n);
        let mut out = Vec::with_capacity(rows * k);
        for row in scores.chunks_exact(n) {
            let mut idx: Vec<u32> = (0..n as u32).collect();
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            out.extend_from_slice(&idx[..k]);
        }
        Ok((CpuStorage::U32(out), Shape::from((rows, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::top_k(s, l, self.k)
    }
}

/// The forward operation; its output is `[B, S, H, D]` or `[B, H, S, D]` as `rows` says
/// (always the former on the CPU engine).
struct BlockSparseOp {
    plan: Arc<SparsePlan>,
    scale: f32,
    kernel: ForwardKernel,
    rows: TokenRows,
    /// Where the backward finds gradients of the inputs' block means to add to its own.
    means: Option<Arc<MeansGradient>>,
    /// Where a differentiated forward on the GPU keeps its log-sum-exp for the backward
    /// (`None`: nothing will differentiate this call).
    #[cfg(feature = "cuda")]
    saved_lse: Option<std::sync::Mutex<Option<crate::cuda::SavedLse>>>,
}

fn dims_of(q: &Shape, k: &Shape) -> Result<Dims> {
    let (batch, heads, tokens, head_dim) = q.dims4()?;
    Ok(Dims {
        batch,
        heads,
        tokens,
        k_tokens: k.dims4()?.2,
        head_dim,
    })
}

/// `[B, H, S, D]` of the queries.
fn bhsd(dims: Dims) -> (usize, usize, usize, usize) {
    (dims.batch, dims.heads, dims.tokens, dims.head_dim)
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
        let dims = dims_of(l1.shape(), l2.shape())?;
        let mask = self.plan.host_mask()?;
        let op = "block-sparse attention";
        let (q, k, v) = (
            contiguous_f32(s1, l1, op)?,
            contiguous_f32(s2, l2, op)?,
            contiguous_f32(s3, l3, op)?,
        );
        let fwd = cpu::forward(&self.plan, &mask, dims, q, k, v, self.scale);
        Ok((CpuStorage::F32(fwd.out), TokenRows::Bshd.shape(bhsd(dims))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = dims_of(l1.shape(), l2.shape())?;
        let (out, lse) = crate::cuda::attention_forward(
            &self.plan,
            [(s1, l1), (s2, l2), (s3, l3)],
            self.scale,
            self.saved_lse.is_some(),
            self.kernel,
            self.rows,
        )?;
        if let (Some(saved), Some(lse)) = (&self.saved_lse, lse) {
            *saved.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(crate::cuda::SavedLse(Arc::new(lse)));
        }
        Ok((out, self.rows.shape(bhsd(dims))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Autograd hands the backward the forward's own (tracked) tensors: computing on them
        // would record a graph nobody differentiates, keeping every intermediate (the dense
        // path's per-chunk f32 scores: several full S x Sk matrices at 32 k tokens) alive.
        let (q, k, v, out) = (&q.detach(), &k.detach(), &v.detach(), &out.detach());
        // Dense attention on the CPU (or where the kernels do not run) takes chunked
        // matrix products; the kernels' backward runs every plan.
        if matches!(self.plan.keys, KeyBlocks::All) && !on_kernels(q, &self.plan)? {
            let (dq, dk, dv) =
                full_attention_backward(q, k, v, out, grad, self.scale, CHUNK_BYTES)?;
            return self.with_means([dq, dk, dv]);
        }
        let dout = self.rows.bhsd_view(&grad.contiguous()?)?;
        let delta = output_dots(&dout, &self.rows.bhsd_view(out)?)?;
        let op = BackwardOp {
            plan: Arc::clone(&self.plan),
            scale: self.scale,
            kernel: self.kernel,
            #[cfg(feature = "cuda")]
            lse: self
                .saved_lse
                .as_ref()
                .and_then(|saved| saved.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            dout,
            delta,
        };
        let packed = q.apply_op3_no_bwd(k, v, &op)?; // dq, dk, dv flattened
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = packed
            .narrow(0, 0, nq)?
            .reshape(q.shape())?
            .to_dtype(q.dtype())?;
        let dk = packed
            .narrow(0, nq, nk)?
            .reshape(k.shape())?
            .to_dtype(k.dtype())?;
        let dv = packed
            .narrow(0, nq + nk, nk)?
            .reshape(v.shape())?
            .to_dtype(v.dtype())?;
        self.with_means([dq, dk, dv])
    }
}

impl BlockSparseOp {
    /// The backward's result: `grads` (fresh tensors, which change in place) with the block
    /// means' gradients added where a consumer handed some over.
    fn with_means(
        &self,
        [dq, dk, dv]: [Tensor; 3],
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if let Some(means) = &self.means {
            means.add_to([&dq, &dk, &dv])?;
        }
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// delta = rowsum(dout * out), `[B, H, S]` f32 (as the kernels index the log-sum-exp), for
/// `[B, H, S, D]` views: one kernel on CUDA where it applies, composed operations elsewhere.
fn output_dots(grad: &Tensor, out: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(delta) = crate::cuda::row_dots(grad, out)? {
        return Ok(delta);
    }
    (grad.to_dtype(DType::F32)? * out.to_dtype(DType::F32)?)?
        .sum(D::Minus1)?
        .contiguous()
}

/// The backward pass as an operation on (q, k, v) producing dq, dk, dv (`[B, H, S, D]`,
/// `[B, H, Sk, D]`, `[B, H, Sk, D]`) flattened one after the other (f32 on the CPU; on CUDA the
/// inputs' dtype, or f32 where the kernels add dq by atomics). The log-sum-exp is recomputed
/// unless the forward kept it (as flash attention does).
struct BackwardOp {
    plan: Arc<SparsePlan>,
    scale: f32,
    /// Forward kernel family (the backward recomputes the log-sum-exp with it when the
    /// forward kept none).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    kernel: ForwardKernel,
    /// The forward's log-sum-exp, when it kept it.
    #[cfg(feature = "cuda")]
    lse: Option<crate::cuda::SavedLse>,
    /// Output gradient, `[B, H, S, D]` (a view).
    dout: Tensor,
    /// `rowsum(dout * out)`, `[B, H, S]` f32.
    delta: Tensor,
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

impl CustomOp3 for BackwardOp {
    fn name(&self) -> &'static str {
        "block-sparse-attention-backward"
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
        let dims = dims_of(l1.shape(), l2.shape())?;
        let mask = self.plan.host_mask()?;
        let op = "block-sparse attention backward";
        let (q, k, v) = (
            contiguous_f32(s1, l1, op)?,
            contiguous_f32(s2, l2, op)?,
            contiguous_f32(s3, l3, op)?,
        );
        let lse = cpu::forward(&self.plan, &mask, dims, q, k, v, self.scale).lse;
        let (delta, dout) = (
            host_vec(&self.delta)?,
            host_vec(&self.dout.transpose(1, 2)?)?,
        );
        let g = cpu::backward(
            &self.plan, &mask, dims, q, k, v, &lse, &delta, &dout, self.scale,
        );
        let mut packed = g.dq;
        packed.extend_from_slice(&g.dk);
        packed.extend_from_slice(&g.dv);
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let packed = crate::cuda::attention_backward(
            &self.plan,
            [(s1, l1), (s2, l2), (s3, l3)],
            &self.dout,
            &self.delta,
            self.scale,
            self.kernel,
            self.lse.as_ref(),
        )?;
        let len = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((packed, Shape::from(len)))
    }
}

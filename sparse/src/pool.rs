//! Per-block statistics shared by the methods: mean vectors of blocks (VSA pooling, VMoBA chunk
//! keys) and the softmax attention mass between blocks (PARO calibration, SparseD masks).

use crate::layout::BlockLayout;
use crate::op::MethodOutput;
#[cfg(feature = "cuda")]
use crate::op::TokenRows;
use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Arc;

/// The block of every natural token, as a `u32` tensor (layout shared by all heads).
pub fn block_index(layout: &BlockLayout, device: &Device) -> Result<Tensor> {
    let owner = layout.block_of_token(0);
    Tensor::from_vec(owner, layout.tokens(), device)
}

/// Mean over each block's tokens of `x: [B, H, S, D]`, in f32: `[B, H, blocks, D]`.
/// Differentiable: on the GPU one kernel, whose backward hands each token its block's gradient
/// divided by the block's size. The layout must be shared by all heads.
pub fn block_means(x: &Tensor, layout: &Arc<BlockLayout>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dim(3)? <= 256 {
        return x.apply_op1(BlockMeans {
            layout: Arc::clone(layout),
        });
    }
    let index = block_index(layout, x.device())?;
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (b, h, _, d) = x.dims4()?;
    let sums = Tensor::zeros((b, h, layout.num_blocks(), d), DType::F32, x.device())?
        .index_add(&index, &x, 2)?;
    sums.broadcast_div(&block_sizes(layout, x.device())?)
}

/// The number of tokens of each block, `[blocks, 1]` f32.
fn block_sizes(layout: &BlockLayout, device: &Device) -> Result<Tensor> {
    let sizes: Vec<f32> = (0..layout.num_blocks())
        .map(|i| layout.block_len(i) as f32)
        .collect();
    Tensor::from_vec(sizes, (layout.num_blocks(), 1), device)
}

/// The GPU block-mean kernel as a candle operation (no CPU form: the CPU uses `index_add`).
#[cfg(feature = "cuda")]
struct BlockMeans {
    layout: Arc<BlockLayout>,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for BlockMeans {
    fn name(&self) -> &'static str {
        "block-means"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("block-means kernel runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        crate::pool_cuda::block_reduce((s, l), None, true, &self.layout)
    }

    /// Each token gets its block's gradient divided by the block's size: one kernel where the
    /// head dim is a multiple of 8 (its 16-byte vectors), candle's index selection otherwise.
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.dim(3)? % 8 == 0 {
            let per_token = crate::pool_cuda::spread_blocks(grad, &self.layout, true, x.dtype())?;
            return Ok(Some(per_token));
        }
        let per_block = grad.broadcast_div(&block_sizes(&self.layout, grad.device())?)?;
        let per_token = per_block.index_select(&block_index(&self.layout, grad.device())?, 2)?;
        Ok(Some(per_token.to_dtype(x.dtype())?))
    }
}

/// Adds to `grad: [B, H, S, D]` (contiguous, and made by the caller, since it changes in
/// place) the gradient that block means taken of its tokens pass back for `means_grad: [B, H,
/// blocks, D]` (f32): each token gets its block's row divided by the block's length. f32 on
/// the CPU; bf16, f16 or f32 on the GPU, where the head dim is a multiple of 8.
pub(crate) fn add_means_gradient(
    grad: &Tensor,
    means_grad: &Tensor,
    layout: &Arc<BlockLayout>,
) -> Result<()> {
    let means_grad = means_grad.to_dtype(DType::F32)?.contiguous()?;
    grad.inplace_op2(
        &means_grad,
        &AddMeansGradient {
            layout: Arc::clone(layout),
        },
    )
}

struct AddMeansGradient {
    layout: Arc<BlockLayout>,
}

impl candle_core::InplaceOp2 for AddMeansGradient {
    fn name(&self) -> &'static str {
        "add-means-gradient"
    }

    fn cpu_fwd(
        &self,
        grad: &mut candle_core::CpuStorage,
        gl: &candle_core::Layout,
        means: &candle_core::CpuStorage,
        ml: &candle_core::Layout,
    ) -> Result<()> {
        let (candle_core::CpuStorage::F32(grad), candle_core::CpuStorage::F32(means)) =
            (grad, means)
        else {
            candle_core::bail!("adding block means' gradient on the CPU takes f32")
        };
        let (b, h, s, d) = gl.shape().dims4()?;
        let nb = self.layout.num_blocks();
        if !gl.is_contiguous() || !ml.is_contiguous() || ml.shape().dims4()? != (b, h, nb, d) {
            candle_core::bail!(
                "adding block means' gradient: {:?} and {:?} do not fit",
                gl.shape(),
                ml.shape()
            )
        }
        let grad = &mut grad[gl.start_offset()..][..b * h * s * d];
        let means = &means[ml.start_offset()..];
        let block_of = self.layout.block_of_token(0);
        let inv: Vec<f32> = (0..nb)
            .map(|i| 1.0 / self.layout.block_len(i) as f32)
            .collect();
        for (row, token) in grad.chunks_exact_mut(d).enumerate() {
            let (bh, t) = (row / s, row % s);
            let block = block_of[t] as usize;
            let from = &means[(bh * nb + block) * d..][..d];
            for (g, m) in token.iter_mut().zip(from) {
                *g += m * inv[block];
            }
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        grad: &mut candle_core::CudaStorage,
        gl: &candle_core::Layout,
        means: &candle_core::CudaStorage,
        ml: &candle_core::Layout,
    ) -> Result<()> {
        crate::pool_cuda::add_spread_means((grad, gl), (means, ml), &self.layout)
    }
}

/// Each token's row of its block, `[B, H, S, D]` for `x: [B, H, blocks, D]` (how VSA's coarse
/// output reaches the tokens). Differentiable: the backward sums each block's token gradients
/// (one block-sum kernel on the GPU, [`block_means`] times the sizes on the CPU) rather than a
/// scatter-add (which candle runs one thread per channel).
pub fn spread_to_tokens(x: &Tensor, layout: &Arc<BlockLayout>) -> Result<Tensor> {
    x.apply_op2(
        &block_index(layout, x.device())?,
        Spread {
            layout: Arc::clone(layout),
        },
    )
}

struct Spread {
    layout: Arc<BlockLayout>,
}

impl Spread {
    fn shape(x: &candle_core::Layout, index: &candle_core::Layout) -> candle_core::Shape {
        let mut dims = x.dims().to_vec();
        dims[2] = index.dims()[0];
        candle_core::Shape::from(dims)
    }
}

impl candle_core::CustomOp2 for Spread {
    fn name(&self) -> &'static str {
        "spread-to-tokens"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        index: &candle_core::CpuStorage,
        il: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((x.index_select(index, xl, il, 2)?, Self::shape(xl, il)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        index: &candle_core::CudaStorage,
        il: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((x.index_select(index, xl, il, 2)?, Self::shape(xl, il)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if grad.device().is_cuda() {
            let sums = crate::pool_cuda::block_sums(&grad.contiguous()?, None, &self.layout)?;
            return Ok((Some(sums.to_dtype(x.dtype())?), None));
        }
        let sums = block_means(grad, &self.layout)?
            .broadcast_mul(&block_sizes(&self.layout, grad.device())?)?;
        Ok((Some(sums.to_dtype(x.dtype())?), None))
    }
}

/// `fine + gate * spread_to_tokens(coarse)` in `fine`'s dtype, summed in f32: VSA's output
/// for `fine, gate: [B, H, S, D]` and its coarse branch `coarse: [B, H, blocks, D]` (f32).
/// On the GPU one kernel reads each operand once and writes the sum (see [`gated_kernel`] for
/// its layout), in place of casts, a spread, a product and a sum; differentiable.
pub fn add_gated_blocks(
    fine: &Tensor,
    gate: &Tensor,
    coarse: &Tensor,
    layout: &Arc<BlockLayout>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if gated_kernel_applies(fine, gate)? {
        return gated_kernel(fine, false, gate, coarse, layout);
    }
    let gated = (spread_to_tokens(coarse, layout)? * gate.to_dtype(DType::F32)?)?;
    (fine.to_dtype(DType::F32)? + gated)?.to_dtype(fine.dtype())
}

/// [`add_gated_blocks`] for a block-sparse attention's output as its method gets it: the
/// kernel takes the kernels' own `[B, S, H, D]` rows as they are, so that no transpose sits
/// between the two operations and `fine`'s gradient goes back contiguous.
pub(crate) fn add_gated_output(
    fine: &MethodOutput,
    gate: &Tensor,
    coarse: &Tensor,
    layout: &Arc<BlockLayout>,
) -> Result<Tensor> {
    let fine_bhsd = fine.rows.bhsd_view(&fine.tensor)?;
    #[cfg(feature = "cuda")]
    if gated_kernel_applies(&fine_bhsd, gate)? {
        let fine_bshd = fine.rows == TokenRows::Bshd;
        return gated_kernel(&fine.tensor, fine_bshd, gate, coarse, layout);
    }
    add_gated_blocks(&fine_bhsd, gate, coarse, layout)
}

/// True when the gated kernel takes `fine, gate: [B, H, S, D]`: CUDA, bf16 or f16 in one
/// dtype, a head dim that is a multiple of 8 and 16-byte aligned token rows.
#[cfg(feature = "cuda")]
fn gated_kernel_applies(fine: &Tensor, gate: &Tensor) -> Result<bool> {
    Ok(fine.device().is_cuda()
        && matches!(fine.dtype(), DType::BF16 | DType::F16)
        && gate.dtype() == fine.dtype()
        && fine.dim(3)? % 8 == 0
        && [fine, gate].iter().all(|t| {
            crate::cuda::tensor_view(t).is_ok_and(|v| crate::cuda::rows_16_byte_aligned(&v))
        }))
}

/// The gated kernel as a graph operation on `fine` (`[B, S, H, D]` when `fine_bshd`,
/// `[B, H, S, D]` otherwise): `[B, H, S, D]`. Its rows lie `[B, S, H, D]` (a view) where
/// nothing differentiates it, the layout the DiT's output projection reads without a copy;
/// where something may, they lie `[B, H, S, D]`, so that a gradient handed back in that shape
/// needs no transpose (candle adds every gradient into fresh zeros, and an addition with a
/// transposed operand costs several times a contiguous one).
#[cfg(feature = "cuda")]
fn gated_kernel(
    fine: &Tensor,
    fine_bshd: bool,
    gate: &Tensor,
    coarse: &Tensor,
    layout: &Arc<BlockLayout>,
) -> Result<Tensor> {
    let coarse = coarse.to_dtype(DType::F32)?.contiguous()?;
    let rows = if [fine, gate, &coarse].iter().any(|t| t.track_op()) {
        TokenRows::Bhsd
    } else {
        TokenRows::Bshd
    };
    let op = GatedAdd {
        layout: Arc::clone(layout),
        fine_bshd,
        rows,
    };
    rows.bhsd_view(&fine.apply_op3(gate, &coarse, op)?)
}

/// The GPU kernel of [`add_gated_blocks`] as a candle operation; its output is `[B, S, H, D]`
/// or `[B, H, S, D]` as `rows` says.
#[cfg(feature = "cuda")]
struct GatedAdd {
    layout: Arc<BlockLayout>,
    /// `fine` is `[B, S, H, D]` (else `[B, H, S, D]`, like `gate`).
    fine_bshd: bool,
    rows: TokenRows,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "gated-add"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("gated-add kernel runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        fine: &candle_core::CudaStorage,
        fl: &candle_core::Layout,
        gate: &candle_core::CudaStorage,
        gl: &candle_core::Layout,
        coarse: &candle_core::CudaStorage,
        cl: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let fl = if self.fine_bshd {
            fl.transpose(1, 2)?
        } else {
            fl.clone()
        };
        let layout = &self.layout;
        let sum = crate::pool_cuda::gated_add(
            Some((fine, &fl)),
            (gate, gl),
            (coarse, cl),
            layout,
            self.rows,
            false,
        )?;
        Ok((sum.sum, sum.shape))
    }

    /// With `g` the output gradient: `d fine = g` (in `fine`'s layout), `d gate = g *
    /// spread(coarse)` (the forward kernel without `fine`, written contiguous in `gate`'s
    /// shape), and `d coarse` each block's sum of `g * gate`.
    fn bwd(
        &self,
        fine: &Tensor,
        gate: &Tensor,
        coarse: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use vdit_core::cuda::{untracked_tensor, with_storage};
        let grad = grad.contiguous()?;
        // g: [B, H, S, D]. A [B, S, H, D] fine takes g in its own layout: g itself, or a copy
        // the kernel makes while it reads g for d gate.
        let g = self.rows.bhsd_view(&grad)?;
        let copy = self.fine_bshd && self.rows == TokenRows::Bhsd;
        let sum = with_storage(&g, |gs, gl| {
            with_storage(coarse, |cs, cl| {
                let rows = TokenRows::Bhsd;
                crate::pool_cuda::gated_add(None, (gs, gl), (cs, cl), &self.layout, rows, copy)
            })
        })?;
        let d_gate = untracked_tensor(sum.sum, sum.shape);
        let d_coarse =
            crate::pool_cuda::block_sums(&g, Some(&gate.to_dtype(g.dtype())?), &self.layout)?;
        let d_fine = match (sum.gate_bshd, self.fine_bshd) {
            (Some(g_bshd), _) => untracked_tensor(g_bshd, fine.shape()),
            (None, true) => grad,
            (None, false) => g,
        };
        Ok((
            Some(d_fine.to_dtype(fine.dtype())?),
            Some(d_gate.to_dtype(gate.dtype())?),
            Some(d_coarse),
        ))
    }
}

/// One assignment of tokens to blocks for [`block_attention_mass`].
pub struct Blocking<'a> {
    /// Block of every natural query token.
    pub q_block_of_token: &'a [u32],
    /// Number of query blocks.
    pub q_blocks: usize,
    /// Block of every natural key token.
    pub k_block_of_token: &'a [u32],
    /// Number of key blocks.
    pub k_blocks: usize,
}

fn one_hot(block_of_token: &[u32], blocks: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; block_of_token.len() * blocks];
    for (t, &b) in block_of_token.iter().enumerate() {
        data[t * blocks + b as usize] = 1.0;
    }
    Tensor::from_vec(data, (block_of_token.len(), blocks), device)
}

/// Bytes of f32 attention probabilities [`block_attention_mass`] holds at once: 512 MiB on a
/// GPU, where small chunks would cost one launch sequence per few query rows (at Wan 1.3B's
/// 480p shape 64 MiB chunks are 21 rows: 1560 rounds per layer, 82 s for SparseD's first step
/// on an H200), 64 MiB on the CPU.
fn chunk_bytes(device: &Device) -> usize {
    if device.is_cpu() {
        64 << 20
    } else {
        512 << 20
    }
}

/// Softmax attention mass of `q, k: [B, H, S, D]` summed over (query block, key block) pairs,
/// for each of several blockings at once (the softmax is computed once): one `[B, H, qb, kb]`
/// f32 tensor per blocking. Each query row's mass sums to 1, so a query block's row sums to
/// its token count.
pub fn block_attention_mass(
    q: &Tensor,
    k: &Tensor,
    blockings: &[Blocking<'_>],
) -> Result<Vec<Tensor>> {
    let (b, h, s, d) = q.dims4()?;
    let device = q.device();
    let scale = 1.0 / (d as f64).sqrt();
    let kt = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?;
    let hots: Vec<(Tensor, Tensor)> = blockings
        .iter()
        .map(|bl| {
            Ok((
                one_hot(bl.q_block_of_token, bl.q_blocks, device)?
                    .t()?
                    .contiguous()?,
                one_hot(bl.k_block_of_token, bl.k_blocks, device)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut totals: Vec<Tensor> = blockings
        .iter()
        .map(|bl| Tensor::zeros((b, h, bl.q_blocks, bl.k_blocks), DType::F32, device))
        .collect::<Result<_>>()?;
    let rows = (chunk_bytes(device) / (4 * b * h * s.max(1))).clamp(1, s.max(1));
    let mut start = 0;
    while start < s {
        let len = rows.min(s - start);
        let qc = q
            .narrow(2, start, len)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let probs = candle_nn::ops::softmax_last_dim(&(qc.matmul(&kt)? * scale)?)?;
        for ((q_hot, k_hot), total) in hots.iter().zip(totals.iter_mut()) {
            let per_key_block = probs.broadcast_matmul(k_hot)?; // [B, H, len, kb]
            let q_hot = q_hot.narrow(D::Minus1, start, len)?.contiguous()?; // [qb, len]
            *total = (&*total + q_hot.broadcast_matmul(&per_key_block)?)?;
        }
        start += len;
    }
    Ok(totals)
}

/// Softmax over the last dim in candle's fused kernel; differentiable (f32 where a gradient is
/// tracked: its backward is `y * (g - rowsum(g * y))` on the saved output, a few operations in
/// place of the composed form's max, subtraction, exponential, sum and division and their
/// backwards). Other dtypes that track a gradient take the composed form.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    if x.dtype() != DType::F32 {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    // On a GPU the fused kernel runs here and the operation hands its output over; the CPU
    // forward computes it itself.
    let fused = if x.device().is_cpu() {
        None
    } else {
        Some(candle_nn::ops::softmax_last_dim(&x.detach())?)
    };
    x.apply_op1(SavedSoftmax(fused))
}

/// Softmax over the last dim as a graph operation whose backward needs only its output; on a
/// GPU `.0` holds that output, computed beforehand by the fused kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct SavedSoftmax(Option<Tensor>);

impl candle_core::CustomOp1 for SavedSoftmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim-saved"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = vdit_core::storage::contiguous_f32(s, l, "softmax")?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(n) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let start = y.len();
            y.extend(row.iter().map(|v| (v - max).exp()));
            let sum: f32 = y[start..].iter().sum();
            y[start..].iter_mut().for_each(|v| *v /= sum);
        }
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let Some(y) = &self.0 else {
            candle_core::bail!("softmax: no output computed for the GPU")
        };
        let storage = vdit_core::cuda::with_storage(y, |s, l| s.try_clone(l))?;
        Ok((storage, y.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&dot)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenGrid;

    /// The saved-output softmax equals candle's composed one, forward and backward, on fresh
    /// random rows (f32, 1e-5 relative).
    #[test]
    fn saved_softmax_differentiates_as_the_composed_form() -> Result<()> {
        let x = candle_core::Var::randn(0f32, 3.0, (2, 3, 7, 11), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (2, 3, 7, 11), &Device::Cpu)?;
        let run = |y: Tensor| -> Result<(Vec<f32>, Vec<f32>)> {
            let out = y.flatten_all()?.to_vec1()?;
            let grads = (y * &w)?.sum_all()?.backward()?;
            Ok((
                out,
                grads.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1()?,
            ))
        };
        let ours = run(softmax_last(x.as_tensor())?)?;
        let theirs = run(candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?)?;
        for (a, b) in ours
            .0
            .iter()
            .chain(&ours.1)
            .zip(theirs.0.iter().chain(&theirs.1))
        {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn block_means_average_only_real_tokens() -> Result<()> {
        let layout = Arc::new(BlockLayout::natural(5, 2)); // blocks {0,1}, {2,3}, {4}
        let x = Tensor::new(&[1f32, 3.0, 5.0, 9.0, 7.0], &Device::Cpu)?.reshape((1, 1, 5, 1))?;
        let m: Vec<f32> = block_means(&x, &layout)?.flatten_all()?.to_vec1()?;
        assert_eq!(m, vec![2.0, 7.0, 7.0]);
        Ok(())
    }

    /// Spreading blocks to tokens is an index selection: the custom operation's gradient
    /// (block sums through `block_means`) equals candle's (a scatter-add), exactly.
    #[test]
    fn spread_differentiates_as_index_select() -> Result<()> {
        let grid = TokenGrid::new(3, 2, 5);
        let layout = BlockLayout::tiled_shared(grid, [2, 2, 2]);
        let x = candle_core::Var::randn(0f32, 1.0, (2, 2, layout.num_blocks(), 4), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (2, 2, grid.len(), 4), &Device::Cpu)?;
        let spread = spread_to_tokens(x.as_tensor(), &layout)?;
        let selected = x
            .as_tensor()
            .index_select(&block_index(&layout, &Device::Cpu)?, 2)?;
        assert_eq!(
            spread.flatten_all()?.to_vec1::<f32>()?,
            selected.flatten_all()?.to_vec1::<f32>()?
        );
        let grad = |y: Tensor| -> Result<Vec<f32>> {
            let grads = (y * &w)?.sum_all()?.backward()?;
            grads.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1()
        };
        let (ours, theirs) = (grad(spread)?, grad(selected)?);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn block_mass_rows_sum_to_query_counts() -> Result<()> {
        let grid = TokenGrid::new(3, 2, 5);
        let layout = BlockLayout::tiled(grid, [2, 2, 2]);
        let owner = layout.block_of_token(0);
        let q = Tensor::randn(0f32, 1.0, (2, 2, grid.len(), 4), &Device::Cpu)?;
        let k = Tensor::randn(0f32, 1.0, (2, 2, grid.len(), 4), &Device::Cpu)?;
        let n = layout.num_blocks();
        let blocking = Blocking {
            q_block_of_token: &owner,
            q_blocks: n,
            k_block_of_token: &owner,
            k_blocks: n,
        };
        let mass = &block_attention_mass(&q, &k, &[blocking])?[0];
        let rows: Vec<f32> = mass.sum(3)?.flatten_all()?.to_vec1()?;
        for (i, r) in rows.iter().enumerate() {
            let expected = layout.block_len(i % n) as f32;
            assert!((r - expected).abs() < 1e-4, "row {i}: {r} vs {expected}");
        }
        Ok(())
    }
}

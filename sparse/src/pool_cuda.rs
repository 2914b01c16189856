//! The pooling kernels of `kernels/pool.cu` on the host: per-block sums and means of token
//! rows (VSA's cubes, VMoBA's chunk keys), their way back to tokens, and VSA's gated output.

use crate::cuda::{arg_view, block_of_on, layout_on, one_thread_each, rows_16_byte_aligned, view};
use crate::layout::BlockLayout;
use crate::op::TokenRows;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;
use vdit_core::cuda::{
    dtype_suffix, output, ptr, storage_ptr, tensor_ptr, untracked_tensor, with_storage, Module,
};

const POOL: Module = vdit_core::kernel_module!("pool");

/// Sum of each block's tokens of `x: [B, H, S, D]` (any strides with a unit channel stride),
/// or of `x * y` for a `y` of the same shape and dtype, divided by the block's length when
/// `mean`: `[B, H, blocks, D]` f32. The layout must be shared by all heads.
pub(crate) fn block_reduce(
    (s, l): (&CudaStorage, &Layout),
    y: Option<(&CudaStorage, &Layout)>,
    mean: bool,
    layout: &Arc<BlockLayout>,
) -> Result<(CudaStorage, Shape)> {
    let (b, h, _, d) = l.shape().dims4()?;
    // One thread per channel (or per eight) and token lane, at most 1024 threads, and at most
    // 8192 partial sums (L x D, the kernel's shared memory).
    if d == 0 || d > 1024 {
        candle_core::bail!("block sums: head dim {d} is outside 1..=1024")
    }
    let dev = s.device().clone();
    let x = view(s, l)?;
    let y = match y {
        Some((ys, yl)) => {
            if yl.shape() != l.shape() || ys.dtype() != s.dtype() {
                candle_core::bail!("block sums: the factors differ in shape or dtype")
            }
            view(ys, yl)?
        }
        None => (0, [0; 3]),
    };
    let device_layout = layout_on(&dev, layout)?;
    let nb = layout.num_blocks();
    // SAFETY: the kernel writes every element (one thread per channel of each block).
    let out = unsafe { dev.alloc::<f32>(b * h * nb * d)? };
    // Eight channels per thread (16-byte loads) where rows allow, with about four tokens per
    // lane of the largest block; else one channel per thread over 1024 / D lanes.
    let vectors = d % 8 == 0 && rows_16_byte_aligned(&x) && (y.0 == 0 || rows_16_byte_aligned(&y));
    let (kernel, threads_x, lanes) = if vectors {
        let lanes = layout.tile().div_ceil(4).clamp(1, 8192 / d);
        ("block_reduce_vec", d / 8, lanes)
    } else {
        ("block_reduce", d, 1024 / d)
    };
    let func = POOL.function(&dev, &format!("{kernel}_{}", dtype_suffix(s.dtype())?))?;
    let stream = dev.cuda_stream();
    let (order, starts, out_ptr) = (
        ptr(&dev, &device_layout.order),
        ptr(&dev, &device_layout.starts),
        ptr(&dev, &out),
    );
    let (mean32, h32, nb32, d32) = (mean as i32, h as i32, nb as i32, d as i32);
    let mut builder = stream.launch_builder(&func);
    arg_view(&mut builder, &x);
    arg_view(&mut builder, &y);
    builder
        .arg(&mean32)
        .arg(&order)
        .arg(&starts)
        .arg(&out_ptr)
        .arg(&h32)
        .arg(&nb32)
        .arg(&d32);
    let cfg = LaunchConfig {
        grid_dim: (nb as u32, (b * h) as u32, 1),
        block_dim: (threads_x as u32, lanes as u32, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `block_reduce_*`; the layout covers S tokens of x (and y, of the
    // same shape); at most 1024 threads and L x D <= 8192 partial sums; the vector kernel only
    // on 16-byte aligned rows of a head dim that is a multiple of 8.
    unsafe { builder.launch(cfg) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((b, h, nb, d)),
    ))
}

/// [`block_reduce`]'s sums (no division) of a tensor, or of the product of two, as a tensor.
pub(crate) fn block_sums(
    x: &Tensor,
    y: Option<&Tensor>,
    layout: &Arc<BlockLayout>,
) -> Result<Tensor> {
    let (storage, shape) = with_storage(x, |s, l| match y {
        Some(y) => with_storage(y, |ys, yl| {
            block_reduce((s, l), Some((ys, yl)), false, layout)
        }),
        None => block_reduce((s, l), None, false, layout),
    })?;
    Ok(untracked_tensor(storage, shape))
}

/// Each token's row of its block, `[B, H, S, D]` contiguous in `dtype`, for block rows
/// `x: [B, H, blocks, D]` (f32), divided by the block's length when `mean` (the backward of
/// block means).
pub(crate) fn spread_blocks(
    x: &Tensor,
    layout: &Arc<BlockLayout>,
    mean: bool,
    dtype: DType,
) -> Result<Tensor> {
    let candle_core::Device::Cuda(dev) = x.device() else {
        candle_core::bail!("spread blocks runs on CUDA")
    };
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (b, h, _, d) = x.dims4()?;
    let (out, out_ptr) = vdit_core::cuda::output_tensor(dev, dtype, &[b, h, layout.tokens(), d])?;
    let spread = Spread {
        rows: tensor_ptr(&x)?,
        rows_shape: x.dims4()?,
        out: out_ptr,
        dtype,
        mean,
        accumulate: false,
    };
    spread.launch(dev, layout)?;
    Ok(out)
}

/// Adds to every token row of `out: [B, H, S, D]` (contiguous, in place) its block's row of
/// `rows: [B, H, blocks, D]` (f32, contiguous) divided by the block's length: the gradient of
/// block means, added to a gradient of the tokens.
pub(crate) fn add_spread_means(
    (out, ol): (&mut CudaStorage, &Layout),
    (rows, rl): (&CudaStorage, &Layout),
    layout: &Arc<BlockLayout>,
) -> Result<()> {
    let (b, h, s, d) = ol.shape().dims4()?;
    let rows_shape = rl.shape().dims4()?;
    if !ol.is_contiguous()
        || !rl.is_contiguous()
        || rows.dtype() != DType::F32
        || rows_shape != (b, h, layout.num_blocks(), d)
        || s != layout.tokens()
    {
        candle_core::bail!(
            "adding block means' gradient: {:?} and f32 {:?} over {} blocks do not fit",
            ol.shape(),
            rl.shape(),
            layout.num_blocks()
        )
    }
    let spread = Spread {
        rows: storage_ptr(rows, rl)?,
        rows_shape,
        out: storage_ptr(out, ol)?,
        dtype: out.dtype(),
        mean: true,
        accumulate: true,
    };
    spread.launch(out.device(), layout)
}

/// One launch of `spread_blocks_*`: block rows (f32 `[B, H, blocks, D]` at `rows`) to the
/// token rows of a contiguous `[B, H, S, D]` buffer of `dtype` at `out`.
struct Spread {
    rows: u64,
    rows_shape: (usize, usize, usize, usize),
    out: u64,
    dtype: DType,
    mean: bool,
    accumulate: bool,
}

impl Spread {
    fn launch(&self, dev: &candle_core::CudaDevice, layout: &Arc<BlockLayout>) -> Result<()> {
        let (b, h, nb, d) = self.rows_shape;
        let s = layout.tokens();
        if nb != layout.num_blocks() || d % 8 != 0 {
            candle_core::bail!(
                "spread blocks: {nb} rows of {d} channels do not fit {} blocks",
                layout.num_blocks()
            )
        }
        vdit_core::cuda::check_aligned(&[self.rows, self.out], "spread blocks")?;
        let (block_of, device_layout) = (block_of_on(dev, layout)?, layout_on(dev, layout)?);
        let vectors = b * h * s * d / 8; // the elements of an existing tensor, / 8
        let cfg = one_thread_each(vectors, "spread blocks")?;
        let (bp, sp) = (ptr(dev, &block_of), ptr(dev, &device_layout.starts));
        let (mean32, add32, s32, nb32, d32, vectors) = (
            self.mean as i32,
            self.accumulate as i32,
            s as i32,
            nb as i32,
            d as i32,
            vectors as i64,
        );
        let name = format!("spread_blocks_{}", dtype_suffix(self.dtype)?);
        let func = POOL.function(dev, &name)?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&self.rows)
            .arg(&bp)
            .arg(&sp)
            .arg(&mean32)
            .arg(&add32)
            .arg(&self.out)
            .arg(&s32)
            .arg(&nb32)
            .arg(&d32)
            .arg(&vectors);
        // SAFETY: arguments match `spread_blocks_*`; `rows` holds B x H x nb x D floats and
        // `out` B x H x S x D elements of `dtype` (the callers' shapes), each written once.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }
}

/// What [`gated_add`] writes: the sum, with its shape (`[B, S, H, D]` or `[B, H, S, D]` as
/// asked), and the copy of `gate` in `[B, S, H, D]` when one was asked for.
pub(crate) struct GatedSum {
    pub sum: CudaStorage,
    pub shape: Shape,
    pub gate_bshd: Option<CudaStorage>,
}

/// VSA's output `fine + gate * coarse[block of token]` for `fine, gate: [B, H, S, D]` views
/// (bf16 or f16, one dtype, unit channel stride, 16-byte aligned rows; no `fine` adds zero) and
/// `coarse: [B, H, blocks, D]` f32 contiguous, summed in f32 into `rows` in `gate`'s dtype; with
/// `copy_gate`, also `gate` copied into `[B, S, H, D]` in the same pass.
pub(crate) fn gated_add(
    fine: Option<(&CudaStorage, &Layout)>,
    (gate, gl): (&CudaStorage, &Layout),
    (coarse, cl): (&CudaStorage, &Layout),
    layout: &Arc<BlockLayout>,
    rows: TokenRows,
    copy_gate: bool,
) -> Result<GatedSum> {
    let (b, h, s, d) = gl.shape().dims4()?;
    let nb = layout.num_blocks();
    let fine_fits =
        fine.is_none_or(|(f, fl)| fl.shape() == gl.shape() && f.dtype() == gate.dtype());
    if !fine_fits
        || cl.shape().dims4()? != (b, h, nb, d)
        || !cl.is_contiguous()
        || coarse.dtype() != DType::F32
        || d % 8 != 0
        || layout.tokens() != s
    {
        candle_core::bail!(
            "gated add: gate {:?}, coarse {:?} f32 over {nb} blocks and fine do not fit",
            gl.shape(),
            cl.shape()
        )
    }
    let dev = gate.device().clone();
    let fine = match fine {
        Some((f, fl)) => view(f, fl)?,
        None => (0, [0; 3]),
    };
    let gate_view = view(gate, gl)?;
    if !rows_16_byte_aligned(&fine) || !rows_16_byte_aligned(&gate_view) {
        candle_core::bail!("gated add: token rows must start 16-byte aligned")
    }
    let cp = storage_ptr(coarse, cl)?;
    vdit_core::cuda::check_aligned(&[cp], "gated add")?;
    let block_of = block_of_on(&dev, layout)?;
    let elements = b * s * h * d;
    let (sum, sum_ptr) = output(&dev, gate.dtype(), elements)?;
    let (gate_bshd, copy_ptr) = match copy_gate {
        true => {
            let (copy, copy_ptr) = output(&dev, gate.dtype(), elements)?;
            (Some(copy), copy_ptr)
        }
        false => (None, 0),
    };
    let vectors = elements / 8; // the elements of an existing tensor, / 8
    let cfg = one_thread_each(vectors, "gated add")?;
    let vectors = vectors as i64;
    let (bp, bshd32, s32, h32, nb32, d32) = (
        ptr(&dev, &block_of),
        (rows == TokenRows::Bshd) as i32,
        s as i32,
        h as i32,
        nb as i32,
        d as i32,
    );
    let func = POOL.function(&dev, &format!("gated_add_{}", dtype_suffix(gate.dtype())?))?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    arg_view(&mut builder, &fine);
    arg_view(&mut builder, &gate_view);
    builder
        .arg(&cp)
        .arg(&bp)
        .arg(&sum_ptr)
        .arg(&bshd32)
        .arg(&copy_ptr)
        .arg(&s32)
        .arg(&h32)
        .arg(&nb32)
        .arg(&d32)
        .arg(&vectors);
    // SAFETY: arguments match `gated_add_*`; shapes and alignment checked above; the sum (and
    // the copy, where asked for) hold B x S x H x D elements, each written once.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(GatedSum {
        sum,
        shape: rows.shape((b, h, s, d)),
        gate_bshd,
    })
}

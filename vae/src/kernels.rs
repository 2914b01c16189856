//! The VAE's own CUDA passes over channels-last frames (`kernels/norm.cu`, `kernels/frames.cu`)
//! and its frame copies (device-to-device copies of whole frame ranges): the memory-bound work
//! between convolutions, each one pass at memory speed where candle's generic strided kernels
//! would take several.
//!
//! Every function takes tensors on CUDA whose last dim is a multiple of 8 channels (16-byte
//! vectors) and returns a fresh contiguous tensor.

use candle_core::cuda_backend::cudarc::driver::{result as driver, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Device, Result, Tensor};
use vdit_core::cuda::{check_aligned, dtype_suffix, output_tensor, tensor_ptr, Module};

const NORM: Module = vdit_core::kernel_module!("norm");
const FRAMES: Module = vdit_core::kernel_module!("frames");
/// Threads per CTA of every kernel here.
const THREADS: u32 = 256;
/// Widest row the channel norm takes.
const MAX_NORM_CHANNELS: usize = 1024;
/// Channels per 16-byte vector of 16-bit elements.
const VECTOR: usize = 8;

fn cuda(t: &Tensor) -> Result<&CudaDevice> {
    match t.device() {
        Device::Cuda(dev) => Ok(dev),
        _ => candle_core::bail!("VAE kernels run on CUDA tensors"),
    }
}

/// The channels (last dim) of `t`, checked to fill whole vectors.
fn channels(t: &Tensor, kernel: &str) -> Result<usize> {
    let c = *t.dims().last().unwrap_or(&0);
    if c == 0 || !c.is_multiple_of(VECTOR) {
        candle_core::bail!(
            "{kernel}: channels-last rows of a multiple of {VECTOR} channels, not {c}"
        )
    }
    Ok(c)
}

/// One thread per item, [`THREADS`] per CTA.
fn grid(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// True when the rows (last dim) of `t` are whole 8-channel vectors, as every kernel here
/// needs.
pub fn whole_vectors(t: &Tensor) -> bool {
    t.dims()
        .last()
        .is_some_and(|&c| c > 0 && c.is_multiple_of(VECTOR))
}

/// True when [`channel_norm`] takes rows of `x`'s width.
pub fn norm_takes(x: &Tensor) -> bool {
    whole_vectors(x) && x.dims().last().is_some_and(|&c| c <= MAX_NORM_CHANNELS)
}

/// `x` normalised over its last dim (channels), times `gain` (f32 `[c]`), then SiLU when
/// `silu`.
pub fn channel_norm(x: &Tensor, gain: &Tensor, silu: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    let dev = cuda(&x)?;
    let c = channels(&x, "channel norm")?;
    if c > MAX_NORM_CHANNELS || gain.dims() != [c] {
        candle_core::bail!(
            "channel norm: at most {MAX_NORM_CHANNELS} channels and a gain of as many"
        )
    }
    let rows = x.elem_count() / c;
    // a power-of-two group of lanes per row, enough for one vector each
    let lanes = (c / VECTOR).next_power_of_two().min(32);
    let (out, out_ptr) = output_tensor(dev, x.dtype(), x.dims())?;
    let (xp, gp) = (tensor_ptr(&x)?, tensor_ptr(gain)?);
    check_aligned(&[xp, gp, out_ptr], "channel norm")?;
    let func = NORM.function(dev, &format!("channel_norm_{}", dtype_suffix(x.dtype())?))?;
    let (rows64, c32, lanes32, silu) = (rows as i64, c as i32, lanes as i32, i32::from(silu));
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&xp)
        .arg(&gp)
        .arg(&out_ptr)
        .arg(&rows64)
        .arg(&c32)
        .arg(&lanes32)
        .arg(&silu);
    // SAFETY: the arguments match channel_norm_*; x and out hold rows * c elements and gain c
    // floats, all 16-byte aligned; every thread of the grid maps to a lane of some row group.
    unsafe { builder.launch(grid(rows * lanes)) }.w()?;
    Ok(out)
}

/// A fresh `dims` tensor (channels last) holding `bias` `[c]` in every row, plus `residual` (of
/// `dims`) when given: a convolution's output before the convolution accumulates onto it.
pub fn bias_fill(bias: &Tensor, residual: Option<&Tensor>, dims: &[usize]) -> Result<Tensor> {
    let dev = cuda(bias)?;
    let c = channels(bias, "bias fill")?;
    if dims.last() != Some(&c) || residual.is_some_and(|r| r.dims() != dims) {
        candle_core::bail!("bias fill: a bias of the output's channels and a residual of its shape")
    }
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let (out, out_ptr) = output_tensor(dev, bias.dtype(), dims)?;
    let bp = tensor_ptr(&bias.contiguous()?)?;
    let rp = residual.as_ref().map(tensor_ptr).transpose()?.unwrap_or(0);
    check_aligned(&[bp, rp, out_ptr], "bias fill")?;
    let vectors = out.elem_count() / VECTOR;
    let func = FRAMES.function(dev, &format!("bias_fill_{}", dtype_suffix(bias.dtype())?))?;
    let (vectors64, c32) = (vectors as i64, c as i32);
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&bp)
        .arg(&rp)
        .arg(&out_ptr)
        .arg(&vectors64)
        .arg(&c32);
    // SAFETY: the arguments match bias_fill_*; out (and the residual, when its address is not
    // null) hold `vectors` vectors, the bias c elements, all 16-byte aligned.
    unsafe { builder.launch(grid(vectors)) }.w()?;
    Ok(out)
}

/// Nearest-neighbour 2x upsampling of channels-last images `[n, h, w, c]`.
pub fn upsample2x(images: &Tensor) -> Result<Tensor> {
    let images = images.contiguous()?;
    let dev = cuda(&images)?;
    let c = channels(&images, "2x upsampling")?;
    let (n, h, w, _) = images.dims4()?;
    let (out, out_ptr) = output_tensor(dev, images.dtype(), &[n, 2 * h, 2 * w, c])?;
    let ip = tensor_ptr(&images)?;
    check_aligned(&[ip, out_ptr], "2x upsampling")?;
    let vectors = images.elem_count() / VECTOR;
    let func = FRAMES.function(
        dev,
        &format!("upsample2x_{}", dtype_suffix(images.dtype())?),
    )?;
    let (vectors64, h32, w32, c32) = (vectors as i64, h as i32, w as i32, c as i32);
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&ip)
        .arg(&out_ptr)
        .arg(&vectors64)
        .arg(&h32)
        .arg(&w32)
        .arg(&c32);
    // SAFETY: the arguments match upsample2x_*; the input holds `vectors` vectors and the output
    // four times as many, both 16-byte aligned.
    unsafe { builder.launch(grid(vectors)) }.w()?;
    Ok(out)
}

/// Frames `[b, t, ...]` of several tensors joined along time: `parts` are `(tensor, first
/// frame, frames)` ranges, copied device to device in order into one fresh tensor.
pub fn join_frames(parts: &[(&Tensor, usize, usize)]) -> Result<Tensor> {
    let Some(&(first, ..)) = parts.first() else {
        candle_core::bail!("joining frames: nothing to join")
    };
    let dev = cuda(first)?;
    let dims = first.dims();
    let frame: usize = dims[2..].iter().product();
    let frames: usize = parts.iter().map(|p| p.2).sum();
    let b = dims[0];
    let mut out_dims = dims.to_vec();
    out_dims[1] = frames;
    let (out, out_ptr) = output_tensor(dev, first.dtype(), &out_dims)?;
    let size = first.dtype().size_in_bytes();
    let stream = dev.cuda_stream();
    let mut at = 0;
    for &(t, start, len) in parts {
        if t.dims()[2..] != dims[2..] || t.dim(0)? != b || start + len > t.dim(1)? {
            candle_core::bail!("joining frames: parts of different frame shapes or ranges")
        }
        let t = t.contiguous()?;
        let src = tensor_ptr(&t)?;
        let t_frames = t.dim(1)?;
        for i in 0..b {
            let from = src + (((i * t_frames + start) * frame) * size) as u64;
            let to = out_ptr + (((i * frames + at) * frame) * size) as u64;
            // SAFETY: both ranges lie inside live allocations (shapes checked above), and the
            // copy is ordered on candle's stream with the work that reads and writes them.
            unsafe { driver::memcpy_dtod_async(to, from, len * frame * size, stream.cu_stream()) }
                .w()?;
        }
        at += len;
    }
    Ok(out)
}

//! The fused kernels of `kernels/fused.cu` and the cuBLASLt linear as candle operations, for
//! the dispatch in [`crate::fused`] (inference only: no backward).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use vdit_core::cuda::{check_aligned, dtype_suffix, storage_ptr, tensor_ptr, with_storage, Module};

const FUSED: Module = vdit_core::kernel_module!("fused");
const THREADS: u32 = 256;

/// The fused kernel `{name}_{bf16|f16}` for `dtype`.
fn fused_kernel(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        candle_core::bail!("fused kernels take bf16 or f16, not {dtype:?}")
    }
    FUSED.function(dev, &format!("{name}_{}", dtype_suffix(dtype)?))
}

/// An output like `s` (same dtype) of `n` elements, with its address.
fn output(s: &CudaStorage, n: usize) -> Result<(CudaStorage, u64)> {
    vdit_core::cuda::output(s.device(), s.dtype(), n)
}

/// One CTA per row of `dim` channels, one thread per 8 channels rounded up to whole warps
/// (the row kernels' layout; `applies` keeps `dim` a multiple of 8 up to 8192).
fn row_launch(rows: usize, dim: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: ((dim / 8).next_multiple_of(32) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Batch stride (elements) of a modulation view: 0 for a per-channel vector.
fn batch_stride(l: &Layout) -> i64 {
    if l.dims().len() == 1 {
        0
    } else {
        l.stride()[0] as i64
    }
}

fn cpu_unsupported() -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("fused kernels run on CUDA only")
}

struct LnModulate {
    eps: f32,
}

impl CustomOp3 for LnModulate {
    fn name(&self) -> &'static str {
        "ln-modulate"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        sh: &CudaStorage,
        shl: &Layout,
        sc: &CudaStorage,
        scl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, s, dim) = xl.shape().dims3()?;
        if !xl.is_contiguous()
            || batch_stride(shl) != batch_stride(scl)
            || shl.stride().last() != Some(&1)
            || scl.stride().last() != Some(&1)
        {
            candle_core::bail!(
                "ln_modulate: contiguous x, and shift and scale as unit-stride views with one batch stride"
            )
        }
        let (out, out_ptr) = output(x, b * s * dim)?;
        let dev = x.device();
        let func = fused_kernel(dev, "ln_modulate", x.dtype())?;
        let (xp, shp, scp) = (
            storage_ptr(x, xl)?,
            storage_ptr(sh, shl)?,
            storage_ptr(sc, scl)?,
        );
        let (stride, rows, dim32, eps) = (batch_stride(shl), s as i32, dim as i32, self.eps);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&xp)
            .arg(&out_ptr)
            .arg(&shp)
            .arg(&scp)
            .arg(&stride)
            .arg(&rows)
            .arg(&dim32)
            .arg(&eps);
        check_aligned(&[xp, shp, scp, out_ptr], "ln_modulate")?;
        // SAFETY: argument list matches ln_modulate_*; buffers cover the rows indexed.
        unsafe { builder.launch(row_launch(b * s, dim)) }.w()?;
        Ok((out, xl.shape().clone()))
    }
}

/// RMSNorm times a weight, then RoPE when `cos_sin` (`[tokens, head_dim / 2, 2]`) is given.
struct RmsRope {
    eps: f32,
    head_dim: usize,
    cos_sin: Option<Tensor>,
}

impl candle_core::CustomOp2 for RmsRope {
    fn name(&self) -> &'static str {
        "rms-rope"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, s, dim) = xl.shape().dims3()?;
        let rope_shape_ok = self
            .cos_sin
            .as_ref()
            .is_none_or(|cs| cs.is_contiguous() && cs.dims() == [s, self.head_dim / 2, 2]);
        if !xl.is_contiguous() || !wl.is_contiguous() || !rope_shape_ok {
            candle_core::bail!(
                "rms_rope: contiguous x, weight and cos_sin [tokens, head_dim / 2, 2] expected"
            )
        }
        let (out, out_ptr) = output(x, b * s * dim)?;
        let dev = x.device();
        let func = fused_kernel(dev, "rms_rope", x.dtype())?;
        let csp = match &self.cos_sin {
            Some(cs) => tensor_ptr(cs)?,
            None => 0,
        };
        let (xp, wp) = (storage_ptr(x, xl)?, storage_ptr(w, wl)?);
        check_aligned(&[xp, wp, out_ptr], "rms_rope")?;
        let (tokens, dim32, hd, eps) = (s as i32, dim as i32, self.head_dim as i32, self.eps);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&xp)
            .arg(&wp)
            .arg(&csp)
            .arg(&out_ptr)
            .arg(&tokens)
            .arg(&dim32)
            .arg(&hd)
            .arg(&eps);
        // SAFETY: argument list matches rms_rope_*; buffers cover the rows indexed and
        // cos_sin (when not null) covers `tokens` rows of head_dim floats.
        unsafe { builder.launch(row_launch(b * s, dim)) }.w()?;
        Ok((out, xl.shape().clone()))
    }
}

struct LinearEpilogue {
    bias: Tensor,
    gate: Option<Tensor>,
    residual: Option<Tensor>,
    gelu: bool,
}

/// Address and batch stride of an optional f32 gate view (0, 0 when absent).
fn optional_ptr(t: &Option<Tensor>) -> Result<(u64, i64)> {
    let Some(t) = t else { return Ok((0, 0)) };
    with_storage(t, |s, layout| {
        if layout.stride().last() != Some(&1) {
            candle_core::bail!("linear epilogue: operands need a unit channel stride")
        }
        Ok((storage_ptr(s, layout)?, batch_stride(layout)))
    })
}

impl candle_core::CustomOp1 for LinearEpilogue {
    fn name(&self) -> &'static str {
        "linear-epilogue"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }
    fn cuda_fwd(&self, y: &CudaStorage, yl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, s, cols) = yl.shape().dims3()?;
        let n = b * s * cols;
        let (out, out_ptr) = output(y, n)?;
        let dev = y.device();
        let func = fused_kernel(dev, "linear_epilogue", y.dtype())?;
        let yp = storage_ptr(y, yl)?;
        let bp = tensor_ptr(&self.bias)?;
        let (gp, gate_stride) = optional_ptr(&self.gate)?;
        let (rp, _) = optional_ptr(&self.residual)?;
        check_aligned(&[yp, bp, gp, rp, out_ptr], "linear epilogue")?;
        let (n64, cols32, rows, act) = (n as i64, cols as i32, s as i32, self.gelu as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&yp)
            .arg(&bp)
            .arg(&gp)
            .arg(&gate_stride)
            .arg(&rp)
            .arg(&out_ptr)
            .arg(&n64)
            .arg(&cols32)
            .arg(&rows)
            .arg(&act);
        let blocks = (n / 8).div_ceil(THREADS as usize).min(65_535 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument list matches linear_epilogue_*; pointers checked for alignment and
        // the tensors cover [rows, cols] (bias [cols], gate rows of cols per batch element).
        unsafe { builder.launch(cfg) }.w()?;
        Ok((out, yl.shape().clone()))
    }
}

/// One cuBLASLt handle (with its workspace) per device, created on first use.
fn blas_lt(dev: &candle_core::CudaDevice) -> Result<std::sync::Arc<CudaBlasLT>> {
    use std::sync::{Arc, Mutex};
    type Handles = Vec<(candle_core::cuda_backend::DeviceId, Arc<CudaBlasLT>)>;
    static HANDLES: Mutex<Handles> = Mutex::new(Vec::new());
    let mut handles = HANDLES.lock().expect("cublasLt handles lock");
    if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(Arc::clone(h));
    }
    let handle = CudaBlasLT::new(dev.cuda_stream())
        .map_err(|e| candle_core::Error::Msg(format!("cannot create a cuBLASLt handle: {e:?}")))?;
    let handle = Arc::new(handle);
    handles.push((dev.id(), Arc::clone(&handle)));
    Ok(handle)
}

struct LtLinear {
    bias: Option<Tensor>,
    gelu: bool,
}

impl LtLinear {
    fn run<T>(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
        CudaBlasLT: Matmul<T>,
    {
        let (b, s, k) = xl.shape().dims3()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 || !xl.is_contiguous() || !wl.is_contiguous() {
            candle_core::bail!(
                "lt_linear: x [B, S, K] and weight [N, K] must be contiguous with equal K"
            )
        }
        let dev = x.device().clone();
        let m = b * s;
        let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        let mut out = unsafe { dev.alloc::<T>(m * n)? };
        let bias_guard = self.bias.as_ref().map(|t| t.storage_and_layout());
        let bias = match &bias_guard {
            Some((storage, layout)) => {
                let candle_core::Storage::Cuda(cs) = &**storage else {
                    candle_core::bail!("lt_linear: bias must be on CUDA")
                };
                Some(cs.as_cuda_slice::<T>()?.slice(layout.start_offset()..))
            }
            None => None,
        };
        // Row-major out [M, N] = x [M, K] . W^T, as column-major out^T [N, M] = W [N, K] . x^T.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let act = self.gelu.then_some(Activation::Gelu);
        // SAFETY: the views cover [N, K], [M, K] and [N] elements and `out` holds M * N.
        unsafe { blas_lt(&dev)?.matmul(cfg, &ws, &xs, &mut out, bias.as_ref(), act.as_ref()) }
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt matmul failed: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, s, n)),
        ))
    }
}

impl candle_core::CustomOp2 for LtLinear {
    fn name(&self) -> &'static str {
        "lt-linear"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_unsupported()
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::BF16 => self.run::<half::bf16>(x, xl, w, wl),
            DType::F16 => self.run::<half::f16>(x, xl, w, wl),
            dt => candle_core::bail!("lt_linear takes bf16 or f16, not {dt:?}"),
        }
    }
}

pub(crate) fn lt_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let bias = bias
        .map(|b| b.to_dtype(x.dtype())?.contiguous())
        .transpose()?;
    let weight = weight.to_dtype(x.dtype())?.contiguous()?;
    x.contiguous()?
        .apply_op2_no_bwd(&weight, &LtLinear { bias, gelu })
}

pub(crate) fn linear_epilogue(
    y: &Tensor,
    bias: &Tensor,
    gelu: bool,
    gate: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = LinearEpilogue {
        bias: bias.to_dtype(y.dtype())?.contiguous()?,
        gate: gate.map(|g| g.to_dtype(DType::F32)).transpose()?,
        residual: residual
            .map(|r| r.to_dtype(y.dtype())?.contiguous())
            .transpose()?,
        gelu,
    };
    y.contiguous()?.apply_op1_no_bwd(&op)
}

pub(crate) fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op3_no_bwd(
        &shift.to_dtype(DType::F32)?,
        &scale.to_dtype(DType::F32)?,
        &LnModulate { eps: eps as f32 },
    )
}

pub(crate) fn rms_rope(
    x: &Tensor,
    weight: &Tensor,
    cos_sin: &Tensor,
    head_dim: usize,
    eps: f64,
) -> Result<Tensor> {
    let (b, s, dim) = x.dims3()?;
    let op = RmsRope {
        eps: eps as f32,
        head_dim,
        cos_sin: Some(cos_sin.contiguous()?),
    };
    x.contiguous()?
        .apply_op2_no_bwd(&weight.to_dtype(x.dtype())?, &op)?
        .reshape((b, s, dim / head_dim, head_dim))
}

pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let op = RmsRope {
        eps: eps as f32,
        head_dim: x.dim(candle_core::D::Minus1)?,
        cos_sin: None,
    };
    x.contiguous()?
        .apply_op2_no_bwd(&weight.to_dtype(x.dtype())?, &op)
}

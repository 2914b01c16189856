//! Fused CUDA kernels for the transformer's element-wise hot paths (inference only): each
//! replaces several candle passes and f32 round trips with one read and one write. Used when
//! activations are bf16/f16 on a GPU and no gradient is tracked; everything else takes the
//! plain candle path.

use candle_core::{DType, Result, Tensor};

/// Largest row the fused kernels take (channels).
const MAX_DIM: usize = 8192;

/// True when `x` can go through the fused row kernels: as for [`epilogue_applies`], with rows
/// of at most 8192 channels.
pub fn applies(x: &Tensor) -> bool {
    epilogue_applies(x) && x.dims().last().is_some_and(|&d| d <= MAX_DIM)
}

/// `LayerNorm(x) * (1 + scale) + shift` for `x: [B, S, dim]` with `shift, scale: [B, 1, dim]`
/// (f32, any batch stride) or `[dim]` (per-channel); output in `x`'s dtype.
pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    imp::ln_modulate(x, shift, scale, eps)
}

/// RMSNorm over the last dim of `x: [B, S, heads * head_dim]` times `weight`, then RoPE per
/// head with `cos_sin: [S, head_dim / 2, 2]` (f32); returns `[B, S, heads, head_dim]`.
pub fn rms_rope(
    x: &Tensor,
    weight: &Tensor,
    cos_sin: &Tensor,
    head_dim: usize,
    eps: f64,
) -> Result<Tensor> {
    imp::rms_rope(x, weight, cos_sin, head_dim, eps)
}

/// RMSNorm over the last dim of `x: [B, S, dim]` times `weight` (f32 inside), same shape out.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    imp::rms_norm(x, weight, eps)
}

/// `residual + act(y + bias) * gate` for `y, residual: [B, S, n]`, `bias: [n]`, `gate:
/// [B, 1, n]` f32 (any batch stride); `act` is GELU (tanh) when `gelu`. One pass, f32 inside.
pub fn linear_epilogue(
    y: &Tensor,
    bias: &Tensor,
    gelu: bool,
    gate: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    imp::linear_epilogue(y, bias, gelu, gate, residual)
}

/// `x Wᵀ (+ b) (then GELU)` for `x: [B, S, K]` and `weight: [N, K]` through cuBLASLt, whose
/// bias and GELU (tanh) epilogues run inside the matmul: `[B, S, N]`.
pub fn lt_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    imp::lt_linear(x, weight, bias, gelu)
}

/// True when `t` can go through [`lt_linear`] and [`linear_epilogue`]: bf16/f16 on a GPU, no
/// tracked gradient, and a last dim of whole 16-byte vectors (no width limit).
pub fn epilogue_applies(t: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && t.device().is_cuda()
        && matches!(t.dtype(), DType::BF16 | DType::F16)
        && !t.track_op()
        && t.dims().last().is_some_and(|&c| c % 8 == 0)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};

    pub fn ln_modulate(_: &Tensor, _: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
    pub fn rms_rope(_: &Tensor, _: &Tensor, _: &Tensor, _: usize, _: f64) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
    pub fn rms_norm(_: &Tensor, _: &Tensor, _: f64) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
    pub fn linear_epilogue(
        _: &Tensor,
        _: &Tensor,
        _: bool,
        _: Option<&Tensor>,
        _: Option<&Tensor>,
    ) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
    pub fn lt_linear(_: &Tensor, _: &Tensor, _: Option<&Tensor>, _: bool) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublaslt::{
        Activation, CudaBlasLT, Matmul, MatmulConfig,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
    };
    use sparse::cuda::storage_ptr;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const THREADS: u32 = 256;

    fn suffix(dtype: DType) -> Result<&'static str> {
        match dtype {
            DType::BF16 => Ok("bf16"),
            DType::F16 => Ok("f16"),
            dt => candle_core::bail!("fused kernels take bf16 or f16, not {dt:?}"),
        }
    }

    /// The fused kernel `{name}_{bf16|f16}` for `dtype`, loaded once per device.
    fn fused_kernel(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
        Ok(dev
            .get_or_load_custom_func(&format!("{name}_{}", suffix(dtype)?), "vdit_fused", PTX)?
            .into_cuda_function())
    }

    /// Allocates an output like `s` (same dtype) of `n` elements and returns it with its address.
    fn output(s: &CudaStorage, n: usize) -> Result<(CudaStorage, u64)> {
        let dev = s.device().clone();
        let out = match s.dtype() {
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<half::bf16>(n)? }, dev)
            }
            DType::F16 => CudaStorage::wrap_cuda_slice(unsafe { dev.alloc::<half::f16>(n)? }, dev),
            dt => candle_core::bail!("fused kernels take bf16 or f16, not {dt:?}"),
        };
        let p = storage_ptr(&out, &Layout::contiguous(n))?;
        Ok((out, p))
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
            aligned(&[xp, shp, scp, out_ptr], "ln_modulate")?;
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
                Some(cs) => sparse::cuda::tensor_ptr(cs)?,
                None => 0,
            };
            let (xp, wp) = (storage_ptr(x, xl)?, storage_ptr(w, wl)?);
            aligned(&[xp, wp, out_ptr], "rms_rope")?;
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

    /// Fails unless every address is 16-byte aligned (the kernels move 16-byte vectors).
    fn aligned(ptrs: &[u64], kernel: &str) -> Result<()> {
        if ptrs.iter().any(|p| p % 16 != 0) {
            candle_core::bail!("{kernel}: operands must be 16-byte aligned")
        }
        Ok(())
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
        let (storage, layout) = t.storage_and_layout();
        let candle_core::Storage::Cuda(s) = &*storage else {
            candle_core::bail!("expected a CUDA tensor")
        };
        if layout.stride().last() != Some(&1) {
            candle_core::bail!("linear epilogue: operands need a unit channel stride")
        }
        Ok((storage_ptr(s, layout)?, batch_stride(layout)))
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
            let bp = sparse::cuda::tensor_ptr(&self.bias)?;
            let (gp, gate_stride) = optional_ptr(&self.gate)?;
            let (rp, _) = optional_ptr(&self.residual)?;
            aligned(&[yp, bp, gp, rp, out_ptr], "linear epilogue")?;
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
        let handle = CudaBlasLT::new(dev.cuda_stream()).map_err(|e| {
            candle_core::Error::Msg(format!("cannot create a cuBLASLt handle: {e:?}"))
        })?;
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

    pub fn lt_linear(
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

    pub fn linear_epilogue(
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

    pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
        let x = x.contiguous()?;
        x.apply_op3_no_bwd(
            &shift.to_dtype(DType::F32)?,
            &scale.to_dtype(DType::F32)?,
            &LnModulate { eps: eps as f32 },
        )
    }

    pub fn rms_rope(
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

    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let op = RmsRope {
            eps: eps as f32,
            head_dim: x.dim(candle_core::D::Minus1)?,
            cos_sin: None,
        };
        x.contiguous()?
            .apply_op2_no_bwd(&weight.to_dtype(x.dtype())?, &op)
    }
}

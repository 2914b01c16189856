//! Fused CUDA kernels for the transformer's element-wise hot paths (inference only): each
//! replaces several candle passes and f32 round trips with one read and one write. Used when
//! activations are bf16/f16 on a GPU and no gradient is tracked; everything else takes the
//! plain candle path.

use candle_core::{DType, Result, Tensor};

/// Largest row the fused kernels take (channels).
const MAX_DIM: usize = 8192;

/// True when `x` can go through the fused kernels.
pub fn applies(x: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && !x.track_op()
        && x.dims().last().is_some_and(|&d| d <= MAX_DIM && d % 2 == 0)
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

/// True when [`linear_epilogue`] takes rows of `cols` channels (whole 16-byte vectors).
pub fn epilogue_applies(y: &Tensor) -> bool {
    applies(y) && y.dims().last().is_some_and(|&c| c % 8 == 0)
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
    pub fn linear_epilogue(
        _: &Tensor,
        _: &Tensor,
        _: bool,
        _: Option<&Tensor>,
        _: Option<&Tensor>,
    ) -> Result<Tensor> {
        candle_core::bail!("fused kernels need the `cuda` feature")
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
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
            if batch_stride(shl) != batch_stride(scl)
                || shl.stride().last() != Some(&1)
                || scl.stride().last() != Some(&1)
            {
                candle_core::bail!(
                    "ln_modulate: shift and scale must be unit-stride views with one batch stride"
                )
            }
            let (out, out_ptr) = output(x, b * s * dim)?;
            let dev = x.device();
            let func = dev.get_or_load_custom_func(
                &format!("ln_modulate_{}", suffix(x.dtype())?),
                "vdit_fused",
                PTX,
            )?;
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
            let cfg = LaunchConfig {
                grid_dim: ((b * s) as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument list matches ln_modulate_*; buffers cover the rows indexed.
            unsafe { builder.launch(cfg) }.w()?;
            Ok((out, xl.shape().clone()))
        }
    }

    struct RmsRope {
        eps: f32,
        head_dim: usize,
    }

    impl CustomOp3 for RmsRope {
        fn name(&self) -> &'static str {
            "rms-rope"
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
            w: &CudaStorage,
            wl: &Layout,
            cs: &CudaStorage,
            csl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (b, s, dim) = xl.shape().dims3()?;
            if !xl.is_contiguous()
                || !wl.is_contiguous()
                || !csl.is_contiguous()
                || csl.dims() != [s, self.head_dim / 2, 2]
            {
                candle_core::bail!(
                    "rms_rope: contiguous x, weight and cos_sin [tokens, head_dim / 2, 2] expected"
                )
            }
            let (out, out_ptr) = output(x, b * s * dim)?;
            let dev = x.device();
            let func = dev.get_or_load_custom_func(
                &format!("rms_rope_{}", suffix(x.dtype())?),
                "vdit_fused",
                PTX,
            )?;
            let (xp, wp, csp) = (
                storage_ptr(x, xl)?,
                storage_ptr(w, wl)?,
                storage_ptr(cs, csl)?,
            );
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
            let cfg = LaunchConfig {
                grid_dim: ((b * s) as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument list matches rms_rope_*; buffers cover the rows indexed.
            unsafe { builder.launch(cfg) }.w()?;
            let heads = dim / self.head_dim;
            Ok((out, Shape::from((b, s, heads, self.head_dim))))
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
            let func = dev.get_or_load_custom_func(
                &format!("linear_epilogue_{}", suffix(y.dtype())?),
                "vdit_fused",
                PTX,
            )?;
            let yp = storage_ptr(y, yl)?;
            let bp = sparse::cuda::tensor_ptr(&self.bias)?;
            let (gp, gate_stride) = optional_ptr(&self.gate)?;
            let (rp, _) = optional_ptr(&self.residual)?;
            if [yp, bp, rp, out_ptr].iter().any(|p| p % 16 != 0) || gp % 16 != 0 {
                candle_core::bail!("linear epilogue: operands must be 16-byte aligned")
            }
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
        let weight = weight.to_dtype(x.dtype())?;
        x.contiguous()?.apply_op3_no_bwd(
            &weight,
            cos_sin,
            &RmsRope {
                eps: eps as f32,
                head_dim,
            },
        )
    }
}

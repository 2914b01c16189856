//! Launching the engine's CUDA kernels on candle's storage: device addresses of tensors,
//! output buffers, loading a kernel from a compiled module, and launching it on the device's
//! stream.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// One compiled kernel source file: the fat binary the kernel build wrote for it (machine code
/// for the common GPUs and PTX for newer ones).
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// Unique name (crate and source file), the key of the loaded-module cache.
    pub name: &'static str,
    /// The fat binary.
    pub image: &'static [u8],
}

/// The fat binary `OUT_DIR/NAME.fatbin` of the calling crate's kernel build as a [`Module`].
#[macro_export]
macro_rules! kernel_module {
    ($name:literal) => {
        $crate::cuda::Module {
            name: concat!(env!("CARGO_PKG_NAME"), "/", $name),
            image: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".fatbin")),
        }
    };
}

/// The PTX of one of candle's kernel modules that the engine's CUDA path runs, by name (its
/// convolution, sort and quantized kernels are not used there).
fn candle_ptx(name: &str) -> Option<&'static str> {
    use candle_core::cuda_backend::kernels;
    Some(match name {
        "affine" => kernels::AFFINE.ptx(),
        "binary" => kernels::BINARY.ptx(),
        "cast" => kernels::CAST.ptx(),
        "fill" => kernels::FILL.ptx(),
        "indexing" => kernels::INDEXING.ptx(),
        "reduce" => kernels::REDUCE.ptx(),
        "ternary" => kernels::TERNARY.ptx(),
        "unary" => kernels::UNARY.ptx(),
        _ => return None,
    })
}

/// Compiles the named candle kernel modules (`affine`, `binary`, `cast`, `fill`, `indexing`,
/// `reduce`, `ternary`, `unary`) for GPU `ordinal` in a context of this process's own, and drops
/// them: what is left is their machine code in the driver's on-disk cache, where candle's own
/// loads of the same PTX find it. (A driver with its cache disabled, `CUDA_CACHE_DISABLE=1`,
/// keeps nothing.)
pub fn compile_candle_modules(ordinal: usize, names: &[String]) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let context = CudaContext::new(ordinal).w()?;
    for name in names {
        let Some(ptx) = candle_ptx(name) else {
            candle_core::bail!("no candle kernel module `{name}`")
        };
        drop(context.load_module(Ptx::from_src(ptx)).w()?);
    }
    Ok(())
}

/// Modules loaded so far, per device.
static LOADED: Mutex<Vec<(DeviceId, &'static str, Arc<CudaModule>)>> = Mutex::new(Vec::new());

impl Module {
    /// This module on `dev`, loaded once per device.
    fn on(&self, dev: &CudaDevice) -> Result<Arc<CudaModule>> {
        let mut loaded = LOADED.lock().expect("module cache lock");
        if let Some((_, _, module)) = loaded
            .iter()
            .find(|(id, name, _)| *id == dev.id() && *name == self.name)
        {
            return Ok(Arc::clone(module));
        }
        let context = dev.cuda_stream().context().clone();
        let module = context
            .load_module(Ptx::from_binary(self.image.to_vec()))
            .map_err(|e| {
                candle_core::Error::Msg(format!(
                    "cannot load the CUDA kernels {}: {e} (the build has machine code for \
                     sm_80/86/89/90 and PTX for compute 8.0; an older driver than the build's \
                     CUDA toolkit cannot load it)",
                    self.name
                ))
            })?;
        loaded.push((dev.id(), self.name, Arc::clone(&module)));
        Ok(module)
    }

    /// The kernel `function` of this module on `dev`.
    pub fn function(&self, dev: &CudaDevice, function: &str) -> Result<CudaFunction> {
        self.on(dev)?.load_function(function).w()
    }

    /// Launches `function` with one parameter struct on `dev`'s stream, opting in to the
    /// dynamic shared memory `cfg` asks for.
    ///
    /// The caller guarantees that `P` has the layout of the kernel's parameter struct and that
    /// every address in it refers to a live allocation covering what the kernel indexes.
    pub fn launch<P: DeviceRepr>(
        &self,
        dev: &CudaDevice,
        function: &str,
        cfg: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        let func = self.function(dev, function)?;
        if cfg.shared_mem_bytes > 0 {
            // Static shared memory counts against the default 48 KiB as well.
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_mem_bytes as i32,
            )
            .w()?;
        }
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(params);
        // SAFETY: the parameter struct matches the kernel's (the caller's guarantee above).
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }
}

/// Device address of a slice (valid while the slice lives).
pub fn ptr<T>(dev: &CudaDevice, s: &CudaSlice<T>) -> u64 {
    let stream = dev.cuda_stream();
    let (p, _sync) = s.device_ptr(&stream);
    p
}

/// Device address of a storage view's first element (bf16, f16, f32 or u32).
pub fn storage_ptr(s: &CudaStorage, l: &Layout) -> Result<u64> {
    let dev = s.device();
    let (base, size) = match s.dtype() {
        DType::BF16 => (ptr(dev, s.as_cuda_slice::<half::bf16>()?), 2),
        DType::F16 => (ptr(dev, s.as_cuda_slice::<half::f16>()?), 2),
        DType::F32 => (ptr(dev, s.as_cuda_slice::<f32>()?), 4),
        DType::U32 => (ptr(dev, s.as_cuda_slice::<u32>()?), 4),
        dt => candle_core::bail!("kernels do not take {dt:?}"),
    };
    Ok(base + (l.start_offset() * size) as u64)
}

/// The CUDA storage of a tensor with its layout, for the time `use_it` runs.
pub fn with_storage<R>(
    t: &Tensor,
    use_it: impl FnOnce(&CudaStorage, &Layout) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("expected a CUDA tensor")
    };
    use_it(s, layout)
}

/// Device address of the first element of a contiguous CUDA tensor.
pub fn tensor_ptr(t: &Tensor) -> Result<u64> {
    with_storage(t, |s, layout| {
        if !layout.is_contiguous() {
            candle_core::bail!("expected a contiguous tensor")
        }
        storage_ptr(s, layout)
    })
}

/// The kernel name suffix of a dtype (`bf16`, `f16`, `f32`).
pub fn dtype_suffix(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        dt => candle_core::bail!("kernels do not take {dt:?}"),
    })
}

/// An uninitialised buffer of `n` elements of `dtype` (bf16, f16 or f32) on `dev`, with its
/// address; the kernel that gets it must write every element.
pub fn output(dev: &CudaDevice, dtype: DType, n: usize) -> Result<(CudaStorage, u64)> {
    // SAFETY (the three allocations): the caller's kernel writes every element before any read.
    let (storage, p) = match dtype {
        DType::BF16 => {
            let o = unsafe { dev.alloc::<half::bf16>(n)? };
            let p = ptr(dev, &o);
            (CudaStorage::wrap_cuda_slice(o, dev.clone()), p)
        }
        DType::F16 => {
            let o = unsafe { dev.alloc::<half::f16>(n)? };
            let p = ptr(dev, &o);
            (CudaStorage::wrap_cuda_slice(o, dev.clone()), p)
        }
        DType::F32 => {
            let o = unsafe { dev.alloc::<f32>(n)? };
            let p = ptr(dev, &o);
            (CudaStorage::wrap_cuda_slice(o, dev.clone()), p)
        }
        dt => candle_core::bail!("kernels do not take {dt:?}"),
    };
    Ok((storage, p))
}

/// An uninitialised contiguous tensor of `dims` and `dtype` (bf16, f16 or f32) on `dev`, with
/// its address; the kernel that gets it must write every element.
pub fn output_tensor(dev: &CudaDevice, dtype: DType, dims: &[usize]) -> Result<(Tensor, u64)> {
    let (storage, p) = output(dev, dtype, dims.iter().product())?;
    Ok((untracked_tensor(storage, dims), p))
}

/// A contiguous tensor of `shape` over a kernel's output storage, outside any graph.
pub fn untracked_tensor(storage: CudaStorage, shape: impl Into<candle_core::Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// Fails unless every address is 16-byte aligned (for kernels that move 16-byte vectors).
pub fn check_aligned(ptrs: &[u64], kernel: &str) -> Result<()> {
    if ptrs.iter().any(|p| p % 16 != 0) {
        candle_core::bail!("{kernel}: operands must be 16-byte aligned")
    }
    Ok(())
}

//! Convolutions on CUDA through cuDNN, on channels-last frames: `x` `[n, d, h, w, c_in]` (`d`
//! frames) by a filter `[c_out, kd, kh, kw, c_in]` into `y` `[n, d', h', w', c_out]`, accumulated
//! onto what `y` already holds (its bias, and a residual where one follows), so that a
//! convolution with its bias and residual is one pass over its output.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{self, sys, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp3, Layout, Result, Tensor, WithDType};
use std::cell::RefCell;
use std::sync::Arc;

/// `y += conv(x, filter)` with zero padding `pads` and strides `strides` over (d, h, w).
pub fn accumulate(
    y: &Tensor,
    x: &Tensor,
    filter: &Tensor,
    pads: [usize; 3],
    strides: [usize; 3],
) -> Result<()> {
    y.inplace_op3(&x.contiguous()?, filter, &Accumulate { pads, strides })
}

struct Accumulate {
    pads: [usize; 3],
    strides: [usize; 3],
}

thread_local! {
    /// cuDNN handles (not shareable between threads), one per device, bound to candle's stream.
    static HANDLES: RefCell<Vec<(DeviceId, Arc<Cudnn>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's cuDNN handle for `dev`.
fn handle(dev: &candle_core::CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with_borrow_mut(|handles| {
        if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(Arc::clone(h));
        }
        let handle = Cudnn::new(dev.cuda_stream()).map_err(|e| {
            candle_core::Error::Msg(format!(
                "cannot start cuDNN: {e:?} (the CUDA build needs cuDNN 9, libcudnn.so.9, at run time)"
            ))
        })?;
        handles.push((dev.id(), Arc::clone(&handle)));
        Ok(handle)
    })
}

fn cudnn_error(what: &str) -> impl Fn(cudnn::CudnnError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
}

/// Dims and packed channels-last strides of a `[n, d, h, w, c]` tensor, in cuDNN's (n, c, d, h,
/// w) order.
fn ndhwc(dims: [usize; 5]) -> ([i32; 5], [i32; 5]) {
    let [n, d, h, w, c] = dims.map(|x| x as i32);
    ([n, c, d, h, w], [d * h * w * c, 1, h * w * c, w * c, c])
}

fn dims5(l: &Layout) -> Result<[usize; 5]> {
    let (a, b, c, d, e) = l.shape().dims5()?;
    Ok([a, b, c, d, e])
}

impl Accumulate {
    fn run<T>(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
        f: &CudaStorage,
        fl: &Layout,
    ) -> Result<()>
    where
        T: CudaDType + CudnnDataType + DeviceRepr + WithDType,
    {
        if !(yl.is_contiguous() && xl.is_contiguous() && fl.is_contiguous()) {
            candle_core::bail!("cuDNN convolution: contiguous operands expected")
        }
        let dev = x.device().clone();
        let cudnn = handle(&dev)?;
        let (xd, xs) = ndhwc(dims5(xl)?);
        let (yd, ys) = ndhwc(dims5(yl)?);
        let [c_out, kd, kh, kw, c_in] = dims5(fl)?.map(|v| v as i32);
        let x_desc = cudnn
            .create_nd_tensor::<T>(&xd, &xs)
            .map_err(cudnn_error("input descriptor"))?;
        let y_desc = cudnn
            .create_nd_tensor::<T>(&yd, &ys)
            .map_err(cudnn_error("output descriptor"))?;
        let w_desc = cudnn
            .create_nd_filter::<T>(
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                &[c_out, c_in, kd, kh, kw],
            )
            .map_err(cudnn_error("filter descriptor"))?;
        let mut conv = cudnn
            .create_convnd::<f32>(
                &self.pads.map(|p| p as i32),
                &self.strides.map(|s| s as i32),
                &[1, 1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(cudnn_error("convolution descriptor"))?;
        conv.set_math_type(sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)
            .map_err(cudnn_error("math type"))?;
        let op = ConvForward {
            conv: &conv,
            x: &x_desc,
            w: &w_desc,
            y: &y_desc,
        };
        let algo = op.pick_algorithm().unwrap_or(
            sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        );
        let bytes = op
            .get_workspace_size(algo)
            .map_err(cudnn_error("workspace size"))?;
        let mut workspace = dev.alloc_zeros::<u8>(bytes.max(1))?;
        let xs = x.as_cuda_slice::<T>()?;
        let fs = f.as_cuda_slice::<T>()?;
        let ys = y.as_cuda_slice_mut::<T>()?;
        // SAFETY: the descriptors describe these contiguous buffers (dims read from their
        // layouts), and the workspace has the size cuDNN asked for.
        unsafe {
            op.launch(
                algo,
                Some(&mut workspace),
                (T::from_f64(1.0), T::from_f64(1.0)),
                &xs.slice(xl.start_offset()..),
                &fs.slice(fl.start_offset()..),
                &mut ys.slice_mut(yl.start_offset()..),
            )
        }
        .map_err(cudnn_error("convolution"))?;
        Ok(())
    }
}

impl InplaceOp3 for Accumulate {
    fn name(&self) -> &'static str {
        "cudnn-convolution"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("cuDNN convolutions run on CUDA only")
    }

    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
        f: &CudaStorage,
        fl: &Layout,
    ) -> Result<()> {
        match x.dtype() {
            DType::BF16 => self.run::<half::bf16>(y, yl, x, xl, f, fl),
            DType::F16 => self.run::<half::f16>(y, yl, x, xl, f, fl),
            DType::F32 => self.run::<f32>(y, yl, x, xl, f, fl),
            dt => candle_core::bail!("cuDNN convolutions take bf16, f16 or f32, not {dt:?}"),
        }
    }
}

//! Convolutions on CUDA through cuDNN, on channels-last frames: `x` `[n, d, h, w, c_in]` (`d`
//! frames) by a filter `[c_out, kd, kh, kw, c_in]` into `y` `[n, d', h', w', c_out]`, accumulated
//! onto what `y` already holds (its bias, and a residual where one follows), so that a
//! convolution with its bias and residual is one pass over its output.
//!
//! cuDNN's heuristics pick each shape's algorithm once (the choice and its workspace size are
//! cached per thread and shape), and one workspace per device grows to the largest asked for.
//! Half-precision convolutions use tensor cores; f32 ones use plain FMA math (no TF32), so that
//! f32 stays a precise reference.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{self, sys, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::{CpuStorage, CudaStorage, DType, InplaceOp3, Layout, Result, Tensor, WithDType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Largest workspace an algorithm may ask for; a heuristic choice above it gives way to a GEMM-
/// based algorithm that needs little or none (see [`choose`]).
const WORKSPACE_LIMIT: usize = 256 << 20;

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

/// What one shape of convolution runs with.
#[derive(Clone, Copy)]
struct Plan {
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

/// A shape: dtype, input and filter dims, pads and strides.
type ShapeKey = (DType, [usize; 5], [usize; 5], [usize; 3], [usize; 3]);

/// One device's cuDNN state on one thread.
struct DeviceState {
    id: DeviceId,
    handle: Arc<Cudnn>,
    plans: HashMap<ShapeKey, Plan>,
    workspace: Option<CudaSlice<u8>>,
}

thread_local! {
    /// cuDNN handles (not shareable between threads), bound to candle's stream, with their plans
    /// and workspace; one per device.
    static STATES: RefCell<Vec<DeviceState>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cuDNN state for `dev`, creating it on first use.
fn with_state<R>(
    dev: &candle_core::CudaDevice,
    f: impl FnOnce(&mut DeviceState) -> Result<R>,
) -> Result<R> {
    STATES.with_borrow_mut(|states| {
        let at = match states.iter().position(|s| s.id == dev.id()) {
            Some(at) => at,
            None => {
                let handle = Cudnn::new(dev.cuda_stream()).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "cannot start cuDNN: {e:?} (the CUDA build needs cuDNN 9, libcudnn.so.9, at run time)"
                    ))
                })?;
                states.push(DeviceState {
                    id: dev.id(),
                    handle,
                    plans: HashMap::new(),
                    workspace: None,
                });
                states.len() - 1
            }
        };
        f(&mut states[at])
    })
}

impl DeviceState {
    /// The workspace, grown to at least `bytes`. Its contents are never read before cuDNN
    /// writes them.
    fn workspace(
        &mut self,
        dev: &candle_core::CudaDevice,
        bytes: usize,
    ) -> Result<&mut CudaSlice<u8>> {
        let big_enough = self.workspace.as_ref().is_some_and(|w| w.len() >= bytes);
        if !big_enough {
            self.workspace = None;
            // SAFETY: scratch memory, written by cuDNN before it is read.
            let fresh = unsafe { dev.cuda_stream().alloc::<u8>(bytes.max(1)) }
                .map_err(|e| candle_core::Error::Msg(format!("cuDNN workspace: {e:?}")))?;
            self.workspace = Some(fresh);
        }
        Ok(self.workspace.as_mut().expect("just allocated"))
    }
}

fn cudnn_error(what: &str) -> impl Fn(cudnn::CudnnError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("cuDNN {what}: {e:?}"))
}

/// `values` as cuDNN's 32-bit sizes; one that does not fit is an error, never a wrapped size.
fn ints<const N: usize>(values: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0; N];
    for (o, v) in out.iter_mut().zip(values) {
        *o = i32::try_from(v).map_err(|_| {
            candle_core::Error::Msg(format!(
                "a convolution operand spans {v} elements, more than cuDNN's 32-bit sizes hold: \
                 decode in spatial tiles (vae::Tiling) or at a smaller size"
            ))
        })?;
    }
    Ok(out)
}

/// Dims and packed channels-last strides of a `[n, d, h, w, c]` tensor, in cuDNN's (n, c, d, h,
/// w) order. (The strides are element counts of an allocated tensor, so they do not overflow
/// usize.)
fn ndhwc(dims: [usize; 5]) -> Result<([i32; 5], [i32; 5])> {
    let [n, d, h, w, c] = dims;
    Ok((
        ints([n, c, d, h, w])?,
        ints([d * h * w * c, 1, h * w * c, w * c, c])?,
    ))
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
        let (x_dims, y_dims, f_dims) = (dims5(xl)?, dims5(yl)?, dims5(fl)?);
        with_state(&dev, |state| {
            let cudnn = Arc::clone(&state.handle);
            let (xd, xs) = ndhwc(x_dims)?;
            let (yd, ys) = ndhwc(y_dims)?;
            let [c_out, kd, kh, kw, c_in] = ints(f_dims)?;
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
                    &ints(self.pads)?,
                    &ints(self.strides)?,
                    &[1, 1, 1],
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(cudnn_error("convolution descriptor"))?;
            let math = if T::DTYPE == DType::F32 {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            conv.set_math_type(math).map_err(cudnn_error("math type"))?;
            let op = ConvForward {
                conv: &conv,
                x: &x_desc,
                w: &w_desc,
                y: &y_desc,
            };
            let key = (T::DTYPE, x_dims, f_dims, self.pads, self.strides);
            let plan = match state.plans.get(&key) {
                Some(plan) => *plan,
                None => {
                    let plan = choose(&op)?;
                    state.plans.insert(key, plan);
                    plan
                }
            };
            let workspace = state.workspace(&dev, plan.workspace)?;
            let xs = x.as_cuda_slice::<T>()?;
            let fs = f.as_cuda_slice::<T>()?;
            let ys = y.as_cuda_slice_mut::<T>()?;
            // SAFETY: the descriptors describe these contiguous buffers (dims read from their
            // layouts), and the workspace holds at least what cuDNN asked for this algorithm.
            unsafe {
                op.launch(
                    plan.algo,
                    Some(workspace),
                    (T::from_f64(1.0), T::from_f64(1.0)),
                    &xs.slice(xl.start_offset()..),
                    &fs.slice(fl.start_offset()..),
                    &mut ys.slice_mut(yl.start_offset()..),
                )
            }
            .map_err(cudnn_error("convolution"))
        })
    }
}

/// cuDNN's first heuristic choice for `op`, unless it fails or wants more than
/// [`WORKSPACE_LIMIT`] of workspace; then the first of the GEMM-based algorithms this shape
/// supports within the limit (the plain implicit GEMM, which needs none, takes every shape).
fn choose(op: &ConvForward<impl CudnnDataType, f32, impl CudnnDataType>) -> Result<Plan> {
    use sys::cudnnConvolutionFwdAlgo_t as Algo;
    let fallbacks = [
        Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    ];
    let mut last_error = None;
    for algo in op.pick_algorithm().into_iter().chain(fallbacks) {
        match op.get_workspace_size(algo) {
            Ok(workspace) if workspace <= WORKSPACE_LIMIT => return Ok(Plan { algo, workspace }),
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(candle_core::Error::Msg(format!(
        "cuDNN has no convolution algorithm for this shape within {} MiB of workspace ({last_error:?})",
        WORKSPACE_LIMIT >> 20
    )))
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

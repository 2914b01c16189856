//! Training's convolution columns as one operation with its adjoint.
//!
//! On CUDA a training convolution is a matmul by flat-shift columns (see [`crate::conv`]): for
//! each temporal tap and spatial offset `(ky, kx)`, the padded frames shifted by
//! `ky * row + kx`. Built from candle's slices and one concatenation, the columns cost a copy per
//! tap, and their backward pass a zero-filled frame-sized buffer and an addition per tap, which
//! took most of the VAE's training step. Here the columns are one gather
//! (`kernels/columns.cu`) and their gradient one gather-sum, the exact adjoint.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use vdit_core::storage::contiguous_f32;

/// Which columns to gather from channels-first frames `[b, l, c, P]` (`P` padded pixels per
/// frame, flattened rows of `row` pixels): entry `(b', fo)`, row `((tap * k + ky) * k + kx) * c
/// + ch`, column `j` is `frames[b', fo * stride + tap, ch, start + ky * row + kx + j]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShiftColumns {
    /// Temporal taps of the kernel.
    pub taps: usize,
    /// Side `k` of the square spatial kernel.
    pub kernel: usize,
    /// Pixels per row of a padded frame.
    pub row: usize,
    /// Temporal stride.
    pub stride: usize,
    /// Output frames per batch element.
    pub frames_out: usize,
    /// First output position (a flattened padded pixel).
    pub start: usize,
    /// Output positions.
    pub len: usize,
}

/// Frames `[b, l, c, P]`.
#[derive(Clone, Copy, Debug)]
struct FrameDims {
    b: usize,
    l: usize,
    c: usize,
    pixels: usize,
}

impl FrameDims {
    fn shape(&self) -> Shape {
        Shape::from((self.b, self.l, self.c, self.pixels))
    }
}

impl ShiftColumns {
    /// The columns of `frames` `[b, l, c, P]`: `[b * frames_out, taps * k * k * c, len]`, with a
    /// backward pass.
    pub fn gather(&self, frames: &Tensor) -> Result<Tensor> {
        frames.contiguous()?.apply_op1(*self)
    }

    /// Rows of the columns for `c` channels.
    fn rows(&self, c: usize) -> usize {
        self.taps * self.kernel * self.kernel * c
    }

    /// The frames' dims, checked to hold every position the columns read.
    fn frames(&self, shape: &Shape) -> Result<FrameDims> {
        let (b, l, c, pixels) = shape.dims4()?;
        let frames_needed = self
            .frames_out
            .checked_sub(1)
            .map(|f| f * self.stride + self.taps);
        let reach = self.start + (self.kernel.max(1) - 1) * (self.row + 1) + self.len;
        let fits = self.taps > 0
            && self.kernel > 0
            && self.stride > 0
            && self.len > 0
            && frames_needed.is_some_and(|f| f <= l)
            && reach <= pixels;
        if !fits {
            candle_core::bail!(
                "shift columns: {self:?} reach outside frames of {:?}",
                shape.dims()
            )
        }
        Ok(FrameDims { b, l, c, pixels })
    }

    /// The columns' shape for `frames`.
    fn columns_shape(&self, f: FrameDims) -> Shape {
        Shape::from((f.b * self.frames_out, self.rows(f.c), self.len))
    }

    /// For each column entry in order, the flat index of the frame element it copies.
    fn sources(&self, f: FrameDims) -> impl Iterator<Item = usize> + '_ {
        let k = self.kernel;
        (0..f.b * self.frames_out).flat_map(move |nf| {
            let (b, fo) = (nf / self.frames_out, nf % self.frames_out);
            (0..self.rows(f.c)).flat_map(move |r| {
                let (ch, offset) = (r % f.c, r / f.c);
                let (kx, ky, tap) = (offset % k, (offset / k) % k, offset / (k * k));
                let frame = b * f.l + fo * self.stride + tap;
                let first = (frame * f.c + ch) * f.pixels + self.start + ky * self.row + kx;
                first..first + self.len
            })
        })
    }
}

impl CustomOp1 for ShiftColumns {
    fn name(&self) -> &'static str {
        "shift-columns"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let frames = contiguous_f32(s, l, "shift columns")?;
        let dims = self.frames(l.shape())?;
        let columns = self.sources(dims).map(|i| frames[i]).collect();
        Ok((CpuStorage::F32(columns), self.columns_shape(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = self.frames(l.shape())?;
        let shape = self.columns_shape(dims);
        let out = cuda::launch(self, dims, "shift_columns", s, l, shape.elem_count())?;
        Ok((out, shape))
    }

    fn bwd(&self, frames: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let adjoint = Adjoint {
            of: *self,
            frames: self.frames(frames.shape())?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&adjoint)?))
    }
}

/// The adjoint of [`ShiftColumns`]: column gradients to frame gradients, each frame element
/// the sum of the entries that copied it.
struct Adjoint {
    of: ShiftColumns,
    frames: FrameDims,
}

impl CustomOp1 for Adjoint {
    fn name(&self) -> &'static str {
        "shift-columns-adjoint"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let columns = contiguous_f32(s, l, "shift columns adjoint")?;
        let f = self.frames;
        let mut frames = vec![0f32; f.shape().elem_count()];
        for (value, i) in columns.iter().zip(self.of.sources(f)) {
            frames[i] += value;
        }
        Ok((CpuStorage::F32(frames), f.shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.frames.shape();
        let name = "shift_columns_adjoint";
        let out = cuda::launch(&self.of, self.frames, name, s, l, shape.elem_count())?;
        Ok((out, shape))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{FrameDims, ShiftColumns};
    use crate::kernel_params::ColumnParams;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout, Result};
    use vdit_core::cuda::{dtype_suffix, output, storage_ptr, Module};

    const COLUMNS: Module = vdit_core::kernel_module!("columns");
    const THREADS: u32 = 256;

    // SAFETY: plain old data with the C layout of the kernels' struct, which the build checks
    // (kernel_params.rs).
    unsafe impl DeviceRepr for ColumnParams {}

    /// Runs `kernel` (the gather or its adjoint) from contiguous `s` into `total` fresh elements.
    pub(super) fn launch(
        spec: &ShiftColumns,
        f: FrameDims,
        kernel: &str,
        s: &CudaStorage,
        l: &Layout,
        total: usize,
    ) -> Result<CudaStorage> {
        if !l.is_contiguous() {
            candle_core::bail!("{kernel}: expected a contiguous tensor")
        }
        let too_large = |v: usize| candle_core::Error::Msg(format!("{kernel}: {v} is too large"));
        let int = |v: usize| i32::try_from(v).map_err(|_| too_large(v));
        let long = |v: usize| i64::try_from(v).map_err(|_| too_large(v));
        let dev = s.device().clone();
        let (out, output_ptr) = output(&dev, s.dtype(), total)?;
        let params = ColumnParams {
            input: storage_ptr(s, l)?,
            output: output_ptr,
            total: long(total)?,
            pixels: long(f.pixels)?,
            start: long(spec.start)?,
            len: long(spec.len)?,
            frames: int(f.l)?,
            channels: int(f.c)?,
            taps: int(spec.taps)?,
            kernel: int(spec.kernel)?,
            row: int(spec.row)?,
            stride: int(spec.stride)?,
            frames_out: int(spec.frames_out)?,
        };
        let blocks = total.div_ceil(THREADS as usize);
        let config = LaunchConfig {
            grid_dim: (u32::try_from(blocks).map_err(|_| too_large(total))?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = COLUMNS.function(&dev, &format!("{kernel}_{}", dtype_suffix(s.dtype())?))?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&params);
        // SAFETY: the kernel takes one ColumnParams; the input holds the frames (or columns)
        // the spec was checked against and the output `total` elements, each written once.
        unsafe { builder.launch(config) }.w()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn spec(stride: usize) -> ShiftColumns {
        ShiftColumns {
            taps: 3,
            kernel: 3,
            row: 7,
            stride,
            frames_out: 2,
            start: 4,
            len: 23,
        }
    }

    /// Each column entry is the frame element the definition names (checked entry by entry
    /// against a direct indexing of fresh random frames), for temporal strides 1 and 2.
    #[test]
    fn columns_copy_the_shifted_frames() -> Result<()> {
        for stride in [1, 2] {
            let s = spec(stride);
            let frames = Tensor::randn(0f32, 1.0, (2, 5, 3, 7 * 7), &Device::Cpu)?;
            let columns = s.gather(&frames)?;
            assert_eq!(columns.dims(), [4, 27 * 3, 23]);
            let fr: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
                .map(|b| frames.get(b)?.to_vec3::<f32>())
                .collect::<Result<_>>()?;
            let cols = columns.to_vec3::<f32>()?;
            for (nf, rows) in cols.iter().enumerate() {
                let (b, fo) = (nf / 2, nf % 2);
                for (r, values) in rows.iter().enumerate() {
                    let (ch, offset) = (r % 3, r / 3);
                    let (kx, ky, tap) = (offset % 3, (offset / 3) % 3, offset / 9);
                    for (j, &v) in values.iter().enumerate() {
                        let want = fr[b][fo * stride + tap][ch][4 + ky * 7 + kx + j];
                        assert_eq!(v, want, "entry ({nf}, {r}, {j})");
                    }
                }
            }
        }
        Ok(())
    }

    /// The backward pass is the adjoint: `<columns(x), g> = <x, adjoint(g)>` for fresh random
    /// frames `x` and column gradients `g` (to 1e-4 relative), and frame elements no column
    /// reads get zero gradient.
    #[test]
    fn backward_is_the_adjoint() -> Result<()> {
        for stride in [1, 2] {
            let s = spec(stride);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 3, 7 * 7), &Device::Cpu)?)?;
            let columns = s.gather(x.as_tensor())?;
            let g = Tensor::randn(0f32, 1.0, columns.shape(), &Device::Cpu)?;
            let grads = (&columns * &g)?.sum_all()?.backward()?;
            let dx = grads.get(x.as_tensor()).expect("a gradient");
            let lhs = (&columns * &g)?.sum_all()?.to_scalar::<f32>()?;
            let rhs = (x.as_tensor() * dx)?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
            // the first `start` pixels of every frame are never read
            let unread = dx
                .narrow(D::Minus1, 0, 4)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert_eq!(unread, 0.0);
        }
        Ok(())
    }

    /// Columns that would read past the frames are an error, not an out-of-bounds read.
    #[test]
    fn reaching_outside_the_frames_is_an_error() -> Result<()> {
        let frames = Tensor::zeros((1, 3, 2, 30), candle_core::DType::F32, &Device::Cpu)?;
        assert!(spec(1).gather(&frames).is_err());
        Ok(())
    }
}

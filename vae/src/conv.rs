//! Convolutions over frame sequences in the working layout of [`crate::frames`].
//!
//! On CUDA they are cuDNN's (channels-last, tensor cores), accumulated onto an output that
//! already holds the bias and any residual. On the CPU candle has no conv3d and its conv2d is
//! slow for the narrow layers of this VAE, so both are one matmul over "flat-shift" columns of
//! channels-first frames: a frame, zero-padded and flattened row by row, shifted by
//! `ky * padded_width + kx` is the input every output pixel sees at kernel offset `(ky, kx)` (the
//! outputs in the padding columns are computed and dropped). Stacking these contiguous shifted
//! slices for every temporal and spatial tap gives the im2col matrix without any strided gather;
//! it is built in blocks of bounded size.
//!
//! Time is causal: each output frame sees only itself and earlier frames, which lets a video be
//! processed chunk by chunk with each layer keeping the trailing frames of its input
//! ([`TimeCache`]).

use crate::columns::ShiftColumns;
use crate::frames::{join_time, last_frames};
use crate::profile;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Most elements of one block of im2col columns: on the CPU about 1 MiB of f32, which measured
/// fastest (the blocks stay in cache and their allocations are reused); on accelerators 2^28,
/// for fewer kernel launches.
fn column_budget(x: &Tensor) -> usize {
    if x.device().is_cpu() {
        1 << 18
    } else {
        1 << 28
    }
}

/// Fewest output positions per block, so that each block's matmul stays efficient.
const MIN_BLOCK: usize = 256;

/// The filter of a convolution in the form its device's path reads.
#[derive(Clone, Debug)]
enum Filter {
    /// CPU: `[c_out, kt * k * k * c_in]`, columns ordered (tap, ky, kx, channel), for the matmul
    /// over flat-shift columns (a strided 2D convolution keeps `[c_out, c_in, k, k]`).
    Columns(Tensor),
    /// CUDA: cuDNN's channels-last filter `[c_out', kt, k, k, c_in]` and the bias `[c_out']`,
    /// both zero-padded to `c_out'`, the next multiple of 8 output channels (cuDNN's tensor-core
    /// kernels want whole vectors; the video head has 3).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    ChannelsLast { filter: Tensor, bias: Tensor },
}

/// Output channels rounded up to whole 8-channel vectors.
const CHANNEL_VECTOR: usize = 8;

/// The filter of `weight` `[c_out, c_in, kt, k, k]` with `bias` `[c_out]` for the device it is
/// on; `columns` turns the weight into the CPU's form.
fn filter_for(
    weight: &Tensor,
    bias: &Tensor,
    columns: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Filter> {
    if cfg!(feature = "cuda") && weight.device().is_cuda() {
        let c_out = weight.dim(0)?;
        let missing = c_out.next_multiple_of(CHANNEL_VECTOR) - c_out;
        Ok(Filter::ChannelsLast {
            filter: weight
                .permute((0, 2, 3, 4, 1))?
                .pad_with_zeros(0, 0, missing)?
                .contiguous()?,
            bias: bias.pad_with_zeros(0, 0, missing)?,
        })
    } else {
        Ok(Filter::Columns(columns(weight)?))
    }
}

/// A stride-1 convolution over `kt` input frame sets (temporal taps) and a `k x k` spatial
/// kernel with symmetric zero padding: cuDNN on CUDA, one matmul over flat-shift columns on the
/// CPU.
#[derive(Clone, Debug)]
struct TapConv {
    filter: Filter,
    /// Training (gradients tracked): the weight as `[c_out, kt * c_in * k * k]`
    /// for [`TapConv::forward_gathered`].
    gathered: Option<Tensor>,
    /// `[c_out]`.
    bias: Tensor,
    /// Temporal taps `kt`.
    taps: usize,
    /// Spatial kernel side `k`.
    kernel: usize,
    /// Spatial zero padding on each side.
    padding: usize,
}

impl TapConv {
    /// `weight` is `[c_out, c_in, kt, k, k]`.
    fn new(weight: &Tensor, bias: Tensor, padding: usize) -> Result<Self> {
        let (_, _, kt, k, _) = weight.dims5()?;
        let gathered = if weight.track_op() {
            Some(weight.permute((0, 2, 1, 3, 4))?.flatten_from(1)?)
        } else {
            None
        };
        Ok(Self {
            gathered,
            taps: kt,
            filter: filter_for(weight, &bias, |w| {
                w.permute((0, 2, 3, 4, 1))?.flatten_from(1)?.contiguous()
            })?,
            bias,
            kernel: k,
            padding,
        })
    }

    /// Convolves `window` (`[b, l, ...]` frames, working layout) with temporal stride `stride`
    /// and no temporal padding into `(l - kt) / stride + 1` frames, plus `residual` when given.
    fn forward(&self, window: &Tensor, stride: usize, residual: Option<&Tensor>) -> Result<Tensor> {
        if let Some(weight) = &self.gathered {
            let y = self.forward_gathered(weight, window, stride)?;
            return match residual {
                Some(r) => y + r,
                None => Ok(y),
            };
        }
        match &self.filter {
            Filter::Columns(columns) => {
                let y = self.forward_in_blocks(columns, window, stride, column_budget(window))?;
                match residual {
                    Some(r) => y + r,
                    None => Ok(y),
                }
            }
            Filter::ChannelsLast { filter, bias } => {
                self.forward_cudnn(filter, bias, window, stride, residual)
            }
        }
    }

    /// The CUDA path: channels-last frames through cuDNN, into `bias.dim(0)` channels (the
    /// output's, padded), of which the first `c_out` are kept.
    #[cfg(feature = "cuda")]
    fn forward_cudnn(
        &self,
        filter: &Tensor,
        bias: &Tensor,
        window: &Tensor,
        stride: usize,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, h, w, c_in) = window.dims5()?;
        let (kt, k, p) = (self.taps, self.kernel, self.padding);
        self.check(l, h, w)?;
        let c_out = self.bias.dim(0)?;
        let padded = bias.dim(0)?;
        let dims = [
            b,
            (l - kt) / stride + 1,
            h + 2 * p + 1 - k,
            w + 2 * p + 1 - k,
            padded,
        ];
        let dev = window.device();
        // the residual joins in the accumulation unless the output is padded
        let fused = residual.filter(|_| padded == c_out);
        let y = profile::timed(
            dev,
            || "bias (+ residual)".into(),
            0.0,
            || crate::kernels::bias_fill(bias, fused, &dims),
        )?;
        let flops = 2.0 * dims.iter().product::<usize>() as f64 * (c_in * kt * k * k) as f64;
        let label = || {
            format!(
                "conv {kt}x{k}x{k} {c_in}->{c_out}, {}x{}x{} frames",
                dims[2], dims[3], dims[1]
            )
        };
        profile::timed(dev, label, flops, || {
            crate::cudnn::accumulate(&y, window, filter, [0, p, p], [stride, 1, 1])
        })?;
        if padded == c_out {
            return Ok(y);
        }
        let y = y.narrow(4, 0, c_out)?.contiguous()?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }

    #[cfg(not(feature = "cuda"))]
    fn forward_cudnn(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: usize,
        _: Option<&Tensor>,
    ) -> Result<Tensor> {
        candle_core::bail!("channels-last convolutions need the `cuda` feature")
    }

    /// Fails unless `l` frames of `h x w` fill the kernel.
    fn check(&self, l: usize, h: usize, w: usize) -> Result<()> {
        let (kt, k, p) = (self.taps, self.kernel, self.padding);
        if l < kt || h + 2 * p < k - 1 || w + 2 * p < k - 1 {
            return Err(candle_core::Error::Msg(format!(
                "a {kt}x{k}x{k} convolution (padding {p}) cannot take {l} frames of {h}x{w}"
            )));
        }
        Ok(())
    }

    /// The training path on channels-first `window` `[b, l, c, h, w]`. On the CPU every
    /// temporal tap's im2col matrix is gathered by [`gathered_columns`], then one matmul by
    /// `weight` `[c_out, kt * c_in * k * k]` (columns tap, channel, ky, kx). On CUDA, where
    /// candle's scatter-add along a last dim runs nearly serially and its convolution backward
    /// is slow, it is the flat-shift columns of [`TapConv::forward_in_blocks`], gathered and
    /// scattered back by one kernel each.
    fn forward_gathered(&self, weight: &Tensor, window: &Tensor, stride: usize) -> Result<Tensor> {
        if window.device().is_cuda() {
            let columns = self.flat_shift_columns(weight, window.dim(2)?)?;
            return self.forward_in_blocks(&columns, window, stride, column_budget(window));
        }
        let (b, l, c, h, w) = window.dims5()?;
        let (kt, p) = (self.taps, self.padding);
        self.check(l, h, w)?;
        let padded = window.pad_with_zeros(3, p, p)?.pad_with_zeros(4, p, p)?;
        let frames_out = (l - kt) / stride + 1;
        let n = b * frames_out;
        let mut taps = Vec::with_capacity(kt);
        let mut size = (0, 0);
        for i in 0..kt {
            let frames = if stride == 1 {
                padded.narrow(1, i, frames_out)?
            } else {
                let ids: Vec<u32> = (0..frames_out).map(|j| (i + j * stride) as u32).collect();
                padded.index_select(&Tensor::new(ids, window.device())?, 1)?
            };
            let (columns, h_out, w_out) = gathered_columns(
                &frames.reshape((n, c, h + 2 * p, w + 2 * p))?,
                self.kernel,
                1,
            )?;
            taps.push(columns);
            size = (h_out, w_out);
        }
        let columns = match taps.as_slice() {
            [one] => one.clone(),
            _ => Tensor::cat(&taps, 1)?,
        };
        let c_out = self.bias.dim(0)?;
        weight
            .broadcast_matmul(&columns)?
            .broadcast_add(&self.bias.reshape((1, c_out, 1))?)?
            .reshape((b, frames_out, c_out, size.0, size.1))
    }

    /// The training weight `[c_out, kt * c_in * k * k]` (tap, channel, ky, kx) reordered for
    /// the flat-shift columns (tap, ky, kx, channel).
    fn flat_shift_columns(&self, weight: &Tensor, c_in: usize) -> Result<Tensor> {
        let (c_out, k) = (self.bias.dim(0)?, self.kernel);
        weight
            .reshape((c_out, self.taps, c_in, k, k))?
            .permute((0, 1, 3, 4, 2))?
            .flatten_from(1)
    }

    /// Channels-first `window` `[b, l, c, h, w]` convolved in im2col blocks of at most `budget`
    /// elements (but at least [`MIN_BLOCK`] positions), each one matmul by `columns`: on the
    /// CPU a block's columns are its contiguous shifted slices joined, on CUDA (training) one
    /// [`ShiftColumns`] gather.
    fn forward_in_blocks(
        &self,
        columns: &Tensor,
        window: &Tensor,
        stride: usize,
        budget: usize,
    ) -> Result<Tensor> {
        let (b, l, c, h, w) = window.dims5()?;
        let (kt, k, p) = (self.taps, self.kernel, self.padding);
        self.check(l, h, w)?;
        let (h_out, w_out) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        let row = w + 2 * p;
        // one spare zero row keeps the last shifted slice inside the frame
        let spare = usize::from(k > 1);
        let padded = window
            .pad_with_zeros(3, p, p + spare)?
            .pad_with_zeros(4, p, p)?
            .reshape((b, l, c, (h + 2 * p + spare) * row))?;
        let frames_out = (l - kt) / stride + 1;
        let n = b * frames_out;
        let total = h_out * row;
        let block = (budget / (n * columns.dim(1)?)).max(MIN_BLOCK).min(total);
        let c_out = self.bias.dim(0)?;
        let finish = |outs: Vec<Tensor>| {
            Tensor::cat(&outs, 2)?
                .reshape((n, c_out, h_out, row))?
                .narrow(3, 0, w_out)?
                .broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)?
                .reshape((b, frames_out, c_out, h_out, w_out))
        };
        if padded.device().is_cuda() {
            // training: one gather per block, whose backward is one gather-sum
            let outs = (0..total)
                .step_by(block)
                .map(|start| {
                    let gather = ShiftColumns {
                        taps: kt,
                        kernel: k,
                        row,
                        stride,
                        frames_out,
                        start,
                        len: block.min(total - start),
                    };
                    columns.broadcast_matmul(&gather.gather(&padded)?)
                })
                .collect::<Result<Vec<_>>>()?;
            return finish(outs);
        }
        // each temporal tap's frames, [n, c, padded pixels]
        let taps = (0..kt)
            .map(|i| {
                let frames = if stride == 1 {
                    padded.narrow(1, i, frames_out)?
                } else {
                    let ids: Vec<u32> = (0..frames_out).map(|j| (i + j * stride) as u32).collect();
                    padded.index_select(&Tensor::new(ids, window.device())?, 1)?
                };
                frames.flatten_to(1)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut outs = vec![];
        for start in (0..total).step_by(block) {
            let len = block.min(total - start);
            let mut slices = vec![];
            for frames in &taps {
                for ky in 0..k {
                    for kx in 0..k {
                        slices.push(frames.narrow(2, start + ky * row + kx, len)?);
                    }
                }
            }
            let cols = match slices.as_slice() {
                [one] => one.contiguous()?,
                _ => Tensor::cat(&slices, 1)?,
            };
            outs.push(columns.broadcast_matmul(&cols)?);
        }
        finish(outs)
    }
}

/// The im2col matrix of `images` `[n, c, h, w]` for a `k x k` kernel with spatial `stride` and
/// no padding, gathered by one index select: `[n, c * k * k, h_out * w_out]` (rows channel,
/// ky, kx) and `(h_out, w_out)`. Training's convolutions use it: the backward pass of the
/// gather is one scatter-add, much cheaper than candle's CPU convolution backward.
fn gathered_columns(images: &Tensor, k: usize, stride: usize) -> Result<(Tensor, usize, usize)> {
    let (n, c, h, w) = images.dims4()?;
    if h < k || w < k {
        candle_core::bail!("a {k}x{k} convolution cannot take {h}x{w} images")
    }
    let (h_out, w_out) = ((h - k) / stride + 1, (w - k) / stride + 1);
    let mut index = Vec::with_capacity(k * k * h_out * w_out);
    for ky in 0..k {
        for kx in 0..k {
            for y in 0..h_out {
                for x in 0..w_out {
                    index.push(((y * stride + ky) * w + x * stride + kx) as u32);
                }
            }
        }
    }
    let index = Tensor::new(index, images.device())?;
    let columns = images
        .reshape((n, c, h * w))?
        .index_select(&index, 2)?
        .reshape((n, c * k * k, h_out * w_out))?;
    Ok((columns, h_out, w_out))
}

/// A stride-1 2D convolution with bias applied to working-layout images.
#[derive(Clone, Debug)]
pub struct Conv2d(TapConv);

impl Conv2d {
    /// Reads `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self(TapConv::new(&weight.unsqueeze(2)?, bias, padding)?))
    }

    /// Convolves images `x` (`[n, c_in, h, w]` or `[n, h, w, c_in]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&x.unsqueeze(1)?, 1, None)?.squeeze(1)
    }
}

/// A 2D convolution with a spatial stride and no padding, with bias, on working-layout images
/// (the encoder's downsampling). On the CPU it is candle's conv2d; candle's CPU kernels have no
/// bf16 GEMM, so there a bf16 convolution runs in f32 and is rounded back (as candle's own bf16
/// CPU matmul does).
#[derive(Clone, Debug)]
pub struct StridedConv2d {
    filter: Filter,
    /// Training (gradients tracked): the weight as `[c_out, c_in * k * k]` for
    /// [`gathered_columns`].
    gathered: Option<(Tensor, usize)>,
    /// `[c_out]`.
    bias: Tensor,
    stride: usize,
}

impl StridedConv2d {
    /// Reads `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        let gathered = if weight.track_op() {
            Some((weight.flatten_from(1)?, kernel))
        } else {
            None
        };
        Ok(Self {
            gathered,
            filter: filter_for(&weight.unsqueeze(2)?, &bias, |w| w.squeeze(2))?,
            bias,
            stride,
        })
    }

    /// Convolves images `x` (`[n, c_in, h, w]` or `[n, h, w, c_in]`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c_out = self.bias.dim(0)?;
        if let Some((weight, k)) = &self.gathered {
            if x.device().is_cuda() {
                return self.forward_subsampled(weight, *k, x);
            }
            let (columns, h_out, w_out) = gathered_columns(x, *k, self.stride)?;
            let n = x.dim(0)?;
            return weight
                .broadcast_matmul(&columns)?
                .broadcast_add(&self.bias.reshape((1, c_out, 1))?)?
                .reshape((n, c_out, h_out, w_out));
        }
        match &self.filter {
            Filter::Columns(weight) => {
                let y = if x.device().is_cpu() && x.dtype() == DType::BF16 {
                    x.to_dtype(DType::F32)?
                        .conv2d(&weight.to_dtype(DType::F32)?, 0, self.stride, 1, 1)?
                        .to_dtype(DType::BF16)?
                } else {
                    x.conv2d(weight, 0, self.stride, 1, 1)?
                };
                y.broadcast_add(&self.bias.reshape((1, c_out, 1, 1))?)
            }
            Filter::ChannelsLast { filter, bias } => self.forward_cudnn(filter, bias, x),
        }
    }

    /// Training on CUDA: the stride-1 convolution through flat-shift columns (see
    /// [`TapConv::forward_gathered`]), then every `stride`-th output row and column.
    fn forward_subsampled(&self, weight: &Tensor, k: usize, x: &Tensor) -> Result<Tensor> {
        let (n, c_in, h, w) = x.dims4()?;
        let c_out = self.bias.dim(0)?;
        let columns = weight
            .reshape((c_out, c_in, k, k))?
            .permute((0, 2, 3, 1))?
            .flatten_from(1)?;
        let dense = TapConv {
            filter: Filter::Columns(columns.clone()),
            gathered: None,
            bias: self.bias.clone(),
            taps: 1,
            kernel: k,
            padding: 0,
        };
        let y = dense
            .forward_in_blocks(&columns, &x.unsqueeze(1)?, 1, column_budget(x))?
            .squeeze(1)?;
        let s = self.stride;
        let (h_out, w_out) = ((h - k) / s + 1, (w - k) / s + 1);
        let (hy, wy) = (y.dim(2)?, y.dim(3)?);
        let (hp, wp) = (hy.div_ceil(s), wy.div_ceil(s));
        y.pad_with_zeros(2, 0, hp * s - hy)?
            .pad_with_zeros(3, 0, wp * s - wy)?
            .reshape((n, c_out, hp, s, wp, s))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((n, c_out, hp, wp))?
            .narrow(2, 0, h_out)?
            .narrow(3, 0, w_out)
    }

    #[cfg(feature = "cuda")]
    fn forward_cudnn(&self, filter: &Tensor, bias: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let (k, s) = (filter.dim(2)?, self.stride);
        let dims = [n, 1, (h - k) / s + 1, (w - k) / s + 1, bias.dim(0)?];
        let y = crate::kernels::bias_fill(bias, None, &dims)?;
        crate::cudnn::accumulate(&y, &x.unsqueeze(1)?, filter, [0, 0, 0], [1, s, s])?;
        y.squeeze(1)?.narrow(3, 0, self.bias.dim(0)?)?.contiguous()
    }

    #[cfg(not(feature = "cuda"))]
    fn forward_cudnn(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        candle_core::bail!("channels-last convolutions need the `cuda` feature")
    }
}

/// A 3D convolution, causal in time (the `kt - 1` frames of past it needs come from the stream's
/// history, zeros before the stream starts) and zero-padded symmetrically in space.
#[derive(Clone, Debug)]
pub struct CausalConv3d(TapConv);

impl CausalConv3d {
    /// Reads `weight` `[c_out, c_in, kt, k, k]` and `bias` `[c_out]`; `padding` is the spatial
    /// padding on each side.
    pub fn new(
        c_in: usize,
        c_out: usize,
        (kt, k): (usize, usize),
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kt, k, k), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self(TapConv::new(&weight, bias, padding)?))
    }

    /// Convolves `window` (`[b, l, ...]` frames), whose frames already include the needed
    /// past, with temporal stride `stride` and no temporal padding: `(l - kt) / stride + 1`
    /// frames out.
    pub fn convolve(&self, window: &Tensor, stride: usize) -> Result<Tensor> {
        self.0.forward(window, stride, None)
    }

    /// Convolves the next chunk `x` `[b, t, c, h, w]` of a stream whose earlier frames are
    /// summarised in `history` (`None` at the start), and updates `history` for the next chunk.
    /// Returns `t` frames, exactly as convolving the whole stream at once would.
    pub fn forward(&self, x: &Tensor, history: &mut Option<Tensor>) -> Result<Tensor> {
        self.forward_residual(x, history, None)
    }

    /// [`CausalConv3d::forward`], plus `residual` (`t` frames of the output's shape), added in
    /// the same pass on CUDA.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        history: &mut Option<Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let keep = self.0.taps - 1;
        if keep == 0 {
            return self.0.forward(x, 1, residual);
        }
        let window = profile::timed(
            x.device(),
            || "time window".into(),
            0.0,
            || {
                let window = match history.take() {
                    Some(past) => join_time(&past, x)?,
                    None => x.clone(),
                };
                let len = window.dim(1)?;
                // a copy, so the history does not pin the whole window's storage
                *history = Some(last_frames(&window, keep)?);
                let missing = (x.dim(1)? + keep).saturating_sub(len);
                window.pad_with_zeros(1, missing, 0)
            },
        )?;
        self.0.forward(&window, 1, residual)
    }
}

/// Per-layer trailing frames of one stream (one video, or one spatial tile of it), the state that
/// lets the encoder and decoder run chunk by chunk. Layers take their slot in the same order every
/// chunk, so the slot index identifies the layer.
#[derive(Debug, Default)]
pub struct TimeCache {
    slots: Vec<Option<Tensor>>,
    next: usize,
    chunk: Option<usize>,
}

impl TimeCache {
    /// An empty cache for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the start of the next chunk: slots are handed out from the first again.
    pub fn start_chunk(&mut self) {
        self.next = 0;
        self.chunk = Some(self.chunk.map_or(0, |c| c + 1));
    }

    /// Whether the chunk being processed is the stream's first.
    pub fn is_first_chunk(&self) -> bool {
        self.chunk == Some(0)
    }

    /// The next layer's slot (created empty on the first chunk).
    pub fn slot(&mut self) -> &mut Option<Tensor> {
        if self.next == self.slots.len() {
            self.slots.push(None);
        }
        self.next += 1;
        &mut self.slots[self.next - 1]
    }
}

/// Folds time into the batch: `[b, t, c, h, w]` -> `[b * t, c, h, w]`.
pub fn fold_time(x: &Tensor) -> Result<Tensor> {
    let (b, t, c, h, w) = x.dims5()?;
    x.reshape((b * t, c, h, w))
}

/// Inverse of [`fold_time`] for a batch of `b` streams.
pub fn unfold_time(x: &Tensor, b: usize) -> Result<Tensor> {
    let (bt, c, h, w) = x.dims4()?;
    x.reshape((b, bt / b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// A random conv and its weight and bias.
    fn random_conv(
        c_in: usize,
        c_out: usize,
        kt: usize,
        k: usize,
    ) -> Result<(CausalConv3d, Tensor, Tensor)> {
        let dev = &Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, kt, k, k), dev)?;
        let bias = Tensor::randn(0f32, 1.0, c_out, dev)?;
        let tensors = HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, dev);
        Ok((
            CausalConv3d::new(c_in, c_out, (kt, k), k / 2, vb)?,
            weight,
            bias,
        ))
    }

    /// With tracked (trainable) weights the convolutions take the training path (gathered
    /// im2col columns), which gives the inference path's outputs, temporal stride 2 and the
    /// strided 2D convolution included.
    #[test]
    fn training_path_matches_inference_path() -> Result<()> {
        let dev = &Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (4, 3, 3, 3, 3), dev)?;
        let bias = Tensor::randn(0f32, 1.0, 4, dev)?;
        let build = |tracked: bool| -> Result<CausalConv3d> {
            let (w, b) = if tracked {
                (
                    candle_core::Var::from_tensor(&weight)?.as_tensor().clone(),
                    candle_core::Var::from_tensor(&bias)?.as_tensor().clone(),
                )
            } else {
                (weight.clone(), bias.clone())
            };
            let tensors = HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]);
            CausalConv3d::new(
                3,
                4,
                (3, 3),
                1,
                VarBuilder::from_tensors(tensors, DType::F32, dev),
            )
        };
        let x = Tensor::randn(0f32, 1.0, (2, 7, 3, 5, 6), dev)?;
        for stride in [1, 2] {
            let a = build(false)?.convolve(&x, stride)?;
            let tracked = build(true)?;
            let b = tracked.convolve(&x, stride)?;
            let err = (&a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "stride {stride}: {err}");
            // the CUDA training branch: flat-shift columns of the training weight
            let conv = &tracked.0;
            let weight = conv.gathered.clone().expect("training path");
            let columns = conv.flat_shift_columns(&weight, 3)?;
            let window = join_time(&Tensor::zeros((2, 2, 3, 5, 6), DType::F32, dev)?, &x)?;
            let c = conv.forward_in_blocks(&columns, &window, stride, 1 << 12)?;
            let d = build(false)?.0.forward(&window, stride, None)?;
            let err = (d - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "stride {stride}, CUDA's training branch: {err}");
        }
        let w2 = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), dev)?;
        let strided = |tracked: bool| -> Result<StridedConv2d> {
            let (w, b) = if tracked {
                (
                    candle_core::Var::from_tensor(&w2)?.as_tensor().clone(),
                    candle_core::Var::from_tensor(&bias)?.as_tensor().clone(),
                )
            } else {
                (w2.clone(), bias.clone())
            };
            let tensors = HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]);
            StridedConv2d::new(
                3,
                4,
                3,
                2,
                VarBuilder::from_tensors(tensors, DType::F32, dev),
            )
        };
        let images = Tensor::randn(0f32, 1.0, (3, 3, 9, 8), dev)?;
        let a = strided(false)?.forward(&images)?;
        let tracked = strided(true)?;
        let b = tracked.forward(&images)?;
        assert_eq!(a.dims(), b.dims());
        let err = (&a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "strided: {err}");
        // the CUDA training branch (device-independent arithmetic), run here
        let (weight, k) = tracked.gathered.clone().expect("training path");
        let c = tracked.forward_subsampled(&weight, k, &images)?;
        let err = (&a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "strided, CUDA's training branch: {err}");
        Ok(())
    }

    /// The tap decomposition equals a direct 3D convolution written out as nested sums.
    #[test]
    fn convolve_matches_direct_sum() -> Result<()> {
        let (c_in, c_out, kt, k) = (2, 3, 3, 3);
        let (conv, weight, bias) = random_conv(c_in, c_out, kt, k)?;
        let x = Tensor::randn(0f32, 1.0, (1, 5, c_in, 4, 3), &Device::Cpu)?;
        let y = conv.convolve(&x, 1)?;
        assert_eq!(y.dims(), &[1, 3, c_out, 4, 3]);
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let yv: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let wv: Vec<Vec<f32>> = (0..kt)
            .map(|i| weight.narrow(2, i, 1)?.flatten_all()?.to_vec1())
            .collect::<Result<_>>()?;
        let bv: Vec<f32> = bias.to_vec1()?;
        let (h, w) = (4usize, 3usize);
        for t in 0..3 {
            for o in 0..c_out {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut s = bv[o];
                        for (dt, wt) in wv.iter().enumerate() {
                            for i in 0..c_in {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (sy, sx) = (yy + ky, xx + kx);
                                        if sy < 1 || sx < 1 || sy > h || sx > w {
                                            continue;
                                        }
                                        let xi = (((t + dt) * c_in + i) * h + sy - 1) * w + sx - 1;
                                        let wi = ((o * c_in + i) * k + ky) * k + kx;
                                        s += xv[xi] * wt[wi];
                                    }
                                }
                            }
                        }
                        let got = yv[((t * c_out + o) * h + yy) * w + xx];
                        assert!((got - s).abs() < 1e-4, "{got} vs {s}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Chunked streaming through the history equals one causal pass over the whole sequence
    /// (zeros before the start), whatever the chunk sizes.
    #[test]
    fn streaming_equals_whole_sequence() -> Result<()> {
        let (conv, ..) = random_conv(2, 2, 3, 3)?;
        let x = Tensor::randn(0f32, 1.0, (2, 9, 2, 3, 4), &Device::Cpu)?;
        let whole = conv.convolve(&x.pad_with_zeros(1, 2, 0)?, 1)?;
        let mut history = None;
        let mut outs = vec![];
        let mut start = 0;
        for len in [1, 4, 1, 3] {
            outs.push(conv.forward(&x.narrow(1, start, len)?, &mut history)?);
            start += len;
        }
        let streamed = Tensor::cat(&outs, 1)?;
        let diff = (streamed - whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }

    /// The flat-shift columns, whole or in blocks, equal candle's conv2d.
    #[test]
    fn flat_shift_conv_matches_candle_conv2d() -> Result<()> {
        let dev = &Device::Cpu;
        // sizes above MIN_BLOCK positions, so a budget of 1 splits them into several blocks
        for (k, p, h, w) in [(3, 1, 20, 30), (1, 0, 17, 19), (3, 0, 21, 16)] {
            let weight = Tensor::randn(0f32, 1.0, (4, 3, 1, k, k), dev)?;
            let bias = Tensor::randn(0f32, 1.0, 4, dev)?;
            let conv = TapConv::new(&weight, bias.clone(), p)?;
            let Filter::Columns(columns) = &conv.filter else {
                unreachable!("a CPU filter")
            };
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), dev)?;
            let expected = x
                .conv2d(&weight.squeeze(2)?, p, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, 4, 1, 1))?)?
                .unsqueeze(1)?;
            for budget in [usize::MAX, 1] {
                let y = conv.forward_in_blocks(columns, &x.unsqueeze(1)?, 1, budget)?;
                assert_eq!(y.dims(), expected.dims());
                let diff = (y - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "k {k} p {p} budget {budget}: max diff {diff}");
            }
        }
        Ok(())
    }

    /// A stride-2 window picks frames 0..3, 2..5, ... as a strided 3D convolution does.
    #[test]
    fn strided_window_uses_every_other_start() -> Result<()> {
        let (conv, ..) = random_conv(2, 2, 3, 1)?;
        let x = Tensor::randn(0f32, 1.0, (1, 5, 2, 2, 2), &Device::Cpu)?;
        let strided = conv.convolve(&x, 2)?;
        let dense = conv.convolve(&x, 1)?;
        let picked = Tensor::cat(&[dense.narrow(1, 0, 1)?, dense.narrow(1, 2, 1)?], 1)?;
        let diff = (strided - picked)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}

//! Convolutions over frame sequences laid out `[batch, time, channels, height, width]`.
//!
//! candle has no conv3d, so a 3D convolution is a sum over its temporal taps of 2D
//! convolutions with the frames folded into the batch. Time is causal: each output frame sees
//! only itself and earlier frames, which lets a video be processed chunk by chunk with each
//! layer keeping the trailing frames of its input ([`TimeCache`]).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// 2D convolution of `[n, c, h, w]` by `[c_out, c, kh, kw]`. candle's CPU kernels have no bf16
/// GEMM, so there a bf16 convolution runs in f32 and is rounded back (as candle's own bf16 CPU
/// matmul does); every other device and dtype uses the native kernel.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::BF16 {
        let y =
            x.to_dtype(DType::F32)?
                .conv2d(&weight.to_dtype(DType::F32)?, padding, stride, 1, 1)?;
        return y.to_dtype(DType::BF16);
    }
    x.conv2d(weight, padding, stride, 1, 1)
}

/// A 2D convolution with bias applied to images `[n, c, h, w]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    /// Reads `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, kernel, kernel), "weight")?,
            bias: vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?,
            padding,
            stride,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.padding, self.stride)?.broadcast_add(&self.bias)
    }
}

/// A 3D convolution, causal in time (the `kt - 1` frames of past it needs come from the stream's
/// history, zeros before the stream starts) and zero-padded symmetrically in space.
#[derive(Clone, Debug)]
pub struct CausalConv3d {
    /// One `[c_out, c_in, kh, kw]` kernel per temporal tap, oldest frame first.
    taps: Vec<Tensor>,
    bias: Tensor,
    padding: usize,
}

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
        let taps = (0..kt)
            .map(|i| weight.narrow(2, i, 1)?.squeeze(2)?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            taps,
            bias: vb.get(c_out, "bias")?.reshape((1, c_out, 1, 1))?,
            padding,
        })
    }

    /// Frames of past each output frame needs.
    fn past_len(&self) -> usize {
        self.taps.len() - 1
    }

    /// Convolves `window` `[b, l, c, h, w]`, whose frames already include the needed past,
    /// with temporal stride `stride` and no temporal padding: `(l - kt) / stride + 1` frames out.
    pub fn convolve(&self, window: &Tensor, stride: usize) -> Result<Tensor> {
        let (b, l, c, h, w) = window.dims5()?;
        let kt = self.taps.len();
        if l < kt {
            candle_core::bail!("causal conv needs {kt} frames, got {l}");
        }
        let frames_out = (l - kt) / stride + 1;
        let mut sum: Option<Tensor> = None;
        for (i, tap) in self.taps.iter().enumerate() {
            let frames = if stride == 1 {
                window.narrow(1, i, frames_out)?
            } else {
                let ids: Vec<u32> = (0..frames_out).map(|j| (i + j * stride) as u32).collect();
                let ids = Tensor::new(ids, window.device())?;
                window.index_select(&ids, 1)?
            };
            let frames = frames.reshape((b * frames_out, c, h, w))?;
            let y = conv2d(&frames, tap, self.padding, 1)?;
            sum = Some(match sum {
                Some(s) => (s + y)?,
                None => y,
            });
        }
        let y = sum
            .expect("at least one temporal tap")
            .broadcast_add(&self.bias)?;
        let (_, c_out, h_out, w_out) = y.dims4()?;
        y.reshape((b, frames_out, c_out, h_out, w_out))
    }

    /// Convolves the next chunk `x` `[b, t, c, h, w]` of a stream whose earlier frames are
    /// summarised in `history` (`None` at the start), and updates `history` for the next chunk.
    /// Returns `t` frames, exactly as convolving the whole stream at once would.
    pub fn forward(&self, x: &Tensor, history: &mut Option<Tensor>) -> Result<Tensor> {
        let keep = self.past_len();
        if keep == 0 {
            return self.convolve(x, 1);
        }
        let window = match history.take() {
            Some(past) => Tensor::cat(&[&past, x], 1)?,
            None => x.clone(),
        };
        let len = window.dim(1)?;
        // a copy, so the history does not pin the whole window's storage
        *history = Some(
            window
                .narrow(1, len.saturating_sub(keep), len.min(keep))?
                .copy()?,
        );
        let missing = (x.dim(1)? + keep).saturating_sub(len);
        let window = window.pad_with_zeros(1, missing, 0)?;
        self.convolve(&window, 1)
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

/// Copies the last frame of `x` `[b, t, ...]` into its own storage.
pub fn last_frame(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    x.narrow(1, t - 1, 1)?.copy()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn random_conv(c_in: usize, c_out: usize, kt: usize, k: usize) -> Result<CausalConv3d> {
        let dev = &Device::Cpu;
        let tensors = HashMap::from([
            (
                "weight".to_string(),
                Tensor::randn(0f32, 1.0, (c_out, c_in, kt, k, k), dev)?,
            ),
            ("bias".to_string(), Tensor::randn(0f32, 1.0, c_out, dev)?),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, dev);
        CausalConv3d::new(c_in, c_out, (kt, k), k / 2, vb)
    }

    /// The tap decomposition equals a direct 3D convolution written out as nested sums.
    #[test]
    fn convolve_matches_direct_sum() -> Result<()> {
        let (c_in, c_out, kt, k) = (2, 3, 3, 3);
        let conv = random_conv(c_in, c_out, kt, k)?;
        let x = Tensor::randn(0f32, 1.0, (1, 5, c_in, 4, 3), &Device::Cpu)?;
        let y = conv.convolve(&x, 1)?;
        assert_eq!(y.dims(), &[1, 3, c_out, 4, 3]);
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let yv: Vec<f32> = y.flatten_all()?.to_vec1()?;
        let wv: Vec<Vec<f32>> = conv
            .taps
            .iter()
            .map(|t| t.flatten_all()?.to_vec1())
            .collect::<Result<_>>()?;
        let bv: Vec<f32> = conv.bias.flatten_all()?.to_vec1()?;
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
        let conv = random_conv(2, 2, 3, 3)?;
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

    /// A stride-2 window picks frames 0..3, 2..5, ... as a strided 3D convolution does.
    #[test]
    fn strided_window_uses_every_other_start() -> Result<()> {
        let conv = random_conv(2, 2, 3, 1)?;
        let x = Tensor::randn(0f32, 1.0, (1, 5, 2, 2, 2), &Device::Cpu)?;
        let strided = conv.convolve(&x, 2)?;
        let dense = conv.convolve(&x, 1)?;
        let picked = Tensor::cat(&[dense.narrow(1, 0, 1)?, dense.narrow(1, 2, 1)?], 1)?;
        let diff = (strided - picked)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}

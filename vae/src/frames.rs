//! How the VAE holds frames inside the encoder and decoder: channels-first `[b, t, c, h, w]` on
//! the CPU, where convolutions are matmuls over flat-shift columns, and channels-last
//! `[b, t, h, w, c]` on CUDA, the layout cuDNN's tensor-core convolutions and the fused channel
//! norm read fastest. Time is dim 1 in both, so caches and chunks are layout-free; whatever else
//! depends on the layout is here or in the convolution and norm modules, and the blocks are
//! written once for both. Images (`[n, c, h, w]` or `[n, h, w, c]`) are frames with time folded
//! into the batch.

use candle_core::{Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while the VAE trains: frames stay channels-first on CUDA too, so every operation is one
/// of candle's differentiable ones (the channels-last kernels have no backward pass).
static TRAINING_LAYOUT: AtomicBool = AtomicBool::new(false);

/// Makes every VAE built or run afterwards use the differentiable channels-first layout on
/// CUDA as well (`true`, for training), or the fast channels-last one (`false`, the default).
pub fn set_training_layout(training: bool) {
    TRAINING_LAYOUT.store(training, Ordering::Relaxed);
}

/// True when `x` is held channels-last (on CUDA, outside training).
pub fn channels_last(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && !TRAINING_LAYOUT.load(Ordering::Relaxed)
}

/// `[b, t, c, h, w]` frames in the working layout of their device.
pub fn to_working(x: &Tensor) -> Result<Tensor> {
    if channels_last(x) {
        x.permute((0, 1, 3, 4, 2))?.contiguous()
    } else {
        Ok(x.clone())
    }
}

/// Working-layout frames back to `[b, t, c, h, w]`.
pub fn to_standard(x: &Tensor) -> Result<Tensor> {
    if channels_last(x) {
        x.permute((0, 1, 4, 2, 3))?.contiguous()
    } else {
        Ok(x.clone())
    }
}

/// `(height, width)` of working-layout images (4 dims) or frames (5 dims).
pub fn spatial(x: &Tensor) -> Result<(usize, usize)> {
    let dims = x.dims();
    let r = dims.len();
    Ok(if channels_last(x) {
        (dims[r - 3], dims[r - 2])
    } else {
        (dims[r - 2], dims[r - 1])
    })
}

/// Nearest-neighbour 2x upsampling of working-layout images.
pub fn upsample_nearest2x(images: &Tensor) -> Result<Tensor> {
    if !channels_last(images) {
        let (_, _, h, w) = images.dims4()?;
        return images.upsample_nearest2d(2 * h, 2 * w);
    }
    #[cfg(feature = "cuda")]
    if crate::kernels::whole_vectors(images) {
        return crate::kernels::upsample2x(images);
    }
    // rows the kernel does not take (the small test models' widths)
    let (n, h, w, c) = images.dims4()?;
    images
        .reshape((n, h, 1, w, 1, c))?
        .broadcast_as((n, h, 2, w, 2, c))?
        .contiguous()?
        .reshape((n, 2 * h, 2 * w, c))
}

/// Frames `[b, t, ...]` of `past` then `x`, joined along time (one copy of each on CUDA).
pub fn join_time(past: &Tensor, x: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if channels_last(x) {
        return crate::kernels::join_frames(&[(past, 0, past.dim(1)?), (x, 0, x.dim(1)?)]);
    }
    Tensor::cat(&[past, x], 1)
}

/// A copy of the last `n` frames of `x` `[b, t, ...]` (all of them when fewer), in its own
/// storage.
pub fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(1)?;
    let (start, n) = (t.saturating_sub(n), n.min(t));
    #[cfg(feature = "cuda")]
    if channels_last(x) {
        return crate::kernels::join_frames(&[(x, start, n)]);
    }
    x.narrow(1, start, n)?.copy()
}

/// Frames `[b, t, 2c]` (working layout) whose channel halves are consecutive frames, as
/// `[b, 2t, c]`: frame `2i` is the first half of frame `i`'s channels.
pub fn halves_to_frames(x: &Tensor) -> Result<Tensor> {
    if channels_last(x) {
        let (b, t, h, w, c2) = x.dims5()?;
        let c = c2 / 2;
        x.reshape((b, t, h, w, 2, c))?
            .permute((0, 1, 4, 2, 3, 5))?
            .contiguous()?
            .reshape((b, 2 * t, h, w, c))
    } else {
        let (b, t, c2, h, w) = x.dims5()?;
        x.reshape((b, 2 * t, c2 / 2, h, w))
    }
}

/// Working-layout images with one zero row below and one zero column to the right.
pub fn pad_bottom_right(images: &Tensor) -> Result<Tensor> {
    let (h_dim, w_dim) = if channels_last(images) {
        (1, 2)
    } else {
        (2, 3)
    };
    images
        .pad_with_zeros(h_dim, 0, 1)?
        .pad_with_zeros(w_dim, 0, 1)
}

/// Working-layout images as tokens `[n, h * w, c]`.
pub fn to_tokens(images: &Tensor) -> Result<Tensor> {
    if channels_last(images) {
        let (n, h, w, c) = images.dims4()?;
        images.reshape((n, h * w, c))
    } else {
        let (n, c, h, w) = images.dims4()?;
        images.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()
    }
}

/// Tokens `[n, h * w, c]` back to working-layout `h x w` images.
pub fn from_tokens(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (n, _, c) = tokens.dims3()?;
    if channels_last(tokens) {
        tokens.reshape((n, h, w, c))
    } else {
        tokens.transpose(1, 2)?.contiguous()?.reshape((n, c, h, w))
    }
}

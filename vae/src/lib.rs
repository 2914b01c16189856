//! The Wan 2.1 video VAE (diffusers' `AutoencoderKLWan`) in candle.
//!
//! [`WanVae`] maps videos `[batch, 3, 1 + 4k, H, W]` in [-1, 1] to raw latents
//! `[batch, 16, 1 + k, H / 8, W / 8]` and back. Every convolution is causal in time, so both
//! directions run chunk by chunk (decode: one latent frame at a time; encode: the first frame,
//! then groups of 4) with each layer keeping the trailing frames it needs in a
//! [`conv::TimeCache`], and memory does not grow with the video length. Decoding streams its
//! chunks to a callback and can split frames into overlapping tiles ([`Tiling`]).
//!
//! The transformer works on normalised latents: [`WanVae::normalize`] and
//! [`WanVae::denormalize`] apply the per-channel `latents_mean` / `latents_std` of the config.
//!
//! Weights load through [`vdit_core::weights::Checkpoint`] in the diffusers or the original release's
//! key layout ([`layout`]). Only the Wan 2.1 VAE (z_dim 16) is supported; Wan 2.2 configs are
//! rejected when read.
//!
//! Inside, frames are channels-first on the CPU and channels-last on CUDA ([`frames`]). On CUDA
//! convolutions are cuDNN's, accumulated onto their bias and residual, and the channel norm with
//! its SiLU is one kernel; on the CPU, where candle has no conv3d, a 3D convolution
//! ([`conv::CausalConv3d`]) is one matmul over im2col columns gathered as contiguous shifted
//! slices of the padded, flattened frames (see [`conv`]).

pub mod blocks;
pub mod columns;
pub mod config;
pub mod conv;
#[cfg(feature = "cuda")]
mod cudnn;
pub mod decoder;
pub mod encoder;
mod error;
pub mod frames;
#[cfg(feature = "cuda")]
mod kernel_params;
#[cfg(feature = "cuda")]
mod kernels;
pub mod layout;
pub mod model;
pub mod norm;
pub mod profile;
pub mod resample;
pub mod tiling;

pub use config::VaeConfig;
pub use error::{Error, FrameError, Result};
pub use layout::KeyLayout;
pub use model::{DecodeOptions, WanVae};
pub use tiling::Tiling;

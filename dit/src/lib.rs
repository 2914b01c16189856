//! The Wan 2.1 text-to-video diffusion transformer in candle.
//!
//! [`WanTransformer`] is built from a [`WanConfig`] and a `VarBuilder` in diffusers names;
//! [`load_transformer`] opens diffusers or original-release checkpoints. Self-attention goes
//! through [`sparse::SelfAttention`], so every attention method plugs in per layer and step.

pub mod attention;
pub mod block;
pub mod config;
pub mod embed;
mod error;
pub mod fused;
#[cfg(feature = "cuda")]
mod fused_cuda;
pub mod layout;
pub mod linear;
pub mod load;
pub mod lora;
pub mod model;
pub mod norm;
pub mod rope;
pub mod sequence_parallel;

pub use config::WanConfig;
pub use error::{Error, Result};
pub use layout::KeyLayout;
pub use load::{load_transformer, LoadedTransformer};
pub use lora::{LoraSet, LoraSpec};
pub use model::WanTransformer;
pub use vdit_core::Step;

//! Attention for the video DiT.
//!
//! [`SelfAttention`] is the seam the transformer calls; [`Dense`] is exact attention and the
//! reference for every sparse method.

pub mod dense;
mod grid;
pub mod metrics;
mod seam;

pub use dense::Dense;
pub use grid::TokenGrid;
pub use seam::{AttentionCall, CallSite, SelfAttention};

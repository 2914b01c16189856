//! Attention for the video DiT.
//!
//! [`SelfAttention`] is the seam the transformer calls; [`Dense`] is exact attention and the
//! reference for every sparse method. Sparse methods describe their work as a [`SparsePlan`]
//! (token layouts cut into blocks, and which key blocks each query block attends to), which
//! [`block_sparse_attention`] runs exactly, computing only the listed blocks. An
//! [`AttentionRouter`] picks the method per layer and per denoising step.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
pub mod layout;
mod op;
pub mod paro;
pub mod plan;
pub mod pool;
pub mod schedule;
mod seam;
pub mod sparsed;
pub mod vmoba;
#[cfg(feature = "cuda")]
mod vmoba_cuda;
pub mod vsa;

pub use dense::Dense;
pub use layout::{AxisOrder, BlockLayout, Permutation};
pub use op::{block_sparse_attention, top_k};
pub use plan::{BlockMask, KeyBlocks, SparsePlan};
pub use schedule::{
    AttentionRouter, AttentionSchedule, DensityReport, LayerSet, Method, Rule, StepCount,
};
pub use seam::{AttentionCall, CallSite, SelfAttention};
pub use vdit_core::TokenGrid;

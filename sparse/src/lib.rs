//! Attention for the video DiT.
//!
//! [`SelfAttention`] is the seam the transformer calls. Behind it an [`AttentionRouter`] runs
//! each call with the method its [`AttentionSchedule`] gives for the layer and the denoising
//! step. Every method is one module of [`methods`] behind the [`AttentionMethod`] trait, made by
//! name from option values through the [`Registry`] (see `METHODS.md` for adding one).
//! [`dense`] is exact attention and the reference for every sparse method. Sparse methods
//! describe their work as a [`SparsePlan`] (token layouts cut into blocks, and which key blocks
//! each query block attends to), which [`block_sparse_attention`] runs exactly, computing only
//! the listed blocks, on the CPU engine or the CUDA kernels.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod full_backward;
#[cfg(feature = "cuda")]
mod kernel_params;
pub mod layout;
mod method;
pub mod methods;
mod op;
pub mod options;
pub mod plan;
pub mod pool;
#[cfg(feature = "cuda")]
mod pool_cuda;
mod registry;
mod router;
mod schedule;
mod seam;
#[cfg(feature = "cuda")]
mod tma;

pub use dense::Dense;
pub use error::{Error, Result};
pub use layout::{AxisOrder, BlockLayout, Permutation};
pub use method::{Attended, AttentionMethod, AttentionTarget, Computed, MethodCall};
pub use methods::{dense, paro, sparsed, vmoba, vsa};
pub use op::{block_sparse_attention, block_sparse_attention_with, top_k, ForwardKernel};
pub use plan::{BlockMask, KeyBlocks, SparsePlan};
pub use registry::{MethodEntry, MethodSpec, Registry, SCHEDULE_OPTIONS};
pub use router::{AttentionRouter, DensityReport};
pub use schedule::{describe_method, AttentionSchedule, LayerSet, Rule, StepCount};
pub use seam::{AttentionCall, CallSite, SelfAttention};
pub use vdit_core::{Step, TokenGrid};

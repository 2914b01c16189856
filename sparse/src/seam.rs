//! The one interface between the transformer and attention methods.
//!
//! The DiT hands every self-attention call to a [`SelfAttention`] implementation together with
//! the token grid and the call's place in the generation (layer, denoising step), so that an
//! implementation can choose its method per layer and per step and can tile the video.

use candle_core::{Result, Tensor};
use vdit_core::{Step, TokenGrid};

/// Where a self-attention call sits: which block, which denoising step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// Transformer block index, from 0.
    pub layer: usize,
    /// The denoising step.
    pub step: Step,
}

impl CallSite {
    /// A call outside a sampling loop (tests, probes, training): step 0 of 1.
    pub fn single(layer: usize) -> Self {
        Self {
            layer,
            step: Step::SINGLE,
        }
    }
}

/// One self-attention call.
///
/// `q`, `k`, `v` are `[batch, heads, tokens, head_dim]` in natural t-h-w token order, after the
/// projections, q/k normalisation and RoPE; they may be strided views. `gate` is present when the
/// model has a VSA `to_gate_compress` projection (same shape as `q`). `first_head` is the
/// model's index of `q`'s first head: 0, except on the ranks of a sequence-parallel run, where
/// each rank attends a run of the heads.
pub struct AttentionCall<'a> {
    /// Queries, `[B, H, S, D]`.
    pub q: &'a Tensor,
    /// Keys, `[B, H, S, D]`.
    pub k: &'a Tensor,
    /// Values, `[B, H, S, D]`.
    pub v: &'a Tensor,
    /// VSA coarse-branch gate, `[B, H, S, D]`, if the model provides one.
    pub gate: Option<&'a Tensor>,
    /// Token grid with `grid.len() == S`.
    pub grid: TokenGrid,
    /// Layer and step of this call.
    pub site: CallSite,
    /// The model's index of the first head in `q` (per-head methods look their head up by it).
    pub first_head: usize,
}

/// A self-attention implementation the DiT calls once per block per forward pass.
///
/// Returns the attention output `[B, H, S, D]` in natural token order. Implementations may keep
/// state across calls (masks frozen at a step, statistics), hence `&self` with interior
/// mutability and `Send + Sync`.
pub trait SelfAttention: Send + Sync {
    /// Computes softmax(q kᵀ / sqrt(D)) v, exactly or over a chosen subset of key positions.
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor>;
}

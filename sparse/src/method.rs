//! The interface every attention method implements, one module per method (see METHODS.md).
//!
//! A method is built from its options ([`crate::registry::MethodEntry`]), checked against the
//! run before any heavy work ([`AttentionMethod::validate`]), described for the record
//! ([`AttentionMethod::describe`]), and called once per self-attention call it is scheduled
//! for ([`AttentionMethod::attend`]). It owns whatever it keeps across calls (frozen masks,
//! cached plans). The [`crate::AttentionRouter`] decides which method runs where and counts
//! the density.

use crate::error::Result;
use crate::op::ForwardKernel;
use crate::plan::SparsePlan;
use crate::seam::AttentionCall;
use candle_core::Tensor;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use vdit_core::TokenGrid;

/// What a method is checked against: the run's token grid and the transformer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionTarget {
    /// Token grid of the video.
    pub grid: TokenGrid,
    /// Transformer blocks, when known (a probe of one call has no transformer).
    pub layers: Option<usize>,
    /// Attention heads per block.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// One call as a method receives it: the call itself and what the router adds.
pub struct MethodCall<'a> {
    /// The call: q, k, v, gate, grid, layer and step.
    pub call: &'a AttentionCall<'a>,
    /// Layers since the first layer that runs a method of this name at this step (VMoBA cycles
    /// its chunk kind with it).
    pub since_first: usize,
    /// Forward kernel family on the GPU.
    pub kernel: ForwardKernel,
}

/// How many query-key pairs a call computed.
pub enum Computed {
    /// Every pair.
    All,
    /// The pairs of a plan (counted on the device, read back only for a report).
    Plan(Arc<SparsePlan>),
    /// This many pairs: an f32 scalar, possibly on the device (read back only for a report).
    Pairs(Tensor),
}

/// A method's output `[B, H, S, D]` (natural token order) and what it computed.
pub struct Attended {
    /// The attention output.
    pub out: Tensor,
    /// The pairs computed.
    pub computed: Computed,
}

impl Attended {
    /// An output that computed every pair.
    pub fn dense(out: Tensor) -> Self {
        Self {
            out,
            computed: Computed::All,
        }
    }
}

/// An attention method with its options. Implementations keep state behind `&self` (interior
/// mutability), since one instance serves every layer and step it is scheduled for.
pub trait AttentionMethod: Send + Sync {
    /// Short name, as `--attention` takes it (`vsa`).
    fn name(&self) -> &'static str;

    /// Checks that the method can run on `target`; the error says what to use instead.
    fn validate(&self, _target: &AttentionTarget) -> Result<()> {
        Ok(())
    }

    /// Every option the method runs with, resolved, as JSON (for records).
    fn describe(&self) -> serde_json::Value;

    /// Computes one self-attention call.
    fn attend(&self, call: &MethodCall<'_>) -> candle_core::Result<Attended>;

    /// Another method ran `call`, and this method runs at the same layer in the next step: a
    /// chance to learn from an exact step (SparseD freezes its masks here).
    fn precede(&self, _call: &AttentionCall<'_>) -> candle_core::Result<()> {
        Ok(())
    }

    /// Forgets what one generation learned, before the next one.
    fn reset(&self) {}

    /// The same method with none of what it keeps across calls, for another rank of a
    /// multi-GPU run (whose heads, batch and device differ); `None`, the default, says the
    /// method keeps nothing and one instance can serve every rank.
    fn fresh(&self) -> Option<Arc<dyn AttentionMethod>> {
        None
    }

    /// The calibration file the method was built from, if any (for records).
    fn calibration_file(&self) -> Option<&Path> {
        None
    }
}

impl fmt::Debug for dyn AttentionMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name(), self.describe())
    }
}

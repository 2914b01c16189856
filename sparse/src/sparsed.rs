//! SparseD-style masks: from one exact attention, keep for every head and query block the key
//! blocks holding the most attention mass, then reuse those masks for the rest of the run.

use crate::layout::BlockLayout;
use crate::plan::SparsePlan;
use crate::pool::{block_attention_mass, Blocking};
use crate::top_k;
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// Settings of the SparseD masks (the dense early steps are set by the schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct SparsedOptions {
    /// Share of key blocks kept per query block, in `(0, 1]`.
    pub select: f64,
    /// Block size in tokens (natural order).
    pub block: usize,
}

impl Default for SparsedOptions {
    fn default() -> Self {
        Self {
            select: 0.3,
            block: 64,
        }
    }
}

impl SparsedOptions {
    /// Checks the settings; the error says what to use instead.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.select > 0.0 && self.select <= 1.0) {
            return Err(format!(
                "SparseD select ratio {} must be in (0, 1]: use e.g. 0.3",
                self.select
            ));
        }
        if self.block == 0 {
            return Err("SparseD block size must be positive: use e.g. 64".to_string());
        }
        Ok(())
    }
}

/// Builds the frozen plan from exact attention of `q, k: [B, H, S, D]`: per (batch, head,
/// query block) the `ceil(select * blocks)` key blocks with the most softmax mass.
pub fn sparsed_plan(q: &Tensor, k: &Tensor, opts: &SparsedOptions) -> Result<Arc<SparsePlan>> {
    let (b, h, s, _) = q.dims4()?;
    let layout = BlockLayout::natural_shared(s, opts.block);
    let n = layout.num_blocks();
    let owner = layout.block_of_token(0);
    let blocking = Blocking {
        q_block_of_token: &owner,
        q_blocks: n,
        k_block_of_token: &owner,
        k_blocks: n,
    };
    let mass = block_attention_mass(q, k, &[blocking])?.remove(0);
    let keep = ((opts.select * n as f64) - 1e-9)
        .ceil()
        .clamp(1.0, n as f64) as usize;
    let indices = top_k(&mass.reshape((b * h * n, n))?, keep)?;
    Ok(Arc::new(SparsePlan::uniform(
        b,
        h,
        layout.clone(),
        layout,
        indices,
    )?))
}

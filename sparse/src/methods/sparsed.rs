//! SparseD-style masks: from one exact attention, keep for every head and query block the key
//! blocks holding the most attention mass, then reuse those masks for the rest of the run.

use crate::dense::attention_with;
use crate::error::Error;
use crate::layout::BlockLayout;
use crate::method::{Attended, AttentionMethod, Computed, MethodCall};
use crate::op::block_sparse_attention_with;
use crate::options::{OptionSpec, OptionValues};
use crate::plan::SparsePlan;
use crate::pool::{block_attention_mass, Blocking};
use crate::registry::MethodEntry;
use crate::seam::AttentionCall;
use crate::top_k;
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// The options SparseD reads.
    pub const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "select_ratio",
            value: "R",
            help: "share of key blocks kept per query block, in (0, 1] (0.3)",
        },
        OptionSpec {
            key: "block",
            value: "B",
            help: "block size in tokens (64)",
        },
    ];

    /// Reads the options SparseD takes out of `values`, the defaults for the rest.
    pub fn from_values(values: &mut OptionValues) -> crate::Result<Self> {
        let defaults = Self::default();
        Ok(Self {
            select: values
                .take("select_ratio", "not a number: use e.g. 0.3")?
                .unwrap_or(defaults.select),
            block: values
                .take("block", "not a block size: use e.g. 64")?
                .unwrap_or(defaults.block),
        })
    }

    /// Checks the settings; the error says what to use instead.
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.select > 0.0 && self.select <= 1.0) {
            return Err(Error::Invalid(format!(
                "SparseD select ratio {} must be in (0, 1]: use e.g. 0.3",
                self.select
            )));
        }
        if self.block == 0 {
            return Err(Error::Invalid(
                "SparseD block size must be positive: use e.g. 64".to_string(),
            ));
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

/// SparseD as an attention method: masks frozen per layer from the last exact step before it
/// runs (or from its own first step, run exactly, when no exact step came first).
pub struct Sparsed {
    options: SparsedOptions,
    /// The frozen plan of each layer, for the current generation.
    frozen: Mutex<HashMap<usize, Arc<SparsePlan>>>,
}

impl Sparsed {
    /// SparseD with `options` (checked).
    pub fn new(options: SparsedOptions) -> crate::Result<Self> {
        options.validate()?;
        Ok(Self {
            options,
            frozen: Mutex::new(HashMap::new()),
        })
    }

    fn frozen(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<SparsePlan>>> {
        self.frozen.lock().expect("frozen masks lock")
    }
}

/// SparseD by name, with its options.
pub const ENTRY: MethodEntry = MethodEntry {
    name: "sparsed",
    about: "SparseD-style schedule: dense early steps, then per-head block masks frozen from the last dense one",
    options: SparsedOptions::OPTIONS,
    dense_steps: "0.2",
    dense_layers: "",
    build: |values| Ok(Arc::new(Sparsed::new(SparsedOptions::from_values(values)?)?)),
};

impl AttentionMethod for Sparsed {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "select": self.options.select, "block": self.options.block })
    }

    fn attend(&self, call: &MethodCall<'_>) -> Result<Attended> {
        let c = call.call;
        let frozen = self.frozen().get(&c.site.layer).cloned();
        match frozen {
            Some(plan) if plan.batch == c.q.dim(0)? => Ok(Attended {
                out: block_sparse_attention_with(c.q, c.k, c.v, &plan, call.kernel)?,
                computed: Computed::Plan(plan),
            }),
            Some(plan) => candle_core::bail!(
                "SparseD masks were frozen for batch {}, this call has batch {}",
                plan.batch,
                c.q.dim(0)?
            ),
            None => {
                // No exact step came first: this one is exact and freezes the masks.
                let plan = sparsed_plan(c.q, c.k, &self.options)?;
                self.frozen().insert(c.site.layer, plan);
                Ok(Attended::dense(attention_with(c.q, c.k, c.v, call.kernel)?))
            }
        }
    }

    fn precede(&self, call: &AttentionCall<'_>) -> Result<()> {
        let mut frozen = self.frozen();
        if let std::collections::hash_map::Entry::Vacant(e) = frozen.entry(call.site.layer) {
            e.insert(sparsed_plan(call.q, call.k, &self.options)?);
        }
        Ok(())
    }

    fn fresh(&self) -> Option<Arc<dyn AttentionMethod>> {
        Some(Arc::new(Self {
            options: self.options.clone(),
            frozen: Mutex::new(HashMap::new()),
        }))
    }

    fn reset(&self) {
        self.frozen().clear();
    }
}

//! VSA — Video Sparse Attention: cube tiling, a coarse attention over mean-pooled cubes that
//! picks the top-k key cubes of every query cube, exact fine attention over the picked cubes,
//! and `out = coarse * gate + fine`.

use crate::error::Error;
use crate::layout::BlockLayout;
use crate::method::{Attended, AttentionMethod, Computed, MethodCall};
use crate::methods::vsa_coarse::{coarse_branch, CubeMeans};
use crate::op::{block_sparse_attention_with, method_attention, ForwardKernel, MeansGradient};
use crate::options::{OptionSpec, OptionValues};
use crate::plan::SparsePlan;
use crate::pool::{add_gated_output, block_means};
use crate::registry::MethodEntry;
use crate::{top_k, TokenGrid};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// Settings of VSA.
#[derive(Clone, Debug, PartialEq)]
pub struct VsaOptions {
    /// Share of key cubes each query cube skips, in `[0, 1)`: keeps
    /// `k = ceil((1 - sparsity) * cubes)` key cubes.
    pub sparsity: f64,
    /// Cube size in tokens (t, h, w).
    pub tile: [usize; 3],
}

impl Default for VsaOptions {
    fn default() -> Self {
        Self {
            sparsity: 0.875,
            tile: [4, 4, 4],
        }
    }
}

impl VsaOptions {
    /// The options VSA reads.
    pub const OPTIONS: &'static [OptionSpec] = &[OptionSpec {
        key: "sparsity",
        value: "S",
        help: "share of key cubes skipped, in [0, 1) (0.875)",
    }];

    /// Reads the options VSA takes out of `values`, the defaults for the rest.
    pub fn from_values(values: &mut OptionValues) -> crate::Result<Self> {
        let defaults = Self::default();
        Ok(Self {
            sparsity: values
                .take("sparsity", "not a number: use e.g. 0.875")?
                .unwrap_or(defaults.sparsity),
            ..defaults
        })
    }

    /// Checks the settings; the error says what to use instead.
    pub fn validate(&self) -> crate::Result<()> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(Error::Invalid(format!(
                "VSA sparsity {} is outside [0, 1): use e.g. 0.875 (keeps 1/8 of the cubes) or 0 (dense)",
                self.sparsity
            )));
        }
        if self.tile.contains(&0) {
            return Err(Error::Invalid(format!(
                "VSA tile {:?} has a zero side: use e.g. 4x4x4",
                self.tile
            )));
        }
        Ok(())
    }

    /// Key cubes kept per query cube out of `cubes`.
    pub fn kept(&self, cubes: usize) -> usize {
        (((1.0 - self.sparsity) * cubes as f64) - 1e-9)
            .ceil()
            .clamp(1.0, cubes.max(1) as f64) as usize
    }
}

/// Result of one VSA call.
pub struct VsaOutput {
    /// Attention output `[B, H, S, D]` in natural order, `q`'s dtype.
    pub out: Tensor,
    /// The fine stage's plan (its density is the fraction of pairs computed exactly).
    pub plan: Arc<SparsePlan>,
}

/// Runs VSA on `q, k, v: [B, H, S, D]` over `grid`; `gate` (same shape) weights the coarse
/// branch, which is left out when `gate` is `None`.
pub fn vsa_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    gate: Option<&Tensor>,
    grid: TokenGrid,
    opts: &VsaOptions,
) -> Result<VsaOutput> {
    vsa_attention_with(q, k, v, gate, grid, opts, ForwardKernel::Auto)
}

/// [`vsa_attention`] with the forward kernel family `kernel` for the fine stage on the GPU.
pub fn vsa_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    gate: Option<&Tensor>,
    grid: TokenGrid,
    opts: &VsaOptions,
    kernel: ForwardKernel,
) -> Result<VsaOutput> {
    let (b, h, s, d) = q.dims4()?;
    if s != grid.len() {
        candle_core::bail!(
            "VSA: {s} tokens do not fill the grid {grid} ({} tokens)",
            grid.len()
        )
    }
    let layout = BlockLayout::tiled_shared(grid, opts.tile);
    let cubes = layout.num_blocks();

    // Coarse stage: attention between mean-pooled cubes (f32), outside the graph (see
    // `vsa_coarse` for how its gradient reaches q, k and v).
    let scale = 1.0 / (d as f64).sqrt();
    let (qc, kc) = (
        block_means(&q.detach(), &layout)?,
        block_means(&k.detach(), &layout)?,
    );
    let coarse_scores = (qc.matmul(&kc.t()?)? * scale)?; // [B, H, cubes, cubes]

    // Selection: the top-k key cubes of every query cube.
    let rows = coarse_scores.reshape((b * h * cubes, cubes))?;
    let indices = top_k(&rows, opts.kept(cubes))?;
    let plan = Arc::new(SparsePlan::uniform(
        b,
        h,
        layout.clone(),
        layout.clone(),
        indices,
    )?);

    // Fine stage: exact attention over the selected cubes, then the gated coarse output.
    let Some(gate) = gate else {
        return Ok(VsaOutput {
            out: block_sparse_attention_with(q, k, v, &plan, kernel)?,
            plan,
        });
    };
    let means = CubeMeans {
        q: qc,
        k: kc,
        v: block_means(&v.detach(), &layout)?,
        scale,
    };
    let means_grad = Arc::new(MeansGradient::new(&layout));
    let fine = method_attention(q, k, v, &plan, kernel, Some(&means_grad))?;
    let coarse = coarse_branch(&fine.tensor, means, &coarse_scores, means_grad)?;
    let out = add_gated_output(&fine, gate, &coarse, &layout)?;
    Ok(VsaOutput { out, plan })
}

/// VSA as an attention method.
#[derive(Clone, Debug)]
pub struct Vsa {
    options: VsaOptions,
}

impl Vsa {
    /// VSA with `options` (checked).
    pub fn new(options: VsaOptions) -> crate::Result<Self> {
        options.validate()?;
        Ok(Self { options })
    }
}

/// VSA by name, with its options.
pub const ENTRY: MethodEntry = MethodEntry {
    name: "vsa",
    about: "Video Sparse Attention (trainable): coarse cube attention picks each query cube's key cubes",
    options: VsaOptions::OPTIONS,
    dense_steps: "0",
    dense_layers: "",
    build: |values| Ok(Arc::new(Vsa::new(VsaOptions::from_values(values)?)?)),
};

impl AttentionMethod for Vsa {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "sparsity": self.options.sparsity, "tile": self.options.tile })
    }

    fn attend(&self, call: &MethodCall<'_>) -> Result<Attended> {
        let c = call.call;
        let r = vsa_attention_with(c.q, c.k, c.v, c.gate, c.grid, &self.options, call.kernel)?;
        Ok(Attended {
            out: r.out,
            computed: Computed::Plan(r.plan),
        })
    }
}

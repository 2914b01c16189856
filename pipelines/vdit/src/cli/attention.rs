//! `vdit attention`: runs one attention method on given q, k, v and reports its density.

use anyhow::{bail, Context, Result};
use candle_core::{safetensors, Device, Tensor};
use clap::Args;
use sparse::options::parse_sizes;
use sparse::{
    AttentionCall, AttentionRouter, AttentionSchedule, AttentionTarget, CallSite, MethodSpec,
    Registry, SelfAttention, TokenGrid,
};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `vdit attention`.
#[derive(Args)]
pub struct AttentionArgs {
    /// Method to run with its options (the flags come from the method registry).
    #[arg(skip)]
    pub method: MethodSpec,
    /// Token grid T,H,W with T*H*W = the tensors' token count.
    #[arg(long)]
    pub grid: String,
    /// safetensors with q, k, v: f32 [batch, heads, T*H*W, head_dim], natural t-h-w order (and
    /// optional gate of the same shape, for vsa).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write `out` (same shape and order).
    #[arg(long)]
    pub output: PathBuf,
    /// Layer index the call stands for (selects the VMoBA chunk kind when cycling).
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Replace an existing output file (only once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
}

/// Loads the tensors, runs the method, writes the output and prints one JSON line.
pub fn run(args: AttentionArgs, registry: &Registry) -> Result<()> {
    let sizes = parse_sizes(&args.grid)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--grid `{}`: use T,H,W", args.grid))?;
    let [t, h, w] = sizes[..] else {
        bail!("--grid `{}` must have three sides T,H,W", args.grid)
    };
    if t.checked_mul(h).and_then(|th| th.checked_mul(w)).is_none() {
        bail!("--grid {t},{h},{w} has more tokens than can be counted: use the tensors' grid");
    }
    let grid = TokenGrid::new(t, h, w);
    pipelines::t2v::check_parent(&args.output)?;
    vdit_core::output::check_new(&args.output, args.overwrite)?;
    let tensors = safetensors::load(&args.input, &Device::Cpu)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let get = |name: &str| -> Result<Tensor> {
        let t = tensors
            .get(name)
            .with_context(|| format!("{} has no tensor `{name}`", args.input.display()))?;
        check_shape(name, t, grid)?;
        Ok(t.clone())
    };
    let (q, k, v) = (get("q")?, get("k")?, get("v")?);
    let gate = tensors.get("gate").map(|_| get("gate")).transpose()?;
    let method = registry.method(&args.method)?;
    let (b, heads, _, d) = q.dims4()?;
    method.validate(&AttentionTarget {
        grid,
        layers: None,
        heads,
        head_dim: d,
    })?;
    let router = AttentionRouter::new(AttentionSchedule::new(method));
    let call = AttentionCall {
        q: &q,
        k: &k,
        v: &v,
        gate: gate.as_ref(),
        grid,
        site: CallSite::single(args.layer),
        first_head: 0,
    };
    let started = Instant::now();
    let mut out = router.attend(&call)?;
    if args.method.name == "sparsed" {
        // The first SparseD call is exact and freezes masks; the probe reports the sparse pass.
        router.take_report()?;
        out = router.attend(&call)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = router.report()?;
    pipelines::t2v::save_tensor(&args.output, "out", &out)?;
    let s = q.dim(2)?;
    let line = serde_json::json!({
        "method": args.method.name,
        "grid": [t, h, w], "batch": b, "heads": heads, "tokens": s, "head_dim": d,
        "density": report.overall(), "seconds": seconds,
    });
    say!("{line}");
    Ok(())
}

fn check_shape(name: &str, t: &Tensor, grid: TokenGrid) -> Result<()> {
    let dims = t.dims();
    if dims.len() != 4 {
        bail!("`{name}` has shape {dims:?}; expected [batch, heads, tokens, head_dim]");
    }
    if dims[2] != grid.len() {
        bail!("--grid {grid} has {} tokens but `{name}` has {} (shape {dims:?}): pass the grid the tensors were made on", grid.len(), dims[2]);
    }
    Ok(())
}

//! Command-line options of the attention methods, shared by `vdit attention` and `vdit generate`.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use sparse::paro::ParoCalibration;
use sparse::sparsed::SparsedOptions;
use sparse::vmoba::{ChunkKind, Scope, Selection, VmobaOptions};
use sparse::vsa::VsaOptions;
use sparse::{AttentionSchedule, LayerSet, Method, StepCount};
use std::path::PathBuf;
use std::sync::Arc;

/// Attention methods selectable on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodName {
    /// Exact attention.
    Dense,
    /// Video Sparse Attention.
    Vsa,
    /// Mixture of block attention for video.
    Vmoba,
    /// Per-head reordering with static masks from `vdit calibrate paro`.
    Paro,
    /// Masks frozen from the last dense step.
    Sparsed,
}

/// VMoBA chunk kinds on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkKindArg {
    /// Runs of whole frames (`--chunk FRAMES`).
    Temporal,
    /// Windows through all frames (`--chunk HxW`).
    Spatial,
    /// Boxes (`--chunk TxHxW`).
    Spatiotemporal,
}

/// VMoBA selection rules on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectArg {
    /// The k best chunks.
    Topk,
    /// Chunks until a share of the normalised gate mass.
    Threshold,
}

/// VMoBA selection scopes on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeArg {
    /// Per (query, head).
    QueryHead,
    /// Over all (query, chunk) pairs of a head.
    HeadGlobal,
}

/// Options of the sparse methods.
#[derive(Args, Clone, Debug, Default)]
pub struct MethodArgs {
    /// VSA: share of key cubes skipped, in [0, 1) (default 0.875).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// VMoBA: use one chunk kind in every layer instead of cycling temporal/spatial/3D.
    #[arg(long, value_enum)]
    pub chunk_kind: Option<ChunkKindArg>,
    /// VMoBA: chunk size for --chunk-kind: frames (2), HxW tokens (3x4) or TxHxW tokens (4x6x4).
    #[arg(long)]
    pub chunk: Option<String>,
    /// VMoBA: selection rule (default threshold).
    #[arg(long, value_enum)]
    pub select: Option<SelectArg>,
    /// VMoBA: chunks kept per query with --select topk (default per kind: 3, 20, 15).
    #[arg(long)]
    pub topk: Option<usize>,
    /// VMoBA: share of normalised gate mass with --select threshold (default 0.25).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// VMoBA: selection scope (default query-head).
    #[arg(long, value_enum)]
    pub scope: Option<ScopeArg>,
    /// PARO: calibration file from `vdit calibrate paro`.
    #[arg(long)]
    pub paro_calibration: Option<PathBuf>,
    /// SparseD: share of key blocks kept per query block, in (0, 1] (default 0.3).
    #[arg(long)]
    pub select_ratio: Option<f64>,
    /// SparseD: block size in tokens (default 64).
    #[arg(long)]
    pub block: Option<usize>,
}

impl MethodArgs {
    /// The method `name` with these options (validated; errors name the option to fix).
    pub fn method(&self, name: MethodName) -> Result<Method> {
        let method = match name {
            MethodName::Dense => Method::Dense,
            MethodName::Vsa => {
                let defaults = VsaOptions::default();
                Method::Vsa(VsaOptions {
                    sparsity: self.sparsity.unwrap_or(defaults.sparsity),
                    ..defaults
                })
            }
            MethodName::Vmoba => Method::Vmoba(self.vmoba()?),
            MethodName::Paro => {
                let path = self
                    .paro_calibration
                    .as_ref()
                    .context("--attention paro needs --paro-calibration FILE (make one with `vdit calibrate paro`)")?;
                Method::Paro(Arc::new(
                    ParoCalibration::load(path).map_err(anyhow::Error::msg)?,
                ))
            }
            MethodName::Sparsed => {
                let defaults = SparsedOptions::default();
                Method::Sparsed(SparsedOptions {
                    select: self.select_ratio.unwrap_or(defaults.select),
                    block: self.block.unwrap_or(defaults.block),
                })
            }
        };
        method.validate().map_err(anyhow::Error::msg)?;
        Ok(method)
    }

    fn vmoba(&self) -> Result<VmobaOptions> {
        let selection = match (self.select, self.topk, self.threshold) {
            (Some(SelectArg::Topk), k, None) | (None, k @ Some(_), None) => Selection::TopK(k),
            (Some(SelectArg::Threshold) | None, None, t) => Selection::Threshold(t.unwrap_or(0.25)),
            _ => bail!(
                "--topk goes with --select topk and --threshold with --select threshold, not both"
            ),
        };
        let mut o = VmobaOptions {
            selection,
            scope: match self.scope {
                Some(ScopeArg::HeadGlobal) => Scope::HeadGlobal,
                _ => Scope::QueryHead,
            },
            kind: self.chunk_kind.map(|k| match k {
                ChunkKindArg::Temporal => ChunkKind::Temporal,
                ChunkKindArg::Spatial => ChunkKind::Spatial,
                ChunkKindArg::Spatiotemporal => ChunkKind::Spatiotemporal,
            }),
            ..VmobaOptions::default()
        };
        if let Some(chunk) = &self.chunk {
            let sizes = parse_sizes(chunk).with_context(|| format!("--chunk `{chunk}`"))?;
            match (o.kind, sizes.as_slice()) {
                (Some(ChunkKind::Temporal), &[t]) => o.temporal_chunk = t,
                (Some(ChunkKind::Spatial), &[h, w]) => o.spatial_chunk = [h, w],
                (Some(ChunkKind::Spatiotemporal), &[t, h, w]) => o.st_chunk = [t, h, w],
                (None, _) => bail!("--chunk needs --chunk-kind temporal|spatial|spatiotemporal"),
                (Some(kind), _) => bail!(
                    "--chunk `{chunk}` does not fit --chunk-kind {kind}: use FRAMES for temporal, HxW for spatial, TxHxW for spatiotemporal"
                ),
            }
        }
        Ok(o)
    }
}

/// Parses `4`, `3x4` or `4x6x4` into positive sizes.
pub fn parse_sizes(text: &str) -> Result<Vec<usize>> {
    text.split(['x', 'X', ','])
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("`{p}` is not a positive size"),
        })
        .collect()
}

/// When the sparse method starts: dense steps and dense layers.
#[derive(Args, Clone, Debug, Default)]
pub struct ScheduleArgs {
    /// Run the first steps dense: a count (12) or a fraction of the steps (0.2).
    /// Default: 12 for vmoba, 0.2 for sparsed, 0 otherwise.
    #[arg(long)]
    pub dense_steps: Option<String>,
    /// Layers that always run dense, e.g. 0 or 0-1,29. Default: 0 for vmoba, none otherwise.
    #[arg(long)]
    pub dense_layers: Option<String>,
}

impl ScheduleArgs {
    /// The schedule running `method` after the dense steps and outside the dense layers.
    pub fn schedule(&self, method: Method) -> Result<AttentionSchedule> {
        let (steps, layers) = match method {
            Method::Vmoba(_) => ("12", "0"),
            Method::Sparsed(_) => ("0.2", ""),
            _ => ("0", ""),
        };
        let steps = StepCount::parse(self.dense_steps.as_deref().unwrap_or(steps))
            .map_err(|e| anyhow::anyhow!("--dense-steps: {e}"))?;
        let layers = LayerSet::parse(self.dense_layers.as_deref().unwrap_or(layers))
            .map_err(|e| anyhow::anyhow!("--dense-layers: {e}"))?;
        Ok(AttentionSchedule::new(method)
            .dense_steps(steps)
            .dense_layers(layers))
    }
}

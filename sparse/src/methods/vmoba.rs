//! VMoBA — mixture of block attention for video: the grid is cut into chunks (temporal,
//! spatial or spatio-temporal, cycling by layer), every query scores every chunk against the
//! chunk's mean key, keeps its own chunk plus the chunks its selection rule picks, and attends
//! exactly over their tokens.

use crate::error::Error;
use crate::layout::BlockLayout;
use crate::method::{Attended, AttentionMethod, AttentionTarget, Computed, MethodCall};
use crate::op::{block_sparse_attention_with, ForwardKernel};
use crate::options::{parse_sizes, OptionSpec, OptionValues};
use crate::plan::{BlockMask, SparsePlan};
use crate::pool::block_means;
use crate::registry::MethodEntry;
use crate::{top_k, TokenGrid};
use candle_core::{DType, Result, Tensor};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How the grid is cut into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Runs of whole frames.
    Temporal,
    /// `h x w` windows through all frames.
    Spatial,
    /// `t x h x w` boxes.
    Spatiotemporal,
}

impl ChunkKind {
    /// The kind used by the `n`-th sparse layer (temporal, spatial, spatio-temporal, repeat).
    pub fn cyclic(n: usize) -> Self {
        [Self::Temporal, Self::Spatial, Self::Spatiotemporal][n % 3]
    }
}

impl FromStr for ChunkKind {
    type Err = String;

    /// `temporal`, `spatial` or `spatiotemporal`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "temporal" => Ok(Self::Temporal),
            "spatial" => Ok(Self::Spatial),
            "spatiotemporal" => Ok(Self::Spatiotemporal),
            _ => Err(text.to_string()),
        }
    }
}

impl fmt::Display for ChunkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Temporal => "temporal",
            Self::Spatial => "spatial",
            Self::Spatiotemporal => "spatiotemporal",
        })
    }
}

/// How many chunks a query keeps besides its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// The `k` best-scoring chunks, the own chunk counted among them (`None`: the chunk
    /// kind's default from [`VmobaOptions::topk`]).
    TopK(Option<usize>),
    /// After min-max normalising the scores, the fewest chunks (own first, then best first)
    /// whose normalised scores reach this share of the total.
    Threshold(f64),
}

/// Over what the selection ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Each (query, head) separately.
    QueryHead,
    /// All (query, chunk) pairs of a head together.
    HeadGlobal,
}

impl FromStr for Scope {
    type Err = String;

    /// `query-head` or `head-global`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "query-head" => Ok(Self::QueryHead),
            "head-global" => Ok(Self::HeadGlobal),
            _ => Err(text.to_string()),
        }
    }
}

/// The selection rule by name, as `--select` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    TopK,
    Threshold,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "topk" => Ok(Self::TopK),
            "threshold" => Ok(Self::Threshold),
            _ => Err(text.to_string()),
        }
    }
}

/// Settings of VMoBA.
#[derive(Clone, Debug, PartialEq)]
pub struct VmobaOptions {
    /// Fixed chunk kind, or `None` to cycle temporal, spatial, spatio-temporal by layer.
    pub kind: Option<ChunkKind>,
    /// Frames per temporal chunk.
    pub temporal_chunk: usize,
    /// Window (h, w) of a spatial chunk, in tokens.
    pub spatial_chunk: [usize; 2],
    /// Box (t, h, w) of a spatio-temporal chunk, in tokens.
    pub st_chunk: [usize; 3],
    /// Top-k per kind (temporal, spatial, spatio-temporal), used by `Selection::TopK(None)`.
    pub topk: [usize; 3],
    /// Selection rule.
    pub selection: Selection,
    /// Selection scope.
    pub scope: Scope,
}

impl Default for VmobaOptions {
    /// The published defaults for Wan 2.1: chunks of 2 frames, 3x4 windows and 4x6x4 boxes,
    /// threshold 0.25 per (query, head).
    fn default() -> Self {
        Self {
            kind: None,
            temporal_chunk: 2,
            spatial_chunk: [3, 4],
            st_chunk: [4, 6, 4],
            topk: [3, 20, 15],
            selection: Selection::Threshold(0.25),
            scope: Scope::QueryHead,
        }
    }
}

impl VmobaOptions {
    /// The chunk tile `[t, h, w]` for `kind` on `grid`.
    pub fn tile(&self, kind: ChunkKind, grid: TokenGrid) -> [usize; 3] {
        match kind {
            ChunkKind::Temporal => [self.temporal_chunk, grid.h, grid.w],
            ChunkKind::Spatial => [grid.t, self.spatial_chunk[0], self.spatial_chunk[1]],
            ChunkKind::Spatiotemporal => self.st_chunk,
        }
    }

    /// The options VMoBA reads.
    pub const OPTIONS: &'static [OptionSpec] = &[
        OptionSpec {
            key: "chunk_kind",
            value: "KIND",
            help: "one chunk kind in every layer instead of cycling by layer: temporal, spatial or spatiotemporal",
        },
        OptionSpec {
            key: "chunk",
            value: "SIZE",
            help: "chunk size for --chunk-kind: frames (2), HxW tokens (3x4) or TxHxW tokens (4x6x4)",
        },
        OptionSpec {
            key: "select",
            value: "RULE",
            help: "selection rule: topk or threshold (threshold)",
        },
        OptionSpec {
            key: "topk",
            value: "K",
            help: "chunks kept per query with --select topk (per kind: 3, 20, 15)",
        },
        OptionSpec {
            key: "threshold",
            value: "T",
            help: "share of normalised gate mass with --select threshold (0.25)",
        },
        OptionSpec {
            key: "scope",
            value: "SCOPE",
            help: "selection scope: query-head or head-global (query-head)",
        },
    ];

    /// Reads the options VMoBA takes out of `values`, the defaults for the rest.
    pub fn from_values(values: &mut OptionValues) -> crate::Result<Self> {
        let rule: Option<Rule> =
            values.take("select", "not a selection rule: use topk or threshold")?;
        let topk: Option<usize> = values.take("topk", "not a chunk count: use e.g. 3")?;
        let threshold: Option<f64> = values.take("threshold", "not a number: use e.g. 0.25")?;
        let selection = match (rule, topk, threshold) {
            (Some(Rule::TopK), k, None) | (None, k @ Some(_), None) => Selection::TopK(k),
            (Some(Rule::Threshold) | None, None, t) => Selection::Threshold(t.unwrap_or(0.25)),
            _ => return Err(Error::Invalid(
                "--topk goes with --select topk and --threshold with --select threshold, not both"
                    .to_string(),
            )),
        };
        let kind: Option<ChunkKind> = values.take(
            "chunk_kind",
            "not a chunk kind: use temporal, spatial or spatiotemporal",
        )?;
        let mut options = Self {
            selection,
            scope: values
                .take("scope", "not a scope: use query-head or head-global")?
                .unwrap_or(Scope::QueryHead),
            kind,
            ..Self::default()
        };
        if let Some(chunk) = values.take_text("chunk") {
            let sizes = parse_sizes(&chunk)
                .map_err(|why| Error::Invalid(format!("--chunk `{chunk}`: {why}")))?;
            match (kind, sizes.as_slice()) {
                (Some(ChunkKind::Temporal), &[t]) => options.temporal_chunk = t,
                (Some(ChunkKind::Spatial), &[h, w]) => options.spatial_chunk = [h, w],
                (Some(ChunkKind::Spatiotemporal), &[t, h, w]) => options.st_chunk = [t, h, w],
                (None, _) => {
                    return Err(Error::Invalid(
                        "--chunk needs --chunk-kind temporal|spatial|spatiotemporal".to_string(),
                    ))
                }
                (Some(kind), _) => {
                    return Err(Error::Invalid(format!(
                        "--chunk `{chunk}` does not fit --chunk-kind {kind}: use FRAMES for \
                         temporal, HxW for spatial, TxHxW for spatiotemporal"
                    )))
                }
            }
        }
        Ok(options)
    }

    /// Checks the settings against a grid; the error says what to use instead.
    pub fn validate(&self, grid: Option<TokenGrid>) -> crate::Result<()> {
        match self.selection {
            Selection::Threshold(t) if !(t > 0.0 && t <= 1.0) => {
                return Err(Error::Invalid(format!(
                    "VMoBA threshold {t} must be in (0, 1]: use e.g. 0.25"
                )));
            }
            Selection::TopK(Some(0)) => {
                return Err(Error::Invalid("VMoBA top-k must be at least 1".to_string()))
            }
            _ => {}
        }
        let kinds = match self.kind {
            Some(kind) => vec![kind],
            None => vec![
                ChunkKind::Temporal,
                ChunkKind::Spatial,
                ChunkKind::Spatiotemporal,
            ],
        };
        for kind in kinds {
            let tile = match grid {
                Some(g) => self.tile(kind, g),
                None => self.tile(kind, TokenGrid::new(1, 1, 1)),
            };
            if tile.contains(&0) {
                return Err(Error::Invalid(format!(
                    "VMoBA {kind} chunk {tile:?} has a zero side"
                )));
            }
            if let Some(g) = grid {
                if (0..3).any(|a| tile[a] > g.dims()[a]) {
                    return Err(Error::Invalid(format!(
                        "VMoBA {kind} chunk {}x{}x{} is larger than the token grid {g}: use a smaller --chunk",
                        tile[0], tile[1], tile[2]
                    )));
                }
            }
        }
        Ok(())
    }

    fn topk_for(&self, kind: ChunkKind) -> usize {
        match kind {
            ChunkKind::Temporal => self.topk[0],
            ChunkKind::Spatial => self.topk[1],
            ChunkKind::Spatiotemporal => self.topk[2],
        }
    }

    /// What the selection rule keeps per query for chunks of `kind`.
    pub(crate) fn budget(&self, kind: ChunkKind) -> Budget {
        match self.selection {
            Selection::TopK(k) => Budget::Count(k.unwrap_or_else(|| self.topk_for(kind))),
            Selection::Threshold(t) => Budget::Share(t),
        }
    }
}

/// Result of one VMoBA call.
pub struct VmobaOutput {
    /// Attention output `[B, H, S, D]`, natural order.
    pub out: Tensor,
    /// Query-key pairs computed, over batch and heads: an f32 scalar, on the device where the
    /// GPU path counted them (read it only when needed: reading waits for the call).
    pub pairs: Tensor,
}

impl VmobaOutput {
    /// Fraction of all query-key pairs (`B * H * S * S`) computed.
    pub fn density(&self) -> Result<f64> {
        let dims = self.out.dims();
        let possible = dims[..3].iter().product::<usize>() as f64 * dims[2] as f64;
        let pairs = self.pairs.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok(if possible > 0.0 {
            pairs / possible
        } else {
            0.0
        })
    }
}

/// Per-query chunk selection for every (batch, head): `lists[g * S + query]` are the chunk
/// indices that query attends to (its own chunk first).
pub struct ChunkSelection {
    /// Chunk lists, one per (group, query).
    pub lists: Vec<Vec<u32>>,
}

/// Runs VMoBA with chunks of `kind` over `grid` on `q, k, v: [B, H, S, D]`.
pub fn vmoba_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grid: TokenGrid,
    kind: ChunkKind,
    opts: &VmobaOptions,
) -> Result<VmobaOutput> {
    vmoba_attention_with(q, k, v, grid, kind, opts, ForwardKernel::Auto)
}

/// [`vmoba_attention`] with the forward kernel family `kernel` on the GPU.
pub fn vmoba_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    grid: TokenGrid,
    kind: ChunkKind,
    opts: &VmobaOptions,
    kernel: ForwardKernel,
) -> Result<VmobaOutput> {
    let (_, _, s, _) = q.dims4()?;
    if s != grid.len() {
        candle_core::bail!(
            "VMoBA: {s} tokens do not fill the grid {grid} ({} tokens)",
            grid.len()
        )
    }
    opts.validate(Some(grid))?;
    let chunks = BlockLayout::tiled_shared(grid, opts.tile(kind, grid));
    #[cfg(feature = "cuda")]
    if opts.scope == Scope::QueryHead
        && super::vmoba_cuda::supports(q, &chunks)
        && ![q, k, v].iter().any(|t| t.track_op())
    {
        let (out, pairs) =
            super::vmoba_cuda::vmoba_forward(q, k, v, &chunks, opts.budget(kind), kernel)?;
        return Ok(VmobaOutput { out, pairs });
    }
    let plan = vmoba_plan(q, k, &chunks, kind, opts)?;
    let out = block_sparse_attention_with(q, k, v, &plan, kernel)?;
    Ok(VmobaOutput {
        out,
        pairs: plan.pairs_tensor()?,
    })
}

/// The plan VMoBA runs on the host-selected chunks: single-token query blocks, each
/// attending to its chunks (also the way gradients flow for training).
pub fn vmoba_plan(
    q: &Tensor,
    k: &Tensor,
    chunks: &Arc<BlockLayout>,
    kind: ChunkKind,
    opts: &VmobaOptions,
) -> Result<Arc<SparsePlan>> {
    let (b, h, s, _) = q.dims4()?;
    let singletons = Arc::new(BlockLayout::singletons(s));
    if let (Scope::QueryHead, Budget::Count(keep), false) =
        (opts.scope, opts.budget(kind), q.device().is_cpu())
    {
        let indices = top_chunks_on_device(q, k, chunks, keep)?;
        return Ok(Arc::new(SparsePlan::uniform(
            b,
            h,
            singletons,
            chunks.clone(),
            indices,
        )?));
    }
    let selection = select_chunks(q, k, chunks, kind, opts)?;
    let mask = BlockMask::from_lists(b * h, s, chunks.num_blocks(), &selection.lists)?;
    Ok(Arc::new(SparsePlan::new(
        b,
        h,
        singletons,
        chunks.clone(),
        mask,
    )?))
}

/// Top-k selection per query on the device, as [`select_row`] makes it: the query's own chunk
/// first (its score lifted above every other), then the `keep - 1` best by `q · mean(k)` (the
/// rule's min-max normalisation keeps the order), ties to the lower chunk. `[B * H * S, keep]`.
/// Scores are made for a few (batch, head) groups at a time, at most [`SCORE_BYTES`] of them.
fn top_chunks_on_device(
    q: &Tensor,
    k: &Tensor,
    chunks: &Arc<BlockLayout>,
    keep: usize,
) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let n = chunks.num_blocks();
    let device = q.device();
    let keys = block_means(&k.detach(), chunks)?.reshape((b * h, n, d))?;
    let q = q.detach().reshape((b * h, s, d))?;
    let own = Tensor::from_vec(chunks.block_of_token(0), (s, 1), device)?;
    let lift = (Tensor::arange(0u32, n as u32, device)?
        .unsqueeze(0)?
        .broadcast_eq(&own)?
        .to_dtype(DType::F32)?
        * OWN_LIFT)?; // [S, n]
    let per_call = (SCORE_BYTES / (4 * s * n).max(1)).clamp(1, b * h);
    let mut picked = Vec::with_capacity((b * h).div_ceil(per_call));
    for first in (0..b * h).step_by(per_call) {
        let groups = per_call.min(b * h - first);
        let scores = q
            .narrow(0, first, groups)?
            .to_dtype(DType::F32)?
            .matmul(&keys.narrow(0, first, groups)?.transpose(1, 2)?)?; // [groups, S, n]
        let lifted = scores.broadcast_add(&lift)?;
        picked.push(top_k(&lifted.reshape((groups * s, n))?, keep.clamp(1, n))?);
    }
    Tensor::cat(&picked, 0)
}

/// Most bytes of f32 chunk scores [`top_chunks_on_device`] holds at once.
const SCORE_BYTES: usize = 1 << 30;

/// Added to a query's own chunk's score so that top-k keeps it first (scores are dot products
/// of activations, far below this).
const OWN_LIFT: f64 = 1e30;

/// Scores every chunk for every query (`q · mean(k over chunk)`, f32) and applies the
/// selection rule; the query's own chunk is always kept.
pub fn select_chunks(
    q: &Tensor,
    k: &Tensor,
    chunks: &Arc<BlockLayout>,
    kind: ChunkKind,
    opts: &VmobaOptions,
) -> Result<ChunkSelection> {
    let (b, h, s, _) = q.dims4()?;
    let n = chunks.num_blocks();
    let own = chunks.block_of_token(0);
    let keys = block_means(&k.detach(), chunks)?; // [B, H, n, D]
    let q = q.detach().to_dtype(DType::F32)?.contiguous()?;
    let budget = opts.budget(kind);
    let mut lists = Vec::with_capacity(b * h * s);
    for bi in 0..b {
        for hi in 0..h {
            let qg = q.get(bi)?.get(hi)?; // [S, D]
            let kg = keys.get(bi)?.get(hi)?; // [n, D]
            let gate: Vec<f32> = qg.matmul(&kg.t()?)?.flatten_all()?.to_vec1()?; // [S, n]
            match opts.scope {
                Scope::QueryHead => {
                    for (query, row) in gate.chunks_exact(n).enumerate() {
                        lists.push(select_row(row, own[query], budget));
                    }
                }
                Scope::HeadGlobal => lists.extend(select_head(&gate, n, &own, budget)),
            }
        }
    }
    Ok(ChunkSelection { lists })
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Budget {
    /// Keep this many chunks per query (own included).
    Count(usize),
    /// Keep chunks until this share of the normalised score mass is reached.
    Share(f64),
}

/// Min-max normalised scores (all 1 when they are all equal).
fn normalised(scores: &[f32]) -> Vec<f64> {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let range = (hi - lo) as f64;
    scores
        .iter()
        .map(|&x| {
            if range > 0.0 {
                (x - lo) as f64 / range
            } else {
                1.0
            }
        })
        .collect()
}

/// Best-first order of candidates by score, lower index first on ties.
fn best_first(candidates: &mut [u32], score: impl Fn(u32) -> f64) {
    candidates.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
}

fn select_row(row: &[f32], own: u32, budget: Budget) -> Vec<u32> {
    let norm = normalised(row);
    let mut others: Vec<u32> = (0..row.len() as u32).filter(|&c| c != own).collect();
    best_first(&mut others, |c| norm[c as usize]);
    let mut kept = vec![own];
    match budget {
        Budget::Count(k) => kept.extend(others.iter().take(k.saturating_sub(1))),
        Budget::Share(tau) => {
            let total: f64 = norm.iter().sum();
            let mut mass = norm[own as usize];
            for c in others {
                if mass >= tau * total {
                    break;
                }
                mass += norm[c as usize];
                kept.push(c);
            }
        }
    }
    kept
}

/// Selection over all (query, chunk) pairs of one head: own chunks always, then the best
/// pairs of the whole head until the budget (count per query times queries, or mass share).
fn select_head(gate: &[f32], n: usize, own: &[u32], budget: Budget) -> Vec<Vec<u32>> {
    let s = own.len();
    let norm = normalised(gate);
    let mut kept: Vec<Vec<u32>> = own.iter().map(|&c| vec![c]).collect();
    let mut others: Vec<u32> = (0..(s * n) as u32)
        .filter(|&p| own[p as usize / n] as usize != p as usize % n)
        .collect();
    best_first(&mut others, |p| norm[p as usize]);
    let mut take = |p: u32| kept[p as usize / n].push((p as usize % n) as u32);
    match budget {
        Budget::Count(k) => others
            .iter()
            .take(s * k.saturating_sub(1))
            .for_each(|&p| take(p)),
        Budget::Share(tau) => {
            let total: f64 = norm.iter().sum();
            let mut mass: f64 = (0..s).map(|q| norm[q * n + own[q] as usize]).sum();
            for p in others {
                if mass >= tau * total {
                    break;
                }
                mass += norm[p as usize];
                take(p);
            }
        }
    }
    kept
}

/// VMoBA as an attention method.
#[derive(Clone, Debug)]
pub struct Vmoba {
    options: VmobaOptions,
}

impl Vmoba {
    /// VMoBA with `options` (checked without a grid).
    pub fn new(options: VmobaOptions) -> crate::Result<Self> {
        options.validate(None)?;
        Ok(Self { options })
    }
}

/// VMoBA by name, with its options.
pub const ENTRY: MethodEntry = MethodEntry {
    name: "vmoba",
    about: "mixture of block attention for video (trainable or training-free)",
    options: VmobaOptions::OPTIONS,
    dense_steps: "12",
    dense_layers: "0",
    build: |values| Ok(Arc::new(Vmoba::new(VmobaOptions::from_values(values)?)?)),
};

impl AttentionMethod for Vmoba {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn validate(&self, target: &AttentionTarget) -> crate::Result<()> {
        self.options.validate(Some(target.grid))
    }

    fn describe(&self) -> serde_json::Value {
        let o = &self.options;
        serde_json::json!({
            "chunk_kind": o.kind.map_or("cycle by layer".to_string(), |k| k.to_string()),
            "temporal_chunk": o.temporal_chunk,
            "spatial_chunk": o.spatial_chunk,
            "st_chunk": o.st_chunk,
            "topk": o.topk,
            "selection": format!("{:?}", o.selection),
            "scope": format!("{:?}", o.scope),
        })
    }

    fn attend(&self, call: &MethodCall<'_>) -> Result<Attended> {
        let c = call.call;
        let kind = self
            .options
            .kind
            .unwrap_or_else(|| ChunkKind::cyclic(call.since_first));
        let r = vmoba_attention_with(c.q, c.k, c.v, c.grid, kind, &self.options, call.kernel)?;
        Ok(Attended {
            out: r.out,
            computed: Computed::Pairs(r.pairs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_own_then_best_until_the_share_is_reached() {
        // normalised: [0, 1, 0.5, 0.25], total 1.75; tau 0.5 -> need 0.875
        let row = [0.0f32, 4.0, 2.0, 1.0];
        assert_eq!(select_row(&row, 3, Budget::Share(0.5)), vec![3, 1]); // 0.25 + 1 >= 0.875
        assert_eq!(select_row(&row, 0, Budget::Share(0.5)), vec![0, 1]);
        assert_eq!(select_row(&row, 0, Budget::Share(1.0)), vec![0, 1, 2, 3]);
        assert_eq!(select_row(&row, 2, Budget::Count(2)), vec![2, 1]);
        // all equal: each normalises to 1; a quarter of 4 chunks is the own chunk alone
        assert_eq!(select_row(&[1.0; 4], 2, Budget::Share(0.25)), vec![2]);
    }

    #[test]
    fn head_global_ranks_pairs_across_queries() {
        // 2 queries x 2 chunks; own chunks 0 and 1; the other pairs score 5 (q0,c1) and 1 (q1,c0)
        let gate = [0.0f32, 5.0, 1.0, 3.0];
        let lists = select_head(&gate, 2, &[0, 1], Budget::Count(1));
        assert_eq!(lists, vec![vec![0], vec![1]]);
        let lists = select_head(&gate, 2, &[0, 1], Budget::Share(0.8));
        // normalised [0, 1, 0.2, 0.6], total 1.8, own mass 0.6 -> add (q0,c1) -> 1.6 >= 1.44
        assert_eq!(lists, vec![vec![0, 1], vec![1]]);
    }
}

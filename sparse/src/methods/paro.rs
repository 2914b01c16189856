//! PAROAttention: each head gets the axis order (one of six) that packs its attention into the
//! fewest blocks, found offline by calibration, and a static block mask for a target density.
//! At inference q, k, v are read in the head's order, attended block-sparsely and written back
//! in natural order.

use crate::dense::attention;
use crate::error::Error;
use crate::layout::{AxisOrder, BlockLayout, Permutation};
use crate::method::{Attended, AttentionMethod, AttentionTarget, Computed, MethodCall};
use crate::op::block_sparse_attention_with;
use crate::options::{OptionSpec, OptionValues};
use crate::plan::{BlockMask, SparsePlan};
use crate::pool::{block_attention_mass, Blocking};
use crate::registry::MethodEntry;
use crate::seam::{AttentionCall, SelfAttention};
use candle_core::{Result, Tensor};
use safetensors::tensor::{serialize, Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vdit_core::output::PartialOutput;
use vdit_core::{Step, TokenGrid};

const FORMAT: &str = "vdit-paro-1";

/// Settings of a PARO calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct ParoOptions {
    /// Share of block pairs each head keeps, in `(0, 1]`.
    pub density: f64,
    /// Block size in tokens.
    pub block: usize,
    /// Number of timestep groups with their own masks (1 = one mask for all steps).
    pub step_groups: usize,
}

impl Default for ParoOptions {
    fn default() -> Self {
        Self {
            density: 0.25,
            block: 64,
            step_groups: 1,
        }
    }
}

impl ParoOptions {
    /// Checks the settings; the error says what to use instead.
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Err(Error::Invalid(format!(
                "PARO density {} must be in (0, 1]: use e.g. 0.25",
                self.density
            )));
        }
        if self.block == 0 || self.step_groups == 0 {
            return Err(Error::Invalid(
                "PARO block size and step groups must be positive: use e.g. 64 and 1".to_string(),
            ));
        }
        Ok(())
    }
}

/// Group of `step` when the run is cut into `groups` equal parts.
pub fn step_group(step: Step, groups: usize) -> usize {
    ((step.index * groups) / step.count.max(1)).min(groups - 1)
}

/// Per-head axis orders and static block masks for one token grid.
#[derive(Clone, Debug, PartialEq)]
pub struct ParoCalibration {
    /// Grid the masks were made for.
    pub grid: TokenGrid,
    /// Block size in tokens.
    pub block: usize,
    /// Target density.
    pub density: f64,
    /// Transformer blocks covered.
    pub layers: usize,
    /// Heads per block.
    pub heads: usize,
    /// Timestep groups.
    pub groups: usize,
    /// `orders[layer * heads + head]`.
    orders: Vec<AxisOrder>,
    /// `keep[((group * layers + layer) * heads + head) * nb * nb + qb * nb + kb]`, 0 or 1.
    keep: Vec<u8>,
}

impl ParoCalibration {
    fn blocks(&self) -> usize {
        self.grid.len().div_ceil(self.block)
    }

    /// The axis order chosen for (layer, head).
    pub fn order(&self, layer: usize, head: usize) -> AxisOrder {
        self.orders[layer * self.heads + head]
    }

    /// The block-sparse plan for `layer` in timestep `group` over `heads` (the model's head
    /// indices; all of them, except on a rank of a sequence-parallel run), replicated over
    /// `batch`.
    pub fn plan(
        &self,
        layer: usize,
        group: usize,
        batch: usize,
        heads: Range<usize>,
    ) -> Result<Arc<SparsePlan>> {
        if heads.end > self.heads {
            candle_core::bail!(
                "PARO calibration covers {} heads; asked for heads {heads:?}",
                self.heads
            )
        }
        if layer >= self.layers || group >= self.groups {
            candle_core::bail!(
                "PARO calibration covers {} layers and {} step groups; asked for layer {layer}, group {group}",
                self.layers,
                self.groups
            )
        }
        let nb = self.blocks();
        let orders: Vec<Permutation> = heads
            .clone()
            .map(|h| Permutation::axis_order(self.grid, self.order(layer, h)))
            .collect();
        let layout = Arc::new(BlockLayout::per_head(orders, self.block));
        let mut lists = Vec::with_capacity(batch * heads.len() * nb);
        for _ in 0..batch {
            for head in heads.clone() {
                let base = ((group * self.layers + layer) * self.heads + head) * nb * nb;
                for qb in 0..nb {
                    let row = &self.keep[base + qb * nb..base + (qb + 1) * nb];
                    lists.push((0..nb as u32).filter(|&kb| row[kb as usize] == 1).collect());
                }
            }
        }
        let mask = BlockMask::from_lists(batch * heads.len(), nb, nb, &lists)?;
        Ok(Arc::new(SparsePlan::new(
            batch,
            heads.len(),
            layout.clone(),
            layout,
            mask,
        )?))
    }

    /// Writes the calibration as safetensors (`orders` [layers, heads] and `masks`
    /// [groups, layers, heads, blocks, blocks], u8), through a temporary file.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        let fail = |reason: String| Error::File {
            action: "cannot write",
            path: path.to_path_buf(),
            reason,
        };
        let nb = self.blocks();
        let orders: Vec<u8> = self.orders.iter().map(|o| o.index() as u8).collect();
        let views = [
            (
                "orders",
                TensorView::new(Dtype::U8, vec![self.layers, self.heads], &orders),
            ),
            (
                "masks",
                TensorView::new(
                    Dtype::U8,
                    vec![self.groups, self.layers, self.heads, nb, nb],
                    &self.keep,
                ),
            ),
        ];
        let views: Vec<(&str, TensorView)> = views
            .into_iter()
            .map(|(n, v)| v.map(|v| (n, v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            (
                "grid".to_string(),
                format!("{},{},{}", self.grid.t, self.grid.h, self.grid.w),
            ),
            ("block".to_string(), self.block.to_string()),
            ("density".to_string(), self.density.to_string()),
        ]);
        // Serialised in memory and written as any file the process creates (the safetensors
        // crate's own writer makes 0600 files).
        let bytes = serialize(views, Some(meta)).map_err(|e| fail(e.to_string()))?;
        let partial = PartialOutput::new(path)?;
        std::fs::write(partial.temp(), bytes).map_err(|e| fail(e.to_string()))?;
        Ok(partial.commit()?)
    }

    /// Reads a calibration written by [`ParoCalibration::save`].
    pub fn load(path: &Path) -> crate::Result<Self> {
        let fail = |reason: String| Error::File {
            action: "cannot read PARO calibration",
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(fail(format!(
                "not a {FORMAT} file (make one with `vdit calibrate paro`)"
            )));
        }
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| fail(format!("metadata `{k}` missing")))
        };
        let grid: Vec<usize> = field("grid")?
            .split(',')
            .map(|x| x.trim().parse().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()
            .unwrap_or_default();
        let &[t, h, w] = grid.as_slice() else {
            return Err(fail("`grid` must be three positive numbers T,H,W".into()));
        };
        let tokens = t.checked_mul(h).and_then(|th| th.checked_mul(w));
        let block: usize = field("block")?.parse().unwrap_or(0);
        if block == 0 {
            return Err(fail("`block` must be a positive number of tokens".into()));
        }
        let density: f64 = field("density")?.parse().unwrap_or(f64::NAN);
        if !(density > 0.0 && density <= 1.0) {
            return Err(fail("`density` must be in (0, 1]".into()));
        }
        let nb = tokens
            .map(|n| n.div_ceil(block))
            .filter(|nb| nb.checked_mul(*nb).is_some())
            .ok_or_else(|| fail(format!("grid {t}x{h}x{w} is too large")))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
        let tensor = |name: &str| {
            let view = tensors.tensor(name).map_err(|e| fail(e.to_string()))?;
            if view.dtype() != Dtype::U8 {
                return Err(fail(format!("`{name}` is {:?}, not U8", view.dtype())));
            }
            Ok(view)
        };
        let (orders, masks) = (tensor("orders")?, tensor("masks")?);
        let (&[layers, heads], &[groups, ..]) = (orders.shape(), masks.shape()) else {
            return Err(fail(
                "`orders` must be [layers, heads] and `masks` [groups, layers, heads, blocks, \
                 blocks]"
                    .into(),
            ));
        };
        if masks.shape() != [groups, layers, heads, nb, nb] || groups == 0 {
            return Err(fail(format!(
                "mask shape {:?} does not fit grid {t}x{h}x{w} in blocks of {block} with \
                 orders {:?}",
                masks.shape(),
                orders.shape()
            )));
        }
        let orders = orders
            .data()
            .iter()
            .map(|&i| AxisOrder::ALL.get(usize::from(i)).copied())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                fail(format!(
                    "an order is out of range 0..{}",
                    AxisOrder::ALL.len()
                ))
            })?;
        let keep = masks.data().to_vec();
        if keep.iter().any(|&k| k > 1) {
            return Err(fail("mask values must be 0 or 1".into()));
        }
        if let Some(row) = keep.chunks(nb).position(|row| row.iter().all(|&k| k == 0)) {
            let head = row / nb;
            return Err(fail(format!(
                "query block {} of mask {} keeps no key block (attention there would be empty)",
                row % nb,
                head
            )));
        }
        let calibration = Self {
            grid: TokenGrid::new(t, h, w),
            block,
            density,
            layers,
            heads,
            groups,
            orders,
            keep,
        };
        Ok(calibration)
    }
}

/// (group, layer) -> per axis order, the summed block mass `[heads * nb * nb]`.
type MassByGroupLayer = BTreeMap<(usize, usize), Vec<Vec<f64>>>;

/// Records block-pooled dense attention under all six axis orders during dense generations,
/// then picks orders and masks ([`ParoRecorder::finish`]). Acts as dense attention.
pub struct ParoRecorder {
    grid: TokenGrid,
    opts: ParoOptions,
    /// Per order, the block of every token.
    owners: Vec<Vec<u32>>,
    /// (group, layer) -> per order, `[heads * nb * nb]` summed mass.
    mass: Mutex<MassByGroupLayer>,
    heads: Mutex<usize>,
}

impl ParoRecorder {
    /// A recorder for generations on `grid`.
    pub fn new(grid: TokenGrid, opts: ParoOptions) -> crate::Result<Self> {
        opts.validate()?;
        let owners = AxisOrder::ALL
            .iter()
            .map(|&o| {
                BlockLayout::from_order(Permutation::axis_order(grid, o), opts.block)
                    .block_of_token(0)
            })
            .collect();
        Ok(Self {
            grid,
            opts,
            owners,
            mass: Mutex::new(BTreeMap::new()),
            heads: Mutex::new(0),
        })
    }

    fn record(&self, call: &AttentionCall<'_>) -> Result<()> {
        let nb = self.grid.len().div_ceil(self.opts.block);
        let blockings: Vec<Blocking> = self
            .owners
            .iter()
            .map(|o| Blocking {
                q_block_of_token: o,
                q_blocks: nb,
                k_block_of_token: o,
                k_blocks: nb,
            })
            .collect();
        let masses = block_attention_mass(call.q, call.k, &blockings)?;
        let heads = call.q.dim(1)?;
        *self.heads.lock().expect("heads lock") = heads;
        let group = step_group(call.site.step, self.opts.step_groups);
        let mut store = self.mass.lock().expect("mass lock");
        let entry = store
            .entry((group, call.site.layer))
            .or_insert_with(|| vec![vec![0f64; heads * nb * nb]; AxisOrder::ALL.len()]);
        for (acc, m) in entry.iter_mut().zip(masses) {
            let summed: Vec<f32> = m.sum(0)?.flatten_all()?.to_vec1()?; // over the batch
            acc.iter_mut().zip(summed).for_each(|(a, x)| *a += x as f64);
        }
        Ok(())
    }

    /// Chooses every head's order and its mask per step group. The order is the one whose top
    /// `density` share of block pairs holds the most attention mass over all recorded steps;
    /// among equals, the one needing the fewest blocks to hold 95% of the mass.
    pub fn finish(self) -> crate::Result<ParoCalibration> {
        let store = self.mass.into_inner().expect("mass lock");
        let heads = self.heads.into_inner().expect("heads lock");
        let layers = store.keys().map(|&(_, l)| l + 1).max().ok_or_else(|| {
            Error::Invalid("PARO calibration recorded no attention calls".to_string())
        })?;
        let nb = self.grid.len().div_ceil(self.opts.block);
        let keep_count = ((self.opts.density * (nb * nb) as f64) - 1e-9)
            .ceil()
            .max(1.0) as usize;
        let groups = self.opts.step_groups;
        let summed = |layer: usize, order: usize, head: usize| -> Vec<f64> {
            let mut total = vec![0f64; nb * nb];
            for g in 0..groups {
                if let Some(m) = store.get(&(g, layer)) {
                    total
                        .iter_mut()
                        .zip(&m[order][head * nb * nb..(head + 1) * nb * nb])
                        .for_each(|(t, x)| *t += x);
                }
            }
            total
        };
        let mut orders = Vec::with_capacity(layers * heads);
        for layer in 0..layers {
            for head in 0..heads {
                let score = |o: usize| concentration(&summed(layer, o, head), keep_count);
                let scores: Vec<(f64, usize)> = (0..AxisOrder::ALL.len()).map(score).collect();
                let better = |a: (f64, usize), b: (f64, usize)| {
                    a.0 > b.0 + 1e-9 || ((a.0 - b.0).abs() <= 1e-9 && a.1 < b.1)
                };
                let best = (0..scores.len()).fold(0, |best, o| {
                    if better(scores[o], scores[best]) {
                        o
                    } else {
                        best
                    }
                });
                orders.push(AxisOrder::ALL[best]);
            }
        }
        let mut keep = vec![0u8; groups * layers * heads * nb * nb];
        for g in 0..groups {
            for layer in 0..layers {
                for head in 0..heads {
                    let o = orders[layer * heads + head].index();
                    let mass = match store.get(&(g, layer)) {
                        Some(m) => m[o][head * nb * nb..(head + 1) * nb * nb].to_vec(),
                        None => summed(layer, o, head),
                    };
                    let base = ((g * layers + layer) * heads + head) * nb * nb;
                    static_mask(&mass, nb, keep_count, &mut keep[base..base + nb * nb]);
                }
            }
        }
        Ok(ParoCalibration {
            grid: self.grid,
            block: self.opts.block,
            density: self.opts.density,
            layers,
            heads,
            groups,
            orders,
            keep,
        })
    }
}

impl SelfAttention for ParoRecorder {
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor> {
        if call.grid != self.grid {
            candle_core::bail!(
                "PARO calibration is for grid {}, the call has {}",
                self.grid,
                call.grid
            )
        }
        self.record(call)?;
        attention(call.q, call.k, call.v)
    }
}

/// How concentrated a block map is: the share of the total mass held by the `keep` largest
/// entries, and how many of the largest entries it takes to hold 95% of it.
fn concentration(mass: &[f64], keep: usize) -> (f64, usize) {
    let total: f64 = mass.iter().sum();
    if total <= 0.0 {
        return (0.0, mass.len());
    }
    let mut sorted = mass.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top: f64 = sorted.iter().take(keep).sum();
    let mut running = 0.0;
    let needed = sorted.iter().take_while(|&&m| {
        let short = running < 0.95 * total;
        running += m;
        short
    });
    (top / total, needed.count())
}

/// Marks the `keep` heaviest block pairs, and each query block's heaviest key block so that
/// no query block is left without keys.
fn static_mask(mass: &[f64], nb: usize, keep: usize, out: &mut [u8]) {
    let mut idx: Vec<usize> = (0..mass.len()).collect();
    idx.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]).then(a.cmp(&b)));
    for &i in idx.iter().take(keep) {
        out[i] = 1;
    }
    for qb in 0..nb {
        let row = &mass[qb * nb..(qb + 1) * nb];
        if !out[qb * nb..(qb + 1) * nb].contains(&1) {
            let best = (0..nb).fold(0, |best, kb| if row[kb] > row[best] { kb } else { best });
            out[qb * nb + best] = 1;
        }
    }
}

/// What a PARO plan is built for: layer, step group, batch, first head and head count.
type PlanKey = (usize, usize, usize, usize, usize);

/// PAROAttention as an attention method: a calibration's per-head orders and masks.
pub struct Paro {
    calibration: Arc<ParoCalibration>,
    path: Option<PathBuf>,
    /// Plans by (layer, step group, batch, first head, heads), built once.
    plans: Mutex<HashMap<PlanKey, Arc<SparsePlan>>>,
}

impl Paro {
    /// PARO with `calibration`, read from `path` when it came from a file.
    pub fn new(calibration: Arc<ParoCalibration>, path: Option<PathBuf>) -> Self {
        Self {
            calibration,
            path,
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// PARO with the calibration file `path`.
    pub fn load(path: &Path) -> crate::Result<Self> {
        Ok(Self::new(
            Arc::new(ParoCalibration::load(path)?),
            Some(path.to_path_buf()),
        ))
    }

    /// The options PARO reads.
    pub const OPTIONS: &'static [OptionSpec] = &[OptionSpec {
        key: "paro_calibration",
        value: "FILE",
        help: "calibration file from `vdit calibrate paro` (required)",
    }];

    fn from_values(values: &mut OptionValues) -> crate::Result<Self> {
        let path = values.take_text("paro_calibration").ok_or_else(|| {
            Error::Invalid(
                "--attention paro needs --paro-calibration FILE (make one with `vdit calibrate paro`)"
                    .to_string(),
            )
        })?;
        Self::load(Path::new(&path))
    }

    fn plan(&self, call: &AttentionCall<'_>) -> Result<Arc<SparsePlan>> {
        let c = &self.calibration;
        let (batch, heads) = (call.q.dim(0)?, call.q.dim(1)?);
        let layer = call.site.layer;
        let key = (
            layer,
            step_group(call.site.step, c.groups),
            batch,
            call.first_head,
            heads,
        );
        let mut plans = self.plans.lock().expect("PARO plans lock");
        if let Some(plan) = plans.get(&key) {
            return Ok(Arc::clone(plan));
        }
        let plan = c.plan(
            layer,
            key.1,
            batch,
            call.first_head..call.first_head + heads,
        )?;
        plans.insert(key, Arc::clone(&plan));
        Ok(plan)
    }
}

/// PARO by name, with its options.
pub const ENTRY: MethodEntry = MethodEntry {
    name: "paro",
    about:
        "PAROAttention: per-head token reordering and static block masks from `vdit calibrate paro`",
    options: Paro::OPTIONS,
    dense_steps: "0",
    dense_layers: "",
    build: |values| Ok(Arc::new(Paro::from_values(values)?)),
};

/// How to get a calibration that fits.
const CALIBRATE: &str = "calibrate at this size with `vdit calibrate paro`";

impl AttentionMethod for Paro {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn validate(&self, target: &AttentionTarget) -> crate::Result<()> {
        let c = &self.calibration;
        if c.grid != target.grid {
            return Err(Error::WrongGrid {
                what: "PARO calibration".to_string(),
                made_for: c.grid,
                this_run: target.grid,
                fix: CALIBRATE.to_string(),
            });
        }
        let layers = target.layers.unwrap_or(c.layers);
        if (c.layers, c.heads) != (layers, target.heads) {
            return Err(Error::WrongModel {
                what: "PARO calibration".to_string(),
                layers: c.layers,
                heads: c.heads,
                model_layers: layers,
                model_heads: target.heads,
                fix: "calibrate with this model".to_string(),
            });
        }
        Ok(())
    }

    fn describe(&self) -> serde_json::Value {
        let c = &self.calibration;
        serde_json::json!({
            "grid": [c.grid.t, c.grid.h, c.grid.w],
            "block": c.block,
            "density": c.density,
            "layers": c.layers,
            "heads": c.heads,
            "step_groups": c.groups,
        })
    }

    fn attend(&self, call: &MethodCall<'_>) -> Result<Attended> {
        let c = call.call;
        if c.grid != self.calibration.grid {
            return Err(Error::WrongGrid {
                what: "PARO calibration".to_string(),
                made_for: self.calibration.grid,
                this_run: c.grid,
                fix: CALIBRATE.to_string(),
            }
            .into());
        }
        let plan = self.plan(c)?;
        Ok(Attended {
            out: block_sparse_attention_with(c.q, c.k, c.v, &plan, call.kernel)?,
            computed: Computed::Plan(plan),
        })
    }

    fn fresh(&self) -> Option<Arc<dyn AttentionMethod>> {
        Some(Arc::new(Self::new(
            Arc::clone(&self.calibration),
            self.path.clone(),
        )))
    }

    fn calibration_file(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

//! The CUDA side of block-sparse attention and block selection: uploads of plans (cached per
//! layout and per plan), and kernel launches on candle's stream. Kernels live in `kernels/`
//! and are compiled to PTX by `build.rs`.

pub(crate) use crate::kernel_params::{AttnParams, BwdParams, ListShape};
use crate::layout::BlockLayout;
use crate::op::{ForwardKernel, TokenRows};
use crate::plan::{KeyBlocks, SparsePlan};
use crate::tma::{KvMaps, Sm90Args, TileMap};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex, Weak};
use vdit_core::cuda::{
    dtype_suffix, output, output_tensor, ptr, storage_ptr, tensor_ptr, with_storage, Module,
};
use vdit_core::kernel_module;

const FWD: Module = kernel_module!("attention_fwd");
const FWD_SM90: Module = kernel_module!("attention_fwd_sm90");
const BWD: Module = kernel_module!("attention_bwd");
const BWD_SM90: Module = kernel_module!("attention_bwd_sm90");
const TOPK: Module = kernel_module!("topk");
const LISTS_KERNELS: Module = kernel_module!("lists");

/// Largest query block the forward kernels take (8 warps of 16 rows).
const MAX_Q_BLOCK: usize = 128;
/// Rows of one backward CTA (`BWD_ROWS` in bwd_params.cuh).
const BWD_ROWS: usize = 64;
/// Query rows per chunk of the uniform-list transpose (`lists.cu`), at most: a warp walks a
/// chunk's rows in order, so short chunks keep many warps busy (VSA at Wan 1.3B's shape: 12
/// heads of 624 rows), while the scan over chunks per list stays short where rows are many.
const LIST_CHUNK_ROWS: usize = 256;
/// Chunks per group the uniform-list transpose aims for, where rows allow chunks of 16.
const LIST_CHUNKS: usize = 128;
/// Query blocks below this size get dq from the dk/dv pass by atomics (`bsattn_bwd_dkdvdq`).
const BWD_ATOMIC_DQ_BELOW: usize = 16;
/// Columns per tile of the backward's passes (`INSTANTIATE_BWD`): dq and dk/dv, and dk/dv with
/// dq by atomics.
const BWD_COLUMNS: usize = 64;
const BWD_ATOMIC_DQ_COLUMNS: usize = 32;
/// Column tiles in the ring of the Hopper backward's passes (`INSTANTIATE_BWD_SM90`).
const BWD_SM90_STAGES: usize = 2;
/// Key blocks at least this long (at head dim 128, on Hopper) take the one-pass backward
/// (`bsattn_bwd_sm90_dkdvdq`: two consumers of `BWD_ROWS` key rows per CTA, dq added by bulk
/// reductions); shorter ones would leave its second consumer idle, and keep the two passes.
const BWD_ONE_PASS_KEYS: usize = 2 * BWD_ROWS;
/// Floats per row of the one-pass backward's dq stage (`DQ_STAGE_STRIDE` in
/// attention_bwd_sm90.cu): a consumer's 64 channels of a query row and 8 of padding.
const DQ_STAGE_STRIDE: usize = 72;
/// Longest row the sorting top-k kernel takes (for k above `SMALL_TOPK`).
const MAX_TOPK_COLUMNS: usize = 4096;
/// Largest k of the warp-per-row top-k kernel (`SMALL_K` in topk.cu).
const SMALL_TOPK: usize = 128;

/// True when `device` is a Hopper GPU (compute capability 9.x), where the wgmma kernels run.
pub fn is_hopper(device: &candle_core::Device) -> bool {
    match device {
        candle_core::Device::Cuda(dev) => dev
            .cuda_stream()
            .context()
            .compute_capability()
            .map(|c| c.0 == 9)
            .unwrap_or(false),
        _ => false,
    }
}

/// The Hopper kernel name prefix to use on `dev` for `kernel`, or `None` for the warp-MMA
/// kernels.
pub(crate) fn hopper_kernel(
    dev: &CudaDevice,
    kernel: ForwardKernel,
) -> Result<Option<&'static str>> {
    let hopper = dev.cuda_stream().context().compute_capability().w()?.0 == 9;
    Ok(match kernel {
        ForwardKernel::Mma => None,
        ForwardKernel::Auto if hopper => Some("bsattn_fwd_sm90"),
        ForwardKernel::Auto => None,
        _ if !hopper => {
            candle_core::bail!(
                "the wgmma attention kernels need a Hopper GPU (compute capability 9.x)"
            )
        }
        ForwardKernel::Wgmma => Some("bsattn_fwd_sm90"),
    })
}

/// True when the kernels handle this dtype, head dim and plan (others use the CPU engine).
pub fn supports(dtype: DType, head_dim: usize, plan: &SparsePlan) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
        && matches!(head_dim, 64 | 128)
        && plan.q_layout.tile() <= MAX_Q_BLOCK
}

// SAFETY: plain old data with the C layout of the kernels' parameter structs, which the build
// checks (kernel_params.rs).
unsafe impl DeviceRepr for AttnParams {}
// SAFETY: as for AttnParams.
unsafe impl DeviceRepr for BwdParams {}
// SAFETY: as for AttnParams.
unsafe impl DeviceRepr for ListShape {}

/// A block layout's token orders and block starts on one device.
pub(crate) struct DeviceLayout {
    pub(crate) order: CudaSlice<u32>,
    pub(crate) starts: CudaSlice<u32>,
    per_head: bool,
    /// Every order is the identity (slots are tokens).
    pub(crate) natural: bool,
}

/// Host CSR lists on one device.
struct DeviceLists {
    offsets: CudaSlice<u32>,
    indices: CudaSlice<u32>,
}

/// One cached device copy: its host object (weakly), the device and the copy.
type CacheEntry<K, V> = (Weak<K>, candle_core::cuda_backend::DeviceId, Arc<V>);

/// Device copies of host objects, kept while the host object lives.
struct Cache<K, V> {
    entries: Mutex<Vec<CacheEntry<K, V>>>,
}

impl<K, V> Cache<K, V> {
    const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    fn get_or(
        &self,
        key: &Arc<K>,
        dev: &CudaDevice,
        make: impl FnOnce() -> Result<V>,
    ) -> Result<Arc<V>> {
        let mut entries = self.entries.lock().expect("device cache lock");
        entries.retain(|(w, _, _)| w.strong_count() > 0);
        if let Some((_, _, v)) = entries
            .iter()
            .find(|(w, id, _)| *id == dev.id() && w.as_ptr() == Arc::as_ptr(key))
        {
            return Ok(Arc::clone(v));
        }
        let value = Arc::new(make()?);
        entries.push((Arc::downgrade(key), dev.id(), Arc::clone(&value)));
        Ok(value)
    }
}

static LAYOUTS: Cache<BlockLayout, DeviceLayout> = Cache::new();
static LISTS: Cache<SparsePlan, DeviceLists> = Cache::new();
static BLOCK_OF: Cache<BlockLayout, CudaSlice<u32>> = Cache::new();

/// The block of every token of a layout shared by all heads, on `dev` (copied once per layout).
pub(crate) fn block_of_on(
    dev: &CudaDevice,
    layout: &Arc<BlockLayout>,
) -> Result<Arc<CudaSlice<u32>>> {
    BLOCK_OF.get_or(layout, dev, || dev.clone_htod(&layout.block_of_token(0)))
}

pub(crate) fn layout_on(dev: &CudaDevice, layout: &Arc<BlockLayout>) -> Result<Arc<DeviceLayout>> {
    LAYOUTS.get_or(layout, dev, || {
        let mut order = Vec::with_capacity(layout.num_orders() * layout.tokens());
        for h in 0..layout.num_orders() {
            order.extend_from_slice(layout.order(h).order());
        }
        Ok(DeviceLayout {
            order: dev.clone_htod(&order)?,
            starts: dev.clone_htod(layout.starts())?,
            per_head: !layout.is_shared(),
            natural: order
                .chunks(layout.tokens().max(1))
                .all(|o| o.iter().enumerate().all(|(i, &t)| t as usize == i)),
        })
    })
}

/// A `[B, H, S, D]` view as the kernels take it: the device address of its first element and
/// its (batch, head, token) strides in elements (the channel stride is 1).
pub(crate) type View = (u64, [i64; 3]);

/// Device address of a tensor view's first element and its (batch, head, token) strides.
pub(crate) fn view(s: &CudaStorage, l: &Layout) -> Result<View> {
    let stride = l.stride();
    if stride.len() != 4 || stride[3] != 1 {
        candle_core::bail!(
            "attention kernels need a unit stride over the head dim, got strides {stride:?}"
        )
    }
    Ok((
        storage_ptr(s, l)?,
        [stride[0] as i64, stride[1] as i64, stride[2] as i64],
    ))
}

/// Device address of a CUDA tensor view's first element and its (batch, head, token) strides.
pub(crate) fn tensor_view(t: &Tensor) -> Result<View> {
    with_storage(t, view)
}

/// True when every token row of a 16-bit view starts 16-byte aligned, as kernels that move
/// 16-byte vectors need.
pub(crate) fn rows_16_byte_aligned((base, strides): &View) -> bool {
    base % 16 == 0 && strides.iter().all(|s| s % 8 == 0)
}

/// Pushes a view as the kernels take it: its address, then its batch, head and token strides.
pub(crate) fn arg_view<'a>(builder: &mut LaunchArgs<'a>, (base, strides): &'a View) {
    builder
        .arg(base)
        .arg(&strides[0])
        .arg(&strides[1])
        .arg(&strides[2]);
}

/// CTAs of `per` threads that cover `items` threads (at least one), or an error naming `what`
/// where they exceed one launch's grid.
pub(crate) fn grid_blocks(items: usize, per: usize, what: &str) -> Result<u32> {
    u32::try_from(items.div_ceil(per).max(1))
        .map_err(|_| candle_core::Error::Msg(format!("{what}: {items} threads exceed one launch")))
}

/// One thread per item, in CTAs of 256.
pub(crate) fn one_thread_each(items: usize, what: &str) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (grid_blocks(items, 256, what)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Key lists of a plan for the kernel, and whatever keeps their device buffers alive.
struct KernelLists {
    offsets: u64,
    indices: u64,
    uniform_k: i32,
    all_keys: i32,
    _keep: Option<Arc<DeviceLists>>,
    _uniform: Option<Tensor>,
}

fn key_lists(dev: &CudaDevice, plan: &Arc<SparsePlan>) -> Result<KernelLists> {
    match &plan.keys {
        KeyBlocks::All => Ok(KernelLists {
            offsets: 0,
            indices: 0,
            uniform_k: 0,
            all_keys: plan.k_layout.num_blocks() as i32,
            _keep: None,
            _uniform: None,
        }),
        KeyBlocks::Uniform(t) => {
            let t = t.contiguous()?;
            Ok(KernelLists {
                offsets: 0,
                indices: tensor_ptr(&t)?,
                uniform_k: t.dim(1)? as i32,
                all_keys: 0,
                _keep: None,
                _uniform: Some(t),
            })
        }
        KeyBlocks::Lists(mask) => {
            let lists = LISTS.get_or(plan, dev, || {
                Ok(DeviceLists {
                    offsets: dev.clone_htod(mask.offsets())?,
                    indices: dev.clone_htod(mask.indices())?,
                })
            })?;
            Ok(KernelLists {
                offsets: ptr(dev, &lists.offsets),
                indices: ptr(dev, &lists.indices),
                uniform_k: 0,
                all_keys: 0,
                _keep: Some(lists),
                _uniform: None,
            })
        }
    }
}

/// Runs the forward kernel; returns the output (its rows laid out as `rows` says) and, when
/// asked, the log-sum-exp `[B * H, S]`.
pub(crate) fn attention_forward(
    plan: &Arc<SparsePlan>,
    inputs: [(&CudaStorage, &Layout); 3],
    scale: f32,
    with_lse: bool,
    kernel: ForwardKernel,
    rows: TokenRows,
) -> Result<(CudaStorage, Option<CudaSlice<f32>>)> {
    let dev = inputs[0].0.device().clone();
    let dtype = inputs[0].0.dtype();
    let (b, h, s, d) = inputs[0].1.shape().dims4()?;
    let sk = inputs[1].1.shape().dims4()?.2;
    let (q, k, v) = (
        view(inputs[0].0, inputs[0].1)?,
        view(inputs[1].0, inputs[1].1)?,
        view(inputs[2].0, inputs[2].1)?,
    );
    let (ql, kl) = (
        layout_on(&dev, &plan.q_layout)?,
        layout_on(&dev, &plan.k_layout)?,
    );
    let lists = key_lists(&dev, plan)?;
    let n = b * s * h * d;
    if !matches!(dtype, DType::BF16 | DType::F16) {
        candle_core::bail!("attention kernels do not take {dtype:?}")
    }
    let (out, out_ptr) = output(&dev, dtype, n)?;
    let lse = if with_lse {
        Some(dev.alloc_zeros::<f32>(b * h * s)?)
    } else {
        None
    };
    let small = plan.q_layout.tile() <= 64;
    let nqb = plan.q_layout.num_blocks();
    let params = AttnParams {
        q: q.0,
        k: k.0,
        v: v.0,
        out: out_ptr,
        lse: lse.as_ref().map_or(0, |l| ptr(&dev, l)),
        q_strides: q.1,
        k_strides: k.1,
        v_strides: v.1,
        o_strides: rows.strides((b, h, s, d)),
        q_order: ptr(&dev, &ql.order),
        q_starts: ptr(&dev, &ql.starts),
        k_order: ptr(&dev, &kl.order),
        k_starts: ptr(&dev, &kl.starts),
        offsets: lists.offsets,
        indices: lists.indices,
        b: b as i32,
        h: h as i32,
        s: s as i32,
        sk: sk as i32,
        q_per_head: ql.per_head as i32,
        k_per_head: kl.per_head as i32,
        nqb: nqb as i32,
        uniform_k: lists.uniform_k,
        all_keys: lists.all_keys,
        scale_log2: scale * std::f32::consts::LOG2_E,
        tiles: 0,
        k_natural: kl.natural as i32,
    };
    launch_forward(
        &dev,
        dtype,
        d,
        small,
        (nqb as u32, (b * h) as u32, 1),
        &params,
        kernel,
    )?;
    Ok((out, lse))
}

/// Launches the forward kernel of this GPU's family for `dtype` and head dim `d` over
/// `grid_dim` CTAs, each running a query tile of 64 (`small`) or 128 rows.
pub(crate) fn launch_forward(
    dev: &CudaDevice,
    dtype: DType,
    d: usize,
    small: bool,
    grid_dim: (u32, u32, u32),
    params: &AttnParams,
    kernel: ForwardKernel,
) -> Result<()> {
    let t = dtype_suffix(dtype)?;
    if let Some(prefix) = hopper_kernel(dev, kernel)? {
        // A producer warpgroup plus consumer warpgroups of 64 query rows each; a ring of three
        // K/V tiles of 64 or 128 keys of the key stream (tiles span key blocks), the query tile
        // (two consumers; one keeps its rows in registers), plus 1 KiB to align the tiles for
        // the 128-byte swizzle. One consumer takes 64-key tiles, so that two CTAs fit on an SM;
        // two take 128-key tiles.
        let (groups, key_tile, query_rows) = if small { (1, 64, 0) } else { (2, 128, 128) };
        let stages = 3;
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (128 * (groups as u32 + 1), 1, 1),
            shared_mem_bytes: ((query_rows + 2 * stages * key_tile) * d * 2 + 1024) as u32,
        };
        let name = format!("{prefix}_{t}_d{d}_wg{groups}_bn{key_tile}_st{stages}");
        let args = Sm90Args {
            params: *params,
            maps: KvMaps::for_keys(params, dtype, d, key_tile),
        };
        FWD_SM90.launch(dev, &name, cfg, &args)
    } else {
        let warps = if small { 4 } else { 8 };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: ((16 * warps + 4 * 64) * d * 2) as u32,
        };
        let name = format!("bsattn_fwd_{t}_d{d}_w{warps}");
        FWD.launch(dev, &name, cfg, params)
    }
}

/// A forward's log-sum-exp `[B * H, S]` kept for its backward.
#[derive(Clone)]
pub(crate) struct SavedLse(pub(crate) Arc<CudaSlice<f32>>);

/// Runs the backward kernels (recomputing the log-sum-exp unless `saved` has it) for the
/// output gradient `dout` (a `[B, H, S, D]` view); returns dq,
/// dk, dv flattened one after the other, in the inputs' dtype (f32 where the warp-MMA kernel
/// adds dq by atomics).
pub(crate) fn attention_backward(
    plan: &Arc<SparsePlan>,
    inputs: [(&CudaStorage, &Layout); 3],
    dout: &Tensor,
    delta: &Tensor,
    scale: f32,
    kernel: ForwardKernel,
    saved: Option<&SavedLse>,
) -> Result<CudaStorage> {
    let dev = inputs[0].0.device().clone();
    let dtype = inputs[0].0.dtype();
    let (b, h, s, d) = inputs[0].1.shape().dims4()?;
    let sk = inputs[1].1.shape().dims4()?.2;
    let lse = match saved {
        Some(saved) => Arc::clone(&saved.0),
        None => Arc::new(
            attention_forward(plan, inputs, scale, true, kernel, TokenRows::Bshd)?
                .1
                .expect("log-sum-exp requested"),
        ),
    };
    let (q, k, v) = (
        view(inputs[0].0, inputs[0].1)?,
        view(inputs[1].0, inputs[1].1)?,
        view(inputs[2].0, inputs[2].1)?,
    );
    let (ql, kl) = (
        layout_on(&dev, &plan.q_layout)?,
        layout_on(&dev, &plan.k_layout)?,
    );
    // Each pass walks its row blocks' column lists: the forward's key lists for dq, their
    // transpose for dk/dv (none for a dense plan; uniform lists are transposed on the device).
    let (nqb, nkb) = (plan.q_layout.num_blocks(), plan.k_layout.num_blocks());
    let forward_lists = key_lists(&dev, plan)?;
    let transposed = match &plan.keys {
        KeyBlocks::All => None,
        KeyBlocks::Uniform(t) => Some(transpose_uniform(&dev, &t.contiguous()?, b * h, nqb, nkb)?),
        KeyBlocks::Lists(mask) => {
            let t = mask.transpose();
            Some((dev.clone_htod(t.offsets())?, dev.clone_htod(t.indices())?))
        }
    };
    let (nq, nk) = (b * h * s * d, b * h * sk * d);
    let len = nk
        .checked_mul(2)
        .and_then(|n| n.checked_add(nq))
        .ok_or_else(|| candle_core::Error::Msg("attention backward: gradients too large".into()))?;
    // Query blocks too small to fill a CTA's rows: the dk/dv pass adds dq with atomics (into
    // f32 zeros), and no dq pass runs. Otherwise each pass (or the one-pass kernel, and the
    // scaling of its dq) writes every row of every block in the inputs' dtype, and the layouts'
    // blocks cover every token (rows without columns get zeros), so the buffer needs no
    // initialisation.
    let dq_by_atomics = plan.q_layout.tile() < BWD_ATOMIC_DQ_BELOW;
    let (packed, base, elem) = if dq_by_atomics {
        let zeros = dev.alloc_zeros::<f32>(len)?;
        let base = ptr(&dev, &zeros);
        (CudaStorage::wrap_cuda_slice(zeros, dev.clone()), base, 4)
    } else {
        let (storage, base) = output(&dev, dtype, len)?;
        (storage, base, dtype.size_in_bytes() as u64)
    };
    // The output gradient as the kernels read it: a [B, H, S, D] view with 16-byte aligned
    // rows (a contiguous copy where it has none).
    let mut dout = dout.to_dtype(dtype)?;
    if !tensor_view(&dout).is_ok_and(|v| rows_16_byte_aligned(&v)) {
        dout = dout.contiguous()?;
    }
    let dout_view = tensor_view(&dout)?;
    let mut params = BwdParams {
        q: q.0,
        k: k.0,
        v: v.0,
        dout: dout_view.0,
        q_strides: q.1,
        k_strides: k.1,
        v_strides: v.1,
        o_strides: dout_view.1,
        lse: ptr(&dev, lse.as_ref()),
        delta: tensor_ptr(&delta.contiguous()?)?,
        dq: base,
        dk: base + elem * nq as u64,
        dv: base + elem * (nq + nk) as u64,
        q_order: ptr(&dev, &ql.order),
        q_starts: ptr(&dev, &ql.starts),
        k_order: ptr(&dev, &kl.order),
        k_starts: ptr(&dev, &kl.starts),
        offsets: 0,
        indices: 0,
        b: b as i32,
        h: h as i32,
        s: s as i32,
        sk: sk as i32,
        q_per_head: ql.per_head as i32,
        k_per_head: kl.per_head as i32,
        rows_blocks: 0,
        row_chunks: 0,
        all_cols: 0,
        uniform_cols: 0,
        scale,
    };
    let t = dtype_suffix(dtype)?;
    // The Hopper passes (a producer warpgroup and consumers of 64 rows) where wgmma runs,
    // except with dq by atomics, which only the warp-MMA kernel does.
    let hopper = !dq_by_atomics && hopper_kernel(&dev, kernel)?.is_some();
    // The one-pass Hopper kernel adds dq into f32 zeros, scaled into `packed` afterwards.
    let one_pass = hopper && d == 128 && plan.k_layout.tile() >= BWD_ONE_PASS_KEYS;
    let dq_sum = if one_pass {
        let sum = dev.alloc_zeros::<f32>(nq)?;
        params.dq = ptr(&dev, &sum);
        Some(sum)
    } else {
        None
    };
    // One pass over `row_blocks` row blocks of at most `largest` rows, against column tiles of
    // `columns` listed by (offsets, indices, uniform list length, all column blocks); on
    // Hopper, `consumers` warpgroups of BWD_ROWS rows per CTA.
    let mut run_pass = |pass: &str,
                        row_blocks: usize,
                        largest: usize,
                        columns: usize,
                        consumers: usize,
                        (offsets, indices, uniform, all): (u64, u64, i32, i32)|
     -> Result<()> {
        let chunks = largest.div_ceil(BWD_ROWS * consumers);
        params.rows_blocks = row_blocks as i32;
        params.row_chunks = chunks as i32;
        (params.offsets, params.indices) = (offsets, indices);
        (params.uniform_cols, params.all_cols) = (uniform, all);
        let grid_dim = ((row_blocks * chunks) as u32, (b * h) as u32, 1);
        if hopper {
            // Two row tiles per consumer, a ring of two column tiles per stage, the one-pass
            // kernel's two dS^T tiles (both consumers' rows by the columns) and each
            // consumer's dq stage (a row per column), plus 1 KiB to align the tiles for the
            // 128-byte swizzle.
            let ds_tiles = if consumers > 1 {
                2 * consumers * BWD_ROWS * columns * 2 + consumers * columns * DQ_STAGE_STRIDE * 4
            } else {
                0
            };
            let cfg = LaunchConfig {
                grid_dim,
                block_dim: (128 * (consumers as u32 + 1), 1, 1),
                shared_mem_bytes: ((2 * consumers * BWD_ROWS + 2 * BWD_SM90_STAGES * columns)
                    * d
                    * 2
                    + ds_tiles
                    + 1024) as u32,
            };
            let name = format!("bsattn_bwd_sm90_{pass}_{t}_d{d}");
            if consumers > 1 {
                // The one-pass kernel, with the map of its dq sum ([B * H, S, D] f32).
                let args = Sm90Args {
                    params,
                    maps: TileMap::for_dq_sum(params.dq, b * h, s, d, columns),
                };
                return BWD_SM90.launch(&dev, &name, cfg, &args);
            }
            return BWD_SM90.launch(&dev, &name, cfg, &params);
        }
        // Two row tiles, two buffers of two column tiles, the columns' lse, delta and tokens
        // (two buffers each), and the dk/dv pass's dS tile (padded rows).
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (128, 1, 1),
            shared_mem_bytes: ((2 * BWD_ROWS + 4 * columns) * d * 2
                + 6 * columns * 4
                + BWD_ROWS * (columns + 8) * 2) as u32,
        };
        BWD.launch(&dev, &format!("bsattn_bwd_{pass}_{t}_d{d}"), cfg, &params)
    };
    let (q_tile, k_tile) = (plan.q_layout.tile(), plan.k_layout.tile());
    if !dq_by_atomics && !one_pass {
        let f = &forward_lists;
        let lists = (f.offsets, f.indices, f.uniform_k, f.all_keys);
        run_pass("dq", nqb, q_tile, BWD_COLUMNS, 1, lists)?;
    }
    let lists = match &transposed {
        Some((offsets, indices)) => (ptr(&dev, offsets), ptr(&dev, indices), 0, 0),
        None => (0, 0, 0, nqb as i32),
    };
    if dq_by_atomics {
        run_pass("dkdvdq", nkb, k_tile, BWD_ATOMIC_DQ_COLUMNS, 1, lists)?;
    } else if one_pass {
        run_pass("dkdvdq", nkb, k_tile, BWD_COLUMNS, 2, lists)?;
    } else {
        run_pass("dkdv", nkb, k_tile, BWD_COLUMNS, 1, lists)?;
    }
    if let Some(sum) = &dq_sum {
        finish_dq(&dev, sum, base, scale, t)?;
    }
    // Keep the temporaries alive until the kernels are queued (the stream orders their use).
    drop((forward_lists, transposed, dout, dq_sum));
    Ok(packed)
}

/// Writes `scale * sum` (f32, a multiple of 8 values) to `dq` (the address of as many values of
/// the dtype `t`): the one-pass backward's dq.
fn finish_dq(dev: &CudaDevice, sum: &CudaSlice<f32>, dq: u64, scale: f32, t: &str) -> Result<()> {
    let groups = sum.len() / 8;
    let cfg = one_thread_each(groups, "attention backward's dq")?;
    let func = BWD.function(dev, &format!("bsattn_bwd_finish_dq_{t}"))?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    let groups = groups as i64;
    builder.arg(sum).arg(&dq).arg(&scale).arg(&groups);
    // SAFETY: the arguments match the kernel's (f32 sum, dq address, scale, groups); it reads
    // 8 * groups floats of `sum` and writes as many values at `dq`, which the caller sized.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

/// `rowsum(x * y)` over the head dim, `[B, H, S]` f32, for `[B, H, S, D]` views on a CUDA
/// device, in one kernel; `None` where the kernel does not apply (another device, differing
/// shapes or dtypes, a dtype other than bf16/f16, a head dim other than 64 or 128, rows not
/// 16-byte aligned).
pub(crate) fn row_dots(x: &Tensor, y: &Tensor) -> Result<Option<Tensor>> {
    let candle_core::Device::Cuda(dev) = x.device() else {
        return Ok(None);
    };
    let (b, h, s, d) = x.dims4()?;
    if y.dims() != x.dims()
        || y.dtype() != x.dtype()
        || !matches!(x.dtype(), DType::BF16 | DType::F16)
        || !matches!(d, 64 | 128)
    {
        return Ok(None);
    }
    let (Ok(xv), Ok(yv)) = (tensor_view(x), tensor_view(y)) else {
        return Ok(None);
    };
    if !rows_16_byte_aligned(&xv) || !rows_16_byte_aligned(&yv) {
        return Ok(None);
    }
    let rows = b * h * s;
    let threads = rows
        .checked_mul(d / 8)
        .ok_or_else(|| candle_core::Error::Msg("attention backward: too many rows".into()))?;
    let cfg = one_thread_each(threads, "attention backward's delta")?;
    let (delta, delta_ptr) = output_tensor(dev, DType::F32, &[b, h, s])?;
    let func = BWD.function(
        dev,
        &format!("bsattn_bwd_delta_{}_d{d}", dtype_suffix(x.dtype())?),
    )?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    arg_view(&mut builder, &xv);
    arg_view(&mut builder, &yv);
    let (heads, tokens, rows) = (h as i32, s as i32, rows as i64);
    builder.arg(&delta_ptr).arg(&heads).arg(&tokens).arg(&rows);
    // SAFETY: the arguments match `row_dots`' (two views, the output, sizes); every row the
    // kernel reads lies in `x` and `y`, and it writes `rows` floats of `delta`.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(Some(delta))
}

/// The transpose of uniform lists `indices: [groups * nq, k]` (u32, contiguous) of key blocks
/// out of `nk`, on the device: CSR offsets `[groups * nk + 1]` and query blocks, each list in
/// ascending order (as [`crate::plan::BlockMask::transpose`] makes it).
fn transpose_uniform(
    dev: &CudaDevice,
    indices: &Tensor,
    groups: usize,
    nq: usize,
    nk: usize,
) -> Result<(CudaSlice<u32>, CudaSlice<u32>)> {
    let k = indices.dim(1)?;
    let chunk_rows = nq.div_ceil(LIST_CHUNKS).clamp(16, LIST_CHUNK_ROWS);
    let chunks = nq.div_ceil(chunk_rows);
    let shape = ListShape {
        groups: groups as i32,
        nq: nq as i32,
        k: k as i32,
        nk: nk as i32,
        chunk_rows: chunk_rows as i32,
        chunks: chunks as i32,
    };
    let counts = dev.alloc_zeros::<u32>(groups * chunks * nk)?;
    let offsets = dev.alloc_zeros::<u32>(groups * nk + 1)?;
    // SAFETY: chunk_fill writes each of the groups * nq * k entries once.
    let out = unsafe { dev.alloc::<u32>(groups * nq * k) }?;
    let (src, counts_ptr, offsets_ptr, out_ptr) = (
        tensor_ptr(indices)?,
        ptr(dev, &counts),
        ptr(dev, &offsets),
        ptr(dev, &out),
    );
    let stream = dev.cuda_stream();
    let grid = (chunks as u32, groups as u32, 1);
    let launch = |name: &str, grid_dim, threads, args: &[&u64]| -> Result<()> {
        let func = LISTS_KERNELS.function(dev, name)?;
        let mut builder = stream.launch_builder(&func);
        builder.arg(args[0]).arg(&shape);
        for a in &args[1..] {
            builder.arg(*a);
        }
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernels of lists.cu, whose sizes `shape` gives.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    };
    launch("chunk_counts", grid, 256, &[&src, &counts_ptr])?;
    let lists = (groups * nk).div_ceil(256) as u32;
    launch(
        "chunk_bases",
        (lists, 1, 1),
        256,
        &[&counts_ptr, &offsets_ptr],
    )?;
    launch("list_offsets", (1, 1, 1), 1024, &[&offsets_ptr])?;
    launch(
        "chunk_fill",
        grid,
        32,
        &[&src, &counts_ptr, &offsets_ptr, &out_ptr],
    )?;
    Ok((offsets, out))
}

/// Row-wise top-k on the GPU; see [`crate::op::top_k`].
pub(crate) fn top_k(s: &CudaStorage, l: &Layout, k: usize) -> Result<(CudaStorage, Shape)> {
    let (rows, n) = l.shape().dims2()?;
    let dev = s.device().clone();
    let k = k.min(n);
    if k > SMALL_TOPK && n > MAX_TOPK_COLUMNS {
        candle_core::bail!(
            "top-k on the GPU takes k <= {SMALL_TOPK} or rows of at most {MAX_TOPK_COLUMNS} entries, got k = {k} of {n}"
        )
    }
    let scores = ptr(&dev, s.as_cuda_slice::<f32>()?) + (l.start_offset() * 4) as u64;
    let out = unsafe { dev.alloc::<u32>(rows * k)? };
    let stream = dev.cuda_stream();
    let (out_ptr, n32, k32) = (ptr(&dev, &out), n as i32, k as i32);
    if k <= SMALL_TOPK {
        let func = TOPK.function(&dev, "topk_rows_small_k_f32")?;
        let rows32 = rows as i32;
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&scores)
            .arg(&out_ptr)
            .arg(&rows32)
            .arg(&n32)
            .arg(&k32);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(4) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `topk_rows_small_k_f32(const float*, uint32_t*, int, int, int)`.
        unsafe { builder.launch(cfg) }.w()?;
    } else {
        let padded = n.next_power_of_two();
        let func = TOPK.function(&dev, "topk_rows_f32")?;
        let p32 = padded as i32;
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&scores)
            .arg(&out_ptr)
            .arg(&n32)
            .arg(&k32)
            .arg(&p32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (padded * 8) as u32,
        };
        // SAFETY: arguments match `topk_rows_f32(const float*, uint32_t*, int, int, int)`.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, k)),
    ))
}

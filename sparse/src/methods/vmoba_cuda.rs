//! VMoBA on the GPU without host round trips per query: the kernels of `kernels/vmoba.cu` score
//! every chunk for every query ([`chunk_scores`]), select chunks, list each chunk's
//! (query, chunk) pairs and cut them into work tiles; attention writes one partial output and
//! log-sum-exp per pair (at the pair's slot in its chunk's list) and a merge kernel combines
//! each query's partials exactly. On Hopper, chunks of at most [`RESIDENT_KEYS`] keys run
//! chunk-stationary (`kernels/vmoba_sm90.cu`: a CTA keeps a chunk's keys in shared memory and
//! streams up to [`ITEM_ROWS`] of its queries, storing their partial rows by bulk tensor
//! stores); otherwise the forward kernel runs in its gathered mode on 64- or 128-query tiles.
//! Forward only: training takes the plan path, whose backward exists. Heads run in groups so
//! that scores and partial outputs stay within a memory budget. The top-k rule runs without a
//! read-back (its pairs per head are known); the share rule reads back the pair counts per
//! (head, chunk), to size the pair buffers.

use super::vmoba::Budget;
use crate::cuda::{
    arg_view, block_of_on, grid_blocks, hopper_kernel, launch_forward, layout_on, one_thread_each,
    tensor_view, AttnParams, DeviceLayout,
};
use crate::layout::BlockLayout;
use crate::op::ForwardKernel;
use crate::pool::block_means;
use crate::tma::{Sm90Args, TileMap};
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Device, IndexOp, Result, Tensor};
use std::sync::Arc;
use vdit_core::cuda::{dtype_suffix, output_tensor, ptr, tensor_ptr, untracked_tensor, Module};

const VMOBA: Module = vdit_core::kernel_module!("vmoba");
const VMOBA_SM90: Module = vdit_core::kernel_module!("vmoba_sm90");
const VMOBA_SCORES_SM90: Module = vdit_core::kernel_module!("vmoba_scores_sm90");
/// Most chunks the selection kernel takes (each of its four warps keeps a row of scores in
/// shared memory, beside 12 KiB of histograms); `vmoba_fill`'s shared counters hold two heads'
/// worth.
pub(crate) const MAX_CHUNKS: usize = 2048;
/// Budget for one head group's scores.
const SCORE_BYTES: usize = 512 << 20;
/// Parts of each chunk mean in the chunk scores' 16-bit product (`SCORE_PARTS` of
/// `kernels/vmoba_scores.cuh`).
const SCORE_PARTS: usize = 3;
/// A score kernel: its module and name, the queries a CTA takes and the chunks a block of means
/// it stages holds (`SCORE_ROWS`, `SCORE_CHUNKS` of `kernels/vmoba.cu`, `SM90_SCORE_*` of
/// `kernels/vmoba_scores_sm90.cu`).
struct ScoreKernel {
    module: Module,
    name: &'static str,
    rows: usize,
    chunks: usize,
}

/// The wgmma score kernel where the wgmma attention kernels run (Hopper), the mma.sync one
/// elsewhere.
fn score_kernel(dev: &CudaDevice, kernel: ForwardKernel) -> Result<ScoreKernel> {
    Ok(match hopper_kernel(dev, kernel)? {
        Some(_) => ScoreKernel {
            module: VMOBA_SCORES_SM90,
            name: "vmoba_scores_sm90",
            rows: 128,
            chunks: 64,
        },
        None => ScoreKernel {
            module: VMOBA,
            name: "vmoba_scores",
            rows: 256,
            chunks: 32,
        },
    })
}

/// Budget for one head group's partial outputs.
const PARTIAL_BYTES: usize = 1 << 30;
/// Bytes of one slot's partial output (a row in the inputs' 16-bit dtype) and log-sum-exp (f32).
fn partial_bytes_per_slot(d: usize) -> usize {
    d * 2 + 4
}
/// Slots where each chunk's pair list starts: a multiple of this (the chunk-stationary kernel's
/// query tile), so that a tile's rows never reach into the next list.
const LIST_ALIGN: u32 = 128;
/// Slots of `heads` heads' lists over `n` chunks holding `pairs` pairs: at most this many.
fn slots_bound(pairs: usize, heads: usize, n: usize) -> usize {
    pairs + heads * n * (LIST_ALIGN as usize - 1)
}
/// Chunks of at least this many tokens (on average) get 128-query work tiles (two consumer
/// warpgroups sharing each key tile); smaller chunks keep 64-query tiles.
const LARGE_CHUNK: usize = 128;
/// Most keys of a chunk that the chunk-stationary kernel keeps in shared memory (two tiles of
/// 128).
const RESIDENT_KEYS: usize = 256;
/// Query rows per work item of the chunk-stationary kernel: sixteen 128-row query tiles against
/// one copy of the chunk's keys (1,024: spatial chunks 1.7 % slower).
const ITEM_ROWS: u32 = 2048;

/// True when the GPU path takes these inputs and chunks.
pub(crate) fn supports(q: &Tensor, chunks: &BlockLayout) -> bool {
    q.device().is_cuda()
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && matches!(q.dim(3), Ok(64 | 128))
        && chunks.num_blocks() <= MAX_CHUNKS
        && chunks.is_shared()
}

/// VMoBA attention of `q, k, v: [B, H, S, D]` over `chunks`, keeping `budget` per query: the
/// `[B, H, S, D]` output and the number of query-key pairs computed (an f32 scalar on the
/// device, counted there). A count budget runs without any read-back (its pairs per head are
/// `S * min(count, chunks)`); a share budget reads back the pairs per head, to size buffers.
pub(crate) fn vmoba_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    chunks: &Arc<BlockLayout>,
    budget: Budget,
    kernel: ForwardKernel,
) -> Result<(Tensor, Tensor)> {
    let Device::Cuda(dev) = q.device() else {
        candle_core::bail!("VMoBA on the GPU needs CUDA tensors")
    };
    let (b, h, s, d) = q.dims4()?;
    let n = chunks.num_blocks();
    let words = n.div_ceil(32);
    // Chunk means, [B, H, n, D] f32, split into parts: [B, H, n, 3D].
    let parts = split_means(dev, &block_means(&k.detach(), chunks)?, q.dtype())?;
    let queries = word_rows(q)?;
    let scorer = score_kernel(dev, kernel)?;
    let chunk_of = block_of_on(dev, chunks)?;
    let keys = layout_on(dev, chunks)?;
    let starts = ptr(dev, &keys.starts);
    let out = Output::new(dev, q.dtype(), b * s * h * d)?;
    let ld = n.next_multiple_of(2);
    let group = (SCORE_BYTES / (s * 4 * ld).max(1)).clamp(1, h);
    // Query-key pairs computed, summed by the selection's pair counts.
    let pairs = dev.alloc_zeros::<i64>(1)?;
    let pairs_ptr = ptr(dev, &pairs);
    for bi in 0..b {
        for h0 in (0..h).step_by(group) {
            let heads = group.min(h - h0);
            let group_parts = parts.i((bi, h0..h0 + heads))?;
            let scores = chunk_scores(dev, &scorer, &queries, [bi, h0], &group_parts, [n, ld])?;
            let sel = select(
                dev,
                &scores,
                &chunk_of,
                [starts, pairs_ptr],
                [s, n, ld],
                budget,
            )?;
            drop(scores);
            let per_head: Vec<usize> = match budget {
                Budget::Count(keep) => vec![s * keep.clamp(1, n); heads],
                Budget::Share(_) => dev
                    .clone_dtoh(&sel.chunk_counts)?
                    .chunks(n)
                    .map(|c| c.iter().map(|&x| x as usize).sum())
                    .collect(),
            };
            // Pair buffers per sub-group of heads, within the partial-output budget.
            let mut g0 = 0;
            while g0 < heads {
                let mut g1 = g0 + 1;
                let mut total = per_head[g0];
                while g1 < heads
                    && slots_bound(total + per_head[g1], g1 + 1 - g0, n) * partial_bytes_per_slot(d)
                        <= PARTIAL_BYTES
                {
                    total += per_head[g1];
                    g1 += 1;
                }
                let span = Span {
                    bh0: bi * h + h0 + g0,
                    g0,
                    heads: g1 - g0,
                    s,
                    n,
                    words,
                };
                let call = Gathered {
                    qkv: [q, k, v],
                    chunks,
                    keys: &keys,
                    out: &out,
                    kernel,
                };
                run_pairs(dev, &span, &sel, total, &call)?;
                g0 = g1;
            }
        }
    }
    let t = untracked_tensor(out.into_storage(dev), (b, s, h, d));
    let pairs = untracked_tensor(CudaStorage::wrap_cuda_slice(pairs, dev.clone()), ());
    Ok((t.transpose(1, 2)?, pairs.to_dtype(DType::F32)?))
}

/// `q` with every row starting at a 4-byte boundary and even strides, as the score kernel's
/// 32-bit loads need: `q` itself, or a fresh copy where its view is not.
fn word_rows(q: &Tensor) -> Result<Tensor> {
    let (base, strides) = tensor_view(q)?;
    if base % 4 == 0 && strides.iter().all(|s| s % 2 == 0) {
        return Ok(q.clone());
    }
    // A round trip through f32 is exact for 16-bit floats and allocates a fresh buffer.
    q.detach().to_dtype(DType::F32)?.to_dtype(q.dtype())
}

/// Chunk means (`[B, H, n, D]` f32) as [`SCORE_PARTS`] parts in `dtype` side by side,
/// `[B, H, n, 3D]`: each mean rounded, then what each rounding left, rounded. Products of
/// 16-bit values are exact in f32 and three bf16 parts hold a mean's 24 bits (f16 parts too, but
/// for remainders below f16's normal range), so the scores of [`chunk_scores`] are f32
/// `q · mean` up to the order of the sums, and equal means score equally.
fn split_means(dev: &CudaDevice, means: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, h, n, d) = means.dims4()?;
    let means = means.contiguous()?;
    let (out, out_ptr) = output_tensor(dev, dtype, &[b, h, n, SCORE_PARTS * d])?;
    let (len, d32, means_ptr) = ((b * h * n * d) as i64, d as i32, tensor_ptr(&means)?);
    let func = function(dev, &format!("split_means_{}", dtype_suffix(dtype)?))?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    builder.arg(&means_ptr).arg(&len).arg(&d32).arg(&out_ptr);
    let cfg = one_thread_each(b * h * n * d, "VMoBA chunk means")?;
    // SAFETY: arguments match `split_means_*`; `means` holds `len` f32 and `out` three times as
    // many 16-bit values, each written once.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

/// Scores of every chunk for the queries of `parts`' heads (`[g, n, 3D]`, [`split_means`]) at
/// batch element and first head `[b, h0]` of `q` ([`word_rows`]), by `scorer`: `[g, S, ld]`
/// f32, each row's first `n` columns the scores, the rest zeros.
fn chunk_scores(
    dev: &CudaDevice,
    scorer: &ScoreKernel,
    q: &Tensor,
    [b, h0]: [usize; 2],
    parts: &Tensor,
    [n, ld]: [usize; 2],
) -> Result<Tensor> {
    let (_, _, s, d) = q.dims4()?;
    let g = parts.dim(0)?;
    let parts = parts.contiguous()?;
    let queries = tensor_view(q)?;
    let (out, out_ptr) = output_tensor(dev, DType::F32, &[g, s, ld])?;
    let (b32, h32, s32, n32, ld32) = (b as i32, h0 as i32, s as i32, n as i32, ld as i32);
    let parts_ptr = tensor_ptr(&parts)?;
    let name = format!("{}_{}_d{d}", scorer.name, dtype_suffix(q.dtype())?);
    let func = scorer.module.function(dev, &name)?;
    // Two buffers of a block's parts.
    let shared = 2 * scorer.chunks * SCORE_PARTS * d * 2;
    func.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared as i32,
    )
    .w()?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    arg_view(&mut builder, &queries);
    builder
        .arg(&b32)
        .arg(&h32)
        .arg(&s32)
        .arg(&parts_ptr)
        .arg(&n32)
        .arg(&ld32)
        .arg(&out_ptr);
    let cfg = LaunchConfig {
        grid_dim: (
            grid_blocks(s, scorer.rows, "VMoBA chunk scores")?,
            g as u32,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: shared as u32,
    };
    // SAFETY: arguments match `vmoba_scores*_d*` (D 64 or 128, checked by `supports`); q's rows
    // are 4-byte aligned with even strides ([`word_rows`]) and heads `h0..h0 + g` of batch element
    // `b` lie inside it; `parts` holds g x n x 3D values and `out` g x S x ld, each written once.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

/// The output buffer, `[B, S, H, D]` in the inputs' dtype.
enum Output {
    Bf16(CudaSlice<half::bf16>),
    F16(CudaSlice<half::f16>),
}

impl Output {
    /// Uninitialised: the merge writes every row (a row of every query and head has a pair at
    /// least, its own chunk, and rows without keys get zeros).
    fn new(dev: &CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        // SAFETY: see above; nothing reads the buffer before the merges have run.
        Ok(match dtype {
            DType::BF16 => Self::Bf16(unsafe { dev.alloc(len)? }),
            DType::F16 => Self::F16(unsafe { dev.alloc(len)? }),
            dt => candle_core::bail!("VMoBA on the GPU does not take {dt:?}"),
        })
    }

    fn ptr(&self, dev: &CudaDevice) -> u64 {
        match self {
            Self::Bf16(s) => ptr(dev, s),
            Self::F16(s) => ptr(dev, s),
        }
    }

    fn into_storage(self, dev: &CudaDevice) -> CudaStorage {
        match self {
            Self::Bf16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Self::F16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        }
    }
}

/// The selection of one head group: kept chunks per row as a bitmask, their number, and the
/// pairs per (head, chunk); `uniform` is the number every row keeps under the top-k rule, 0
/// under the share rule.
struct Selection {
    mask: CudaSlice<u32>,
    row_counts: CudaSlice<u32>,
    chunk_counts: CudaSlice<u32>,
    uniform: u32,
}

/// A sub-group of heads of a selection: heads `g0..g0 + heads` of the group, the first of them
/// being `bh0` in batch * heads.
struct Span {
    bh0: usize,
    g0: usize,
    heads: usize,
    s: usize,
    n: usize,
    words: usize,
}

fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    VMOBA.function(dev, name)
}

/// Selects chunks for every row of `scores` ([heads, S, ld] f32, n chunks a row) and counts
/// pairs per chunk; adds the query-key pairs of the selection to the i64 at device address
/// `pairs`, with the chunks' lengths from their `starts` (n + 1 u32 at a device address).
fn select(
    dev: &CudaDevice,
    scores: &Tensor,
    chunk_of: &CudaSlice<u32>,
    [starts, pairs]: [u64; 2],
    [s, n, ld]: [usize; 3],
    budget: Budget,
) -> Result<Selection> {
    let words = n.div_ceil(32);
    let heads = scores.dim(0)?;
    let rows = heads * s;
    // SAFETY: `vmoba_select` writes every row's mask words and count.
    let mask = unsafe { dev.alloc::<u32>(rows * words)? };
    let row_counts = unsafe { dev.alloc::<u32>(rows)? };
    let chunk_counts = dev.alloc_zeros::<u32>(heads * n)?;
    let stream = dev.cuda_stream();
    let (scores_ptr, chunk_ptr, mask_ptr, rc_ptr, cc_ptr) = (
        tensor_ptr(scores)?,
        ptr(dev, chunk_of),
        ptr(dev, &mask),
        ptr(dev, &row_counts),
        ptr(dev, &chunk_counts),
    );
    // The kernel takes a count (topk > 0) or, with topk 0, the threshold share.
    let (topk32, tau) = match budget {
        Budget::Count(k) => (k as i32, 0.0),
        Budget::Share(tau) => (0, tau),
    };
    let (rows32, s32, n32, ld32, w32) = (rows as i32, s as i32, n as i32, ld as i32, words as i32);
    let func = function(dev, "vmoba_select")?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&scores_ptr)
        .arg(&chunk_ptr)
        .arg(&mask_ptr)
        .arg(&rc_ptr)
        .arg(&rows32)
        .arg(&s32)
        .arg(&n32)
        .arg(&ld32)
        .arg(&w32)
        .arg(&topk32)
        .arg(&tau);
    let cfg = LaunchConfig {
        grid_dim: (grid_blocks(rows, 4, "VMoBA selection")?, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: (4 * n * 4) as u32,
    };
    // SAFETY: arguments match `vmoba_select`; buffers hold rows x ld scores, rows x words
    // mask words and rows counts.
    unsafe { builder.launch(cfg) }.w()?;

    let func = function(dev, "vmoba_chunk_counts")?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&mask_ptr)
        .arg(&cc_ptr)
        .arg(&s32)
        .arg(&n32)
        .arg(&w32)
        .arg(&starts)
        .arg(&pairs);
    let cfg = LaunchConfig {
        grid_dim: (grid_blocks(s, 256, "VMoBA chunk counts")?, heads as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: (n * 4) as u32,
    };
    // SAFETY: arguments match `vmoba_chunk_counts`; counts hold heads x n entries, `starts`
    // n + 1 and `pairs` one.
    unsafe { builder.launch(cfg) }.w()?;
    let uniform = match budget {
        Budget::Count(k) => k.clamp(1, n) as u32,
        Budget::Share(_) => 0,
    };
    Ok(Selection {
        mask,
        row_counts,
        chunk_counts,
        uniform,
    })
}

/// Exclusive prefix sums of `len` u32 at device address `x`, in place.
fn exclusive_scan(dev: &CudaDevice, x: u64, len: usize) -> Result<()> {
    let nb = len.div_ceil(1024);
    let totals = dev.alloc_zeros::<u32>(nb.max(1))?;
    let tp = ptr(dev, &totals);
    let len32 = len as i32;
    let stream = dev.cuda_stream();
    let func = function(dev, "scan_blocks_u32")?;
    let mut builder = stream.launch_builder(&func);
    builder.arg(&x).arg(&tp).arg(&len32);
    let cfg = LaunchConfig {
        grid_dim: (nb.max(1) as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `scan_blocks_u32`; totals hold one entry per block.
    unsafe { builder.launch(cfg) }.w()?;
    if nb > 1 {
        exclusive_scan(dev, tp, nb)?;
        let func = function(dev, "scan_add_u32")?;
        let mut builder = stream.launch_builder(&func);
        builder.arg(&x).arg(&tp).arg(&len32);
        // SAFETY: arguments match `scan_add_u32`.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok(())
}

/// What every span of one call shares: the inputs, the chunks, the output and the kernels.
struct Gathered<'a> {
    qkv: [&'a Tensor; 3],
    chunks: &'a Arc<BlockLayout>,
    /// The chunks' key order and starts on the device.
    keys: &'a DeviceLayout,
    out: &'a Output,
    kernel: ForwardKernel,
}

/// Builds the pair lists and tiles of a span of heads (`pairs` of them), runs the gathered
/// attention and merges its partial outputs into the call's output. Offsets are scanned on the
/// device; the tile list is sized by a bound and its spare entries stay empty.
fn run_pairs(
    dev: &CudaDevice,
    span: &Span,
    sel: &Selection,
    pairs: usize,
    call: &Gathered<'_>,
) -> Result<()> {
    let ([q, k, v], chunks, kl, out, kernel) =
        (call.qkv, call.chunks, call.keys, call.out, call.kernel);
    let (s, n, words, d) = (span.s, span.n, span.words, q.dim(3)?);
    let rows = span.heads * s;
    // Key tiles of a chunk kept in shared memory (chunk-stationary), or the query rows per work
    // tile of the gathered mode: 128 when the chunks' key streams are long enough to share.
    let resident = resident_key_tiles(dev, kernel, chunks)?;
    let tile_rows: u32 = match resident {
        Some(_) => ITEM_ROWS,
        None if s / n.max(1) >= LARGE_CHUNK => 128,
        None => 64,
    };
    if pairs == 0 {
        return Ok(());
    }
    let lists = span.heads * n;
    // Each list's tiles round its pairs up by less than one tile.
    let tiles = pairs / tile_rows as usize + lists;
    let stream = dev.cuda_stream();
    let row0 = span.g0 * s;
    let (mask_ptr, counts_ptr, cd_ptr) = (
        ptr(dev, &sel.mask) + (row0 * words * 4) as u64,
        ptr(dev, &sel.row_counts) + (row0 * 4) as u64,
        ptr(dev, &sel.chunk_counts) + (span.g0 * n * 4) as u64,
    );
    // Row offsets, each row's first pair (row-major), where rows keep different numbers of
    // chunks; where every row keeps `sel.uniform`, the kernels take row * uniform.
    // SAFETY (this and the uninitialised buffers below): a kernel or copy writes every element
    // that is read before it is read: the row counts' copy, `vmoba_list_offsets` (every list's
    // first slot and tile, every cursor, the spare tiles), `vmoba_fill` (every counted pair's
    // query and slot), `vmoba_tiles` (the lists' tiles) and the attention kernel (the partial
    // row and LSE of every such slot). The slots of the lists' padding are never read.
    let row_offsets = if sel.uniform > 0 {
        None
    } else {
        let mut offsets = unsafe { dev.alloc::<u32>(rows)? };
        dev.memcpy_dtod(&sel.row_counts.slice(row0..row0 + rows), &mut offsets)?;
        exclusive_scan(dev, ptr(dev, &offsets), rows)?;
        Some(offsets)
    };
    let ro_ptr = row_offsets.as_ref().map_or(0, |o| ptr(dev, o));

    // Where each list's slots (its pairs rounded up to LIST_ALIGN) and work tiles start; the
    // lists' cursors and the tile list's spare entries (no queries) zeroed on the way.
    // SAFETY: see above (these five).
    let chunk_offsets = unsafe { dev.alloc::<u32>(lists)? };
    let tile_offsets = unsafe { dev.alloc::<u32>(lists)? };
    let cursor = unsafe { dev.alloc::<u32>(lists)? };
    let tile_list = unsafe { dev.alloc::<u32>(tiles * 4)? };
    let slots = slots_bound(pairs, span.heads, n);
    let pair_query = unsafe { dev.alloc::<u32>(slots)? };
    let pair_slot = unsafe { dev.alloc::<u32>(pairs)? };
    let (co_ptr, to_ptr, cur_ptr, tl_ptr, pq_ptr, ps_ptr) = (
        ptr(dev, &chunk_offsets),
        ptr(dev, &tile_offsets),
        ptr(dev, &cursor),
        ptr(dev, &tile_list),
        ptr(dev, &pair_query),
        ptr(dev, &pair_slot),
    );
    let capacity = u32::try_from(tiles)
        .map_err(|_| candle_core::Error::Msg(format!("VMoBA: {tiles} work tiles exceed u32")))?;
    let len32 = lists as i32;
    let func = function(dev, "vmoba_list_offsets")?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&cd_ptr)
        .arg(&co_ptr)
        .arg(&to_ptr)
        .arg(&cur_ptr)
        .arg(&tl_ptr)
        .arg(&len32)
        .arg(&tile_rows)
        .arg(&LIST_ALIGN)
        .arg(&capacity);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `vmoba_list_offsets`; the offsets and cursors hold `lists`
    // entries, the tile list `tiles`.
    unsafe { builder.launch(cfg) }.w()?;
    let (rows32, s32, n32, w32) = (rows as i32, s as i32, n as i32, words as i32);
    let func = function(dev, "vmoba_fill")?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&mask_ptr)
        .arg(&ro_ptr)
        .arg(&co_ptr)
        .arg(&cur_ptr)
        .arg(&pq_ptr)
        .arg(&ps_ptr)
        .arg(&rows32)
        .arg(&s32)
        .arg(&n32)
        .arg(&w32)
        .arg(&sel.uniform);
    let cfg = one_thread_each(rows, "VMoBA pair lists")?;
    // SAFETY: arguments match `vmoba_fill`; pair buffers hold the counted pairs' slots.
    unsafe { builder.launch(cfg) }.w()?;

    let bh0 = span.bh0 as i32;
    let func = function(dev, "vmoba_tiles")?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&cd_ptr)
        .arg(&co_ptr)
        .arg(&to_ptr)
        .arg(&tl_ptr)
        .arg(&len32)
        .arg(&n32)
        .arg(&bh0)
        .arg(&tile_rows);
    let cfg = one_thread_each(lists, "VMoBA tiles")?;
    // SAFETY: arguments match `vmoba_tiles`; the tile list holds `tiles` entries.
    unsafe { builder.launch(cfg) }.w()?;

    // Gathered attention: one partial output row (in the inputs' dtype) and log-sum-exp per
    // pair, at its slot.
    // SAFETY: see above (these two).
    let partial = unsafe { dev.alloc::<u16>(slots * d)? };
    let partial_lse = unsafe { dev.alloc::<f32>(slots)? };
    let (qv, kv, vv) = (tensor_view(q)?, tensor_view(k)?, tensor_view(v)?);
    let (b, h) = (q.dim(0)?, q.dim(1)?);
    let params = AttnParams {
        q: qv.0,
        k: kv.0,
        v: vv.0,
        out: ptr(dev, &partial),
        lse: ptr(dev, &partial_lse),
        q_strides: qv.1,
        k_strides: kv.1,
        v_strides: vv.1,
        o_strides: [0; 3], // gathered mode: rows go to pairs
        q_order: pq_ptr,
        q_starts: 0,
        k_order: ptr(dev, &kl.order),
        k_starts: ptr(dev, &kl.starts),
        offsets: 0,
        indices: 0,
        b: b as i32,
        h: h as i32,
        s: s as i32,
        sk: s as i32,
        q_per_head: 0,
        k_per_head: 0,
        nqb: 0,
        uniform_k: 0,
        all_keys: n as i32,
        scale_log2: (1.0 / (d as f32).sqrt()) * std::f32::consts::LOG2_E,
        tiles: tl_ptr,
        k_natural: kl.natural as i32,
    };
    let grid = (tiles as u32, 1, 1);
    match resident {
        Some(key_tiles) => {
            let rows = TileMap::for_rows(params.out, slots, d, q.dtype()).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "VMoBA: the CUDA driver refused a tensor map of {slots} partial output rows"
                ))
            })?;
            let args = Sm90Args { params, maps: rows };
            launch_chunk_stationary(dev, q.dtype(), d, key_tiles, grid, &args)?
        }
        None => launch_forward(dev, q.dtype(), d, tile_rows == 64, grid, &params, kernel)?,
    }

    let (p_ptr, pl_ptr, out_ptr, h32) = (
        ptr(dev, &partial),
        ptr(dev, &partial_lse),
        out.ptr(dev),
        h as i32,
    );
    let func = function(
        dev,
        &format!("vmoba_merge_{}_d{d}", dtype_suffix(q.dtype())?),
    )?;
    let mut builder = stream.launch_builder(&func);
    builder
        .arg(&p_ptr)
        .arg(&pl_ptr)
        .arg(&ps_ptr)
        .arg(&ro_ptr)
        .arg(&counts_ptr)
        .arg(&sel.uniform)
        .arg(&out_ptr)
        .arg(&rows32)
        .arg(&s32)
        .arg(&h32)
        .arg(&bh0);
    let cfg = LaunchConfig {
        grid_dim: (grid_blocks(rows, 4, "VMoBA merge")?, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match `vmoba_merge_*`; the output holds B x S x H x D elements.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

/// The key tiles the chunk-stationary kernel keeps for `chunks` (1 or 2), or `None` where it
/// does not run: off Hopper, with the warp-MMA kernel asked for, or with a chunk of more than
/// [`RESIDENT_KEYS`] keys.
fn resident_key_tiles(
    dev: &CudaDevice,
    kernel: ForwardKernel,
    chunks: &BlockLayout,
) -> Result<Option<usize>> {
    let longest = chunks.tile();
    Ok(
        (hopper_kernel(dev, kernel)?.is_some() && longest <= RESIDENT_KEYS)
            .then(|| longest.div_ceil(128).max(1)),
    )
}

/// Runs `kernels/vmoba_sm90.cu` on the work items of `params` (gathered mode's fields): a
/// producer warpgroup and two consumers; a ring of three 128-row query tiles, `key_tiles` key
/// and value tiles of 128 rows, and 1 KiB to align them for the 128-byte swizzle (225 KiB in
/// all with two key tiles of 128 channels).
fn launch_chunk_stationary(
    dev: &CudaDevice,
    dtype: DType,
    d: usize,
    key_tiles: usize,
    grid_dim: (u32, u32, u32),
    args: &Sm90Args<AttnParams, TileMap>,
) -> Result<()> {
    let query_tiles = 3; // the kernel's Q_STAGES
    let cfg = LaunchConfig {
        grid_dim,
        block_dim: (384, 1, 1),
        shared_mem_bytes: ((query_tiles + 2 * key_tiles) * 128 * d * 2 + 1024) as u32,
    };
    let name = format!(
        "vmoba_chunk_sm90_{}_d{d}_nkt{key_tiles}",
        dtype_suffix(dtype)?
    );
    VMOBA_SM90.launch(dev, &name, cfg, args)
}

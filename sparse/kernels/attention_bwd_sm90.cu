// Block-sparse flash attention, backward, for Hopper (sm_90a): the two passes of
// attention_bwd.cu (dq over a query block's key stream; dk and dv over a key block's query
// stream, the transposed lists), each owning the rows it writes, with warpgroup MMAs reading
// their operands from 128-byte-swizzled shared memory. One CTA per (batch*head, 64 rows of a
// row block), warp-specialised as the forward (attention_fwd_sm90.cu): warpgroup 0 produces,
// copying the column stream's tiles (K and V for the dq pass, Q and dO for the dk/dv pass, and
// there the columns' log-sum-exp and delta) into a ring; warpgroup 1 consumes. Per tile the
// consumer computes S = X A^T and dP = Y B^T (X, Y the row tiles: Q and dO, or K and V; A, B
// the column tiles), P = exp(S - lse) and dS = P (dP - delta) in registers, then
// acc1 += dS A (dq, or dk) and, in the dk/dv pass, acc2 += P B (dv), both with A operands from
// registers. Gradients are [B, H, S, D] contiguous, in the inputs' type.
//
// The one-pass variant (`dkdvdq`, after FlashAttention-3's) runs the dk/dv pass on 128 key
// rows per CTA, two consumer warpgroups of 64 sharing the query tiles, and adds dq as well:
// each consumer stores its dS^T to shared memory, and once both have, warpgroup w multiplies
// the tile's dS (64 queries x 128 keys) by channels [64 w, 64 w + 64) of the 128 key rows and
// stages the result in shared memory, from where it is added into an f32 dq (scaled afterwards
// by `bsattn_bwd_finish_dq`): a tile of contiguous query tokens by two bulk tensor reductions
// through the dq sum's tensor map, other tiles by a bulk reduction per row. No dq pass runs:
// five products per tile pair where the two passes take seven. (The additions' volume is what
// they cost: alternatives measured are in BENCHMARKS.md.)
#include "attention_params.cuh"
#include "bwd_params.cuh"
#include "common.cuh"
#include "sync_sm90.cuh"
#include "tiles_sm90.cuh"

// Named barriers: consumer warpgroup w's row tiles are in shared memory (1 + w); both
// consumers' dS^T tiles are (the one-pass kernel); consumer w's dq rows are staged (4 + w).
constexpr int BAR_ROWS_READY = 1, BAR_DS_READY = 3, BAR_DQ_STAGED = 4;
// Registers per thread at launch (two CTAs of two warpgroups per SM; the one-pass kernel: one
// CTA of three) and after the producer hands its surplus to the consumers: the dk/dv pass's
// consumer holds two 64 x D accumulators besides S and dP (and in one pass, dq's 64 x 64), and
// needs all but what the producer cannot do without.
template <bool KV, bool ONE_PASS> struct BwdRegisterSplit {
  static constexpr int WARPGROUPS = ONE_PASS ? 3 : 2, LAUNCH = ONE_PASS ? 168 : 128;
  static constexpr int PRODUCER = KV && !ONE_PASS ? 32 : 56;
  static constexpr int CONSUMER = (WARPGROUPS * LAUNCH - PRODUCER) / (WARPGROUPS - 1);
};

// Bytes of the one-pass kernel's dS^T tile: both consumers' 64 key rows by BN query columns.
template <int BN> __host__ __device__ constexpr int ds_tile_bytes() { return 2 * BWD_ROWS * BN * 2; }
// Floats per staged dq row of one consumer: its 64 channels and 8 of padding, so that a warp's
// stores of accumulator pairs (8 rows x 8 channels) meet every bank twice (DQ_STAGE_STRIDE in
// sparse/src/cuda.rs).
constexpr int DQ_STAGE_STRIDE = 72;

// Stores this warpgroup's dS^T (its 64 key rows from `row0`, as the A fragments of dK += dS^T Q)
// into the dS^T tile `ds` (2 x 64 rows, BN query columns; 128-byte swizzle), from which wgmma
// reads dS MN-major.
template <int BN>
__device__ __forceinline__ void store_ds(unsigned char* ds, const uint32_t (&a)[BN / 16][4], int row0) {
  const int lane = threadIdx.x & 31, r = row0 + ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2);
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = r + 8 * (i & 1), col = 16 * t + 8 * (i >> 1) + 2 * (lane & 3);
      *reinterpret_cast<uint32_t*>(ds + tile_off(2 * BWD_ROWS, row, col >> 3) + (col & 7) * 2) = a[t][i];
    }
  }
}

// The dq row whose bulk reduction thread `tid` (of 128) issues, where its lane is below 16.
__device__ __forceinline__ int dq_stage_row(int tid) { return (tid >> 5) * 16 + (tid & 15); }

// Issues (dS K)[q, c] into `acc` for the tile's BN (= 64) query columns `q` and this
// warpgroup's 64 channels `c`: dS from the dS^T tile `ds`, K from the two consumers' 64-row key
// tiles `k` (ROW_BYTES apart), both read MN-major. One commit group; the caller waits.
template <typename T, int D, int BN>
__device__ __forceinline__ void issue_dq_product(float (&acc)[32], const unsigned char* ds, const unsigned char* k,
                                                 int w) {
  static_assert(D == 128 && BN == 64, "one consumer's dq channels are one 64-wide column block");
  constexpr int ROW_BYTES = BWD_ROWS * D * 2;
#pragma unroll
  for (int t = 0; t < 2 * BWD_ROWS / 16; ++t) {
    const unsigned char* kt = k + (t / 4) * ROW_BYTES + w * BWD_ROWS * 128 + (t % 4) * 16 * 128;
    mma_ss_mn<T>(acc, smem_desc(ds + t * 16 * 128, 2 * BWD_ROWS * 128, 1024), smem_desc(kt, BWD_ROWS * 128, 1024),
                 t > 0);
  }
  wg_commit();
}

// dq[token, 64 w + c] += acc[q, c] (the product `issue_dq_product` made) for the tile's query
// columns q (tokens `tok`, the first `rows` real). Where the tokens are one run (`run_map`
// set: the dq sum's map), the stage holds the map's two boxes of this warpgroup's 32-channel
// halves (64 rows of 128 bytes, 128-byte swizzle) and one thread adds both by bulk tensor
// reductions (unreal rows hold exact zeros, and rows past the sequence are skipped). Otherwise
// the stage holds BN rows of DQ_STAGE_STRIDE floats and lane l < 16 of warp v adds row
// q = 16 v + l by a 256-byte bulk reduction. (A warp issues those one lane at a
// time: four warps of 16 finish sooner than two of 32.) The reductions read the stage
// asynchronously: before the stage is written again, each issuing thread waits for its reads.
template <int D, int BN>
__device__ __forceinline__ void add_dq_rows(float* dq, const float (&acc)[32], int w, float* stage,
                                            const uint32_t* tok, int rows, const CUtensorMap* run_map) {
  // The accumulator's rows r and r + 8 of this warp's 16, channel pairs 8 dt + 2 (lane % 4).
  const int tid = threadIdx.x % 128, lane = tid & 31, r = (tid >> 5) * 16 + (lane >> 2);
  if (run_map) {
    unsigned char* boxes = reinterpret_cast<unsigned char*>(stage);
#pragma unroll
    for (int dt = 0; dt < 8; ++dt) {
      // The pair's 16-byte chunk of its 128-byte box row, swizzled by the row (r and r + 8
      // share r % 8).
      const int chunk = (2 * (dt % 4) + ((lane & 3) >> 1)) ^ (r & 7);
      unsigned char* at = boxes + (dt / 4) * BN * 128 + r * 128 + chunk * 16 + (lane & 1) * 8;
      *reinterpret_cast<float2*>(at) = make_float2(acc[4 * dt], acc[4 * dt + 1]);
      *reinterpret_cast<float2*>(at + 8 * 128) = make_float2(acc[4 * dt + 2], acc[4 * dt + 3]);
    }
  } else {
    float* g = stage + r * DQ_STAGE_STRIDE + 2 * (lane & 3);
#pragma unroll
    for (int dt = 0; dt < 8; ++dt) {
      *reinterpret_cast<float2*>(g + 8 * dt) = make_float2(acc[4 * dt], acc[4 * dt + 1]);
      *reinterpret_cast<float2*>(g + 8 * DQ_STAGE_STRIDE + 8 * dt) = make_float2(acc[4 * dt + 2], acc[4 * dt + 3]);
    }
  }
  fence_async_shared();
  named_sync(BAR_DQ_STAGED + w, 128);
  if (run_map) {
    if (tid == 0) {
      tma_add_3d(run_map, stage, w * 64, tok[0], blockIdx.y);
      tma_add_3d(run_map, reinterpret_cast<unsigned char*>(stage) + BN * 128, w * 64 + 32, tok[0], blockIdx.y);
      bulk_commit();
    }
    return;
  }
  const int q = dq_stage_row(tid);
  if ((lane & 16) == 0 && q < rows) {
    bulk_add_f32(dq + (size_t)tok[q] * D + w * 64, stage + q * DQ_STAGE_STRIDE, 64 * 4);
    bulk_commit();
  }
}

// A consumer warpgroup (w of the one-pass kernel's two): its 64 rows against every column tile
// of the stream. `sX` and `sY` hold each consumer's row tiles, ROW_BYTES apart.
template <typename T, int D, int BN, int STAGES, bool KV, bool ONE_PASS>
__device__ __forceinline__ void consume_bwd(const BwdParams& p, const RowChunk& rc, int w, bool any_tile,
                                            unsigned char* sX, unsigned char* sY, const unsigned char* sA,
                                            const unsigned char* sB, unsigned char* sDS, float* sDQ,
                                            const TileMap* dq_map, const float* col_l,
                                            const float* col_delta, const uint32_t* col_tok, const int* tile_rows,
                                            uint64_t* full, uint64_t* empty) {
  constexpr int CH = D / 8, TILE_BYTES = BN * D * 2, ROW_BYTES = BWD_ROWS * D * 2;
  const int tid = threadIdx.x % 128, warp = tid >> 5, lane = tid & 31;
  auto off = [](int r, int c) { return tile_off(BWD_ROWS, r, c); };
  unsigned char* x = sX + w * ROW_BYTES;
  unsigned char* y = sY + w * ROW_BYTES;
  load_row_tile<T, BWD_ROWS, CH, 128>(KV ? p.k_strides[2] : p.q_strides[2], rc.ord, rc.first, rc.nr,
                                    KV ? head_base<T>(p.k, p.k_strides, rc.b, rc.h)
                                       : head_base<T>(p.q, p.q_strides, rc.b, rc.h),
                                    x, off, tid);
  load_row_tile<T, BWD_ROWS, CH, 128>(KV ? p.v_strides[2] : p.o_strides[2], rc.ord, rc.first, rc.nr,
                                    KV ? head_base<T>(p.v, p.v_strides, rc.b, rc.h)
                                       : head_base<T>(p.dout, p.o_strides, rc.b, rc.h),
                                    y, off, tid);
  cp_async_commit();

  // The dq pass's rows carry their own lse (log2) and delta: rows g and g + 8 of this warp's 16.
  const float* lse = p.lse + (size_t)rc.bh * p.s;
  const float* delta = p.delta + (size_t)rc.bh * p.s;
  float row_l[2] = {0.f, 0.f}, row_delta[2] = {0.f, 0.f};
  if (!KV) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + (lane >> 2) + half * 8;
      if (r < rc.nr) {
        const uint32_t tok = rc.ord[rc.first + r];
        row_l[half] = lse[tok] * LOG2E;
        row_delta[half] = delta[tok];
      }
    }
  }
  cp_async_wait<0>();
  fence_async_shared();
  named_sync(BAR_ROWS_READY + w, 128);
  // The one-pass kernel adds dq into f32 rows of this head.
  float* dq = reinterpret_cast<float*>(p.dq) + (size_t)rc.bh * p.s * D;

  float acc1[D / 2], acc2[KV ? D / 2 : 1];  // dq or dk; dv
#pragma unroll
  for (int i = 0; i < D / 2; ++i) {
    acc1[i] = 0.f;
    if (KV) acc2[i] = 0.f;
  }
  const float scale_log2 = p.scale * LOG2E;
  for (int j = 0; any_tile; ++j) {
    const int stage = j % STAGES;
    mbar_wait(&full[stage], (j / STAGES) & 1);
    fence_async_shared();
    const int signed_rows = tile_rows[stage], rows = abs(signed_rows);
    const unsigned char* ta = sA + stage * TILE_BYTES;
    const unsigned char* tb = sB + stage * TILE_BYTES;

    // S and dP. The dk/dv pass issues them as two commit groups, so that P is computed while
    // dP is still on the tensor cores, and issues dV += P^T dO before it computes dS, so that
    // the product runs meanwhile. (The dq pass measured faster with one group: its tensor
    // cores are kept busy by the other CTA on the SM.)
    float s[BN / 2], dp[BN / 2];
    wg_fence();
    mma_ss_tile<T, D, BN>(s, x, BWD_ROWS, ta);
    if constexpr (KV) wg_commit();
    mma_ss_tile<T, D, BN>(dp, y, BWD_ROWS, tb);
    wg_commit();
    if constexpr (KV) {
      wg_wait<1>();
    } else {
      wg_wait<0>();
    }
    wg_pin<BN / 2>(s);

    // P = exp(S - lse), with the lse of each row (dq pass) or column (dk/dv pass); columns
    // past the tile's end get zeros.
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const int col = fragment_column(i, lane);
      const float l = KV ? col_l[stage * BN + col] * LOG2E : row_l[(i >> 1) & 1];
      s[i] = col < rows ? exp2f(s[i] * scale_log2 - l) : 0.f;
    }
    uint32_t a_p[KV ? BN / 16 : 1][4];
    if constexpr (KV) {
      pack_a<T, BN>(a_p, s);
      wg_fence();
      mma_rs_tile<T, D, BN>(acc2, a_p, tb);
      wg_commit();
      wg_wait<1>();
    }
    wg_pin<BN / 2>(dp);

    // dS = P (dP - delta), with the delta of each row or column.
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const int col = fragment_column(i, lane);
      const float dl = KV ? col_delta[stage * BN + col] : row_delta[(i >> 1) & 1];
      dp[i] = col < rows ? s[i] * (dp[i] - dl) : 0.f;
    }
    uint32_t a_ds[BN / 16][4];
    pack_a<T, BN>(a_ds, dp);
    // One pass: dq's product needs both consumers' dS, so each stores its dS^T and, once both
    // have, issues dq's product before dK's, as FlashAttention-3 does: dq's product is done
    // and added while dK's runs. The dS^T tile is double-buffered: a consumer writes buffer
    // j % 2 only after both passed tile j - 1's barrier, by which both finished reading it at
    // tile j - 2. The dq stage is free for this tile's rows once every thread's bulk reduction
    // of the last tile's has read it: each waits for its own before the barrier.
    float dq_acc[ONE_PASS ? 32 : 1];
    // The barrier also finds whether the tile's tokens are one run (each of the first BN
    // threads checks a row), in which case the map adds its dq.
    const CUtensorMap* run_map = nullptr;
    if constexpr (ONE_PASS) {
      unsigned char* ds = sDS + (j & 1) * ds_tile_bytes<BN>();
      store_ds<BN>(ds, a_ds, w * BWD_ROWS);
      bulk_wait_read<0>();
      fence_async_shared();
      const bool in_run = tid >= rows || col_tok[stage * BN + tid] == col_tok[stage * BN] + tid;
      if (named_sync_all(BAR_DS_READY, 256, in_run) && dq_map->enabled) run_map = &dq_map->map;
      wg_fence();
      issue_dq_product<T, D, BN>(dq_acc, ds, sX, w);
    } else {
      wg_fence();
    }
    mma_rs_tile<T, D, BN>(acc1, a_ds, ta);
    wg_commit();
    if constexpr (ONE_PASS) {
      wg_wait<1>();
      wg_pin<32>(dq_acc);
      add_dq_rows<D, BN>(dq, dq_acc, w, sDQ + w * BN * DQ_STAGE_STRIDE, col_tok + stage * BN, rows, run_map);
    }
    wg_wait<0>();
    wg_pin<D / 2>(acc1);
    wg_keep(a_ds);
    if constexpr (KV) {
      wg_pin<D / 2>(acc2);
      wg_keep(a_p);
    }
    if (lane == 0) mbar_arrive(&empty[stage]);
    if (signed_rows < 0) break;
  }
  if constexpr (ONE_PASS) bulk_wait<0>();  // the stage outlives every reduction reading it

  // Rows in natural token order: dq (or dk) scaled by the softmax scale, and dv.
  T* g1 = reinterpret_cast<T*>(KV ? p.dk : p.dq) + (size_t)rc.bh * (KV ? p.sk : p.s) * D;
  T* g2 = reinterpret_cast<T*>(p.dv) + (size_t)rc.bh * p.sk * D;
  store_row_grads<T, D, KV>(g1, g2, acc1, acc2, p.scale, rc.ord, rc.first, rc.nr);
}

template <typename T, int D, int BN, int STAGES, bool KV, bool ONE_PASS>
__device__ __forceinline__ void bsattn_bwd_sm90(const BwdParams& p, const TileMap* dq_map = nullptr) {
  using Regs = BwdRegisterSplit<KV, ONE_PASS>;
  constexpr int CONSUMERS = Regs::WARPGROUPS - 1;
  constexpr int ROW_BYTES = BWD_ROWS * D * 2, TILE_BYTES = BN * D * 2, CH = D / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ uint64_t full[STAGES], empty[STAGES];
  __shared__ int tile_rows[STAGES];
  __shared__ float col_l[KV ? STAGES * BN : 1], col_delta[KV ? STAGES * BN : 1];  // dk/dv pass: natural log
  __shared__ uint32_t col_tok[ONE_PASS ? STAGES * BN : 1];  // one pass: the columns' query tokens
  unsigned char* smem = align_1024(smem_raw);
  unsigned char* sX = smem;                        // CONSUMERS row tiles
  unsigned char* sY = sX + CONSUMERS * ROW_BYTES;  // likewise
  unsigned char* sA = sY + CONSUMERS * ROW_BYTES;  // STAGES buffers
  unsigned char* sB = sA + STAGES * TILE_BYTES;    // STAGES buffers
  unsigned char* sDS = sB + STAGES * TILE_BYTES;   // one pass: two dS^T tiles
  float* sDQ = reinterpret_cast<float*>(sDS + 2 * ds_tile_bytes<BN>());  // one pass: each consumer's dq stage
  // The producer threads that copy the columns' statistics (one per tile row), which in one
  // pass also store the columns' tokens and then arrive once more on the tile's barrier.
  constexpr int STATS_THREADS = 128 / CH;
  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      // Every producer thread once its copies land, the row count (and the column tokens).
      mbar_init(&full[i], 129 + (ONE_PASS ? STATS_THREADS : 0));
      mbar_init(&empty[i], 4 * CONSUMERS);  // every consumer warp
    }
  }
  __syncthreads();
  const RowChunk rc = row_chunk<KV>(p, 0, CONSUMERS);
  if (rc.nr <= 0) return;
  const AttnParams cv = column_view<KV>(p);
  const KeyStream cols = key_stream(cv, (size_t)rc.bh * p.rows_blocks + rc.blk);
  if (threadIdx.x < 128) {
    regs_shrink<Regs::PRODUCER>();
    const float* lse = p.lse + (size_t)rc.bh * p.s;
    const float* delta = p.delta + (size_t)rc.bh * p.s;
    using Rows = TileRows<BN, CH, 128>;
    // The dk/dv pass also copies its columns' lse and delta (one thread per tile row).
    auto copy_stats = [&](int stage, const uint32_t (&tok)[Rows::PER_THREAD], int rows) {
      if (KV && threadIdx.x % CH == 0) {
#pragma unroll
        for (int j = 0; j < Rows::PER_THREAD; ++j) {
          const int r = threadIdx.x / CH + j * Rows::STEP;
          if (r < rows) {
            cp_async4(&col_l[stage * BN + r], lse + tok[j]);
            cp_async4(&col_delta[stage * BN + r], delta + tok[j]);
            if (ONE_PASS) col_tok[stage * BN + r] = tok[j];
          }
        }
        if (ONE_PASS) mbar_arrive(&full[stage]);
      }
    };
    const T* abase = KV ? head_base<T>(p.q, p.q_strides, rc.b, rc.h) : head_base<T>(p.k, p.k_strides, rc.b, rc.h);
    const T* bbase = KV ? head_base<T>(p.dout, p.o_strides, rc.b, rc.h) : head_base<T>(p.v, p.v_strides, rc.b, rc.h);
    produce_tiles<T, D, BN, STAGES>(cv, cols, column_order<KV>(p, rc.h), abase, bbase, sA, sB, tile_rows, full, empty,
                                    copy_stats, KvTma{nullptr, 0, 0}, staged_storage<BN>());
  } else {
    regs_grow<Regs::CONSUMER>();
    const int w = threadIdx.x / 128 - 1;
    consume_bwd<T, D, BN, STAGES, KV, ONE_PASS>(p, ONE_PASS ? row_chunk<KV>(p, w, CONSUMERS) : rc, w,
                                                cols.item < cols.end, sX, sY, sA, sB, sDS, sDQ, dq_map, col_l, col_delta, col_tok,
                                                tile_rows, full, empty);
  }
}

// One consumer warpgroup of 64 rows plus the producer, 64-column tiles in a ring of two; two
// CTAs per SM.
#define INSTANTIATE_BWD_SM90(T, NAME, D)                                                          \
  extern "C" __global__ void __launch_bounds__(256, 2) bsattn_bwd_sm90_dq_##NAME##_d##D(const BwdParams p) {   \
    bsattn_bwd_sm90<T, D, 64, 2, false, false>(p);                                                \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(256, 2) bsattn_bwd_sm90_dkdv_##NAME##_d##D(const BwdParams p) { \
    bsattn_bwd_sm90<T, D, 64, 2, true, false>(p);                                                 \
  }
INSTANTIATE_BWD_SM90(__nv_bfloat16, bf16, 64)
INSTANTIATE_BWD_SM90(__nv_bfloat16, bf16, 128)
INSTANTIATE_BWD_SM90(__half, f16, 64)
INSTANTIATE_BWD_SM90(__half, f16, 128)

// The one-pass kernel: two consumer warpgroups of 64 key rows plus the producer, 64-column
// tiles in a ring of two; one CTA per SM. Head dim 128 (a consumer's dq channels are one
// 64-wide column block).
#define INSTANTIATE_BWD_SM90_ONE_PASS(T, NAME)                                                       \
  extern "C" __global__ void __launch_bounds__(384, 1) bsattn_bwd_sm90_dkdvdq_##NAME##_d128(         \
      const __grid_constant__ Sm90Args<BwdParams, TileMap> args) {                                   \
    bsattn_bwd_sm90<T, 128, 64, 2, true, true>(args.p, &args.maps);                                  \
  }
INSTANTIATE_BWD_SM90_ONE_PASS(__nv_bfloat16, bf16)
INSTANTIATE_BWD_SM90_ONE_PASS(__half, f16)

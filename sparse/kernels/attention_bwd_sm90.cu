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
#include "attention_params.cuh"
#include "bwd_params.cuh"
#include "common.cuh"
#include "sync_sm90.cuh"
#include "tiles_sm90.cuh"

// Named barrier: the consumer's row tiles are in shared memory.
constexpr int BAR_ROWS_READY = 1;
// Registers per thread at launch (two CTAs of two warpgroups per SM) and after the producer
// hands its surplus to the consumer: the dk/dv pass's consumer holds two 64 x D accumulators
// besides S and dP, and needs all but what the producer cannot do without.
template <bool KV> struct BwdRegisterSplit {
  static constexpr int LAUNCH = 128, PRODUCER = KV ? 32 : 56, CONSUMER = 2 * LAUNCH - PRODUCER;
};

// The consumer warpgroup: its 64 rows against every column tile of the stream.
template <typename T, int D, int BN, int STAGES, bool KV>
__device__ __forceinline__ void consume_bwd(const BwdParams& p, const RowChunk& rc, bool any_tile, unsigned char* sX,
                                            unsigned char* sY, const unsigned char* sA, const unsigned char* sB,
                                            const float* col_l, const float* col_delta, const int* tile_rows,
                                            uint64_t* full, uint64_t* empty) {
  constexpr int CH = D / 8, TILE_BYTES = BN * D * 2;
  const int tid = threadIdx.x - 128, warp = tid >> 5, lane = tid & 31;
  auto off = [](int r, int c) { return tile_off(BWD_ROWS, r, c); };
  load_row_tile<T, BWD_ROWS, CH, 128>(KV ? p.k_strides[2] : p.q_strides[2], rc.ord, rc.first, rc.nr,
                                    KV ? head_base<T>(p.k, p.k_strides, rc.b, rc.h)
                                       : head_base<T>(p.q, p.q_strides, rc.b, rc.h),
                                    sX, off, tid);
  load_row_tile<T, BWD_ROWS, CH, 128>(KV ? p.v_strides[2] : p.o_strides[2], rc.ord, rc.first, rc.nr,
                                    KV ? head_base<T>(p.v, p.v_strides, rc.b, rc.h)
                                       : head_base<T>(p.dout, p.o_strides, rc.b, rc.h),
                                    sY, off, tid);
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
  named_sync(BAR_ROWS_READY, 128);

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
    mma_ss_tile<T, D, BN>(s, sX, BWD_ROWS, ta);
    if constexpr (KV) wg_commit();
    mma_ss_tile<T, D, BN>(dp, sY, BWD_ROWS, tb);
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
    wg_fence();
    mma_rs_tile<T, D, BN>(acc1, a_ds, ta);
    wg_commit();
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

  // Rows in natural token order: dq (or dk) scaled by the softmax scale, and dv.
  T* g1 = reinterpret_cast<T*>(KV ? p.dk : p.dq) + (size_t)rc.bh * (KV ? p.sk : p.s) * D;
  T* g2 = reinterpret_cast<T*>(p.dv) + (size_t)rc.bh * p.sk * D;
  store_row_grads<T, D, KV>(g1, g2, acc1, acc2, p.scale, rc.ord, rc.first, rc.nr);
}

template <typename T, int D, int BN, int STAGES, bool KV>
__device__ __forceinline__ void bsattn_bwd_sm90(const BwdParams& p) {
  constexpr int ROW_BYTES = BWD_ROWS * D * 2, TILE_BYTES = BN * D * 2, CH = D / 8;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ uint64_t full[STAGES], empty[STAGES];
  __shared__ int tile_rows[STAGES];
  __shared__ float col_l[KV ? STAGES * BN : 1], col_delta[KV ? STAGES * BN : 1];  // dk/dv pass: natural log
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* sX = smem;
  unsigned char* sY = sX + ROW_BYTES;
  unsigned char* sA = sY + ROW_BYTES;          // STAGES buffers
  unsigned char* sB = sA + STAGES * TILE_BYTES;  // STAGES buffers
  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      mbar_init(&full[i], 129);  // every producer thread once its copies land, and the row count
      mbar_init(&empty[i], 4);   // every consumer warp
    }
  }
  __syncthreads();
  const RowChunk rc = row_chunk<KV>(p);
  if (rc.nr <= 0) return;
  const AttnParams cv = column_view<KV>(p);
  const KeyStream cols = key_stream(cv, (size_t)rc.bh * p.rows_blocks + rc.blk);
  if (threadIdx.x < 128) {
    regs_shrink<BwdRegisterSplit<KV>::PRODUCER>();
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
          }
        }
      }
    };
    const T* abase = KV ? head_base<T>(p.q, p.q_strides, rc.b, rc.h) : head_base<T>(p.k, p.k_strides, rc.b, rc.h);
    const T* bbase = KV ? head_base<T>(p.dout, p.o_strides, rc.b, rc.h) : head_base<T>(p.v, p.v_strides, rc.b, rc.h);
    produce_tiles<T, D, BN, STAGES>(cv, cols, column_order<KV>(p, rc.h), abase, bbase, sA, sB, tile_rows, full, empty,
                                    copy_stats);
  } else {
    regs_grow<BwdRegisterSplit<KV>::CONSUMER>();
    consume_bwd<T, D, BN, STAGES, KV>(p, rc, cols.item < cols.end, sX, sY, sA, sB, col_l, col_delta, tile_rows, full,
                                      empty);
  }
}

// One consumer warpgroup of 64 rows plus the producer, 64-column tiles in a ring of two; two
// CTAs per SM.
#define INSTANTIATE_BWD_SM90(T, NAME, D)                                                          \
  extern "C" __global__ void __launch_bounds__(256, 2) bsattn_bwd_sm90_dq_##NAME##_d##D(const BwdParams p) {   \
    bsattn_bwd_sm90<T, D, 64, 2, false>(p);                                                       \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(256, 2) bsattn_bwd_sm90_dkdv_##NAME##_d##D(const BwdParams p) { \
    bsattn_bwd_sm90<T, D, 64, 2, true>(p);                                                        \
  }
INSTANTIATE_BWD_SM90(__nv_bfloat16, bf16, 64)
INSTANTIATE_BWD_SM90(__nv_bfloat16, bf16, 128)
INSTANTIATE_BWD_SM90(__half, f16, 64)
INSTANTIATE_BWD_SM90(__half, f16, 128)

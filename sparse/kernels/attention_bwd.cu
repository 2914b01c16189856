// Block-sparse flash attention, backward, on tensor cores (warp MMAs, sm_80 and later). Two
// passes of one kernel, each owning the rows it writes (so, but for the case at the end, no
// gradient needs atomics):
// - the dq pass runs 64 rows of a query block (16 per warp) against the block's key stream;
// - the dk/dv pass runs 64 rows of a key block against the block's query stream (the
//   transposed lists).
// Per column tile both recompute S and P = exp(S - lse) and dP = dO V^T, dS = P (dP - delta);
// the dq pass accumulates dS K, the dk/dv pass dS^T Q and P^T dO. Column streams span small or
// partial blocks exactly as the forward's key streams do (attention_params.cuh), in double-
// buffered tiles. Where query blocks are too small to fill a CTA (VMoBA's one-token blocks),
// the dk/dv pass also adds each tile's dS K into dq with atomics, and no dq pass runs.
// Gradients are f32, [B, H, S, D] contiguous.
#include "attention_params.cuh"
#include "common.cuh"

struct BwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  long long q_strides[3];
  long long k_strides[3];
  long long v_strides[3];
  long long o_strides[3];
  const float* lse;    // [B * H, S] (natural log)
  const float* delta;  // [B * H, S]: sum over channels of dout * out
  float* dq;           // [B, H, S, D]
  float* dk;           // [B, H, SK, D]
  float* dv;
  const uint32_t* q_order;
  const uint32_t* q_starts;
  const uint32_t* k_order;
  const uint32_t* k_starts;
  const uint32_t* offsets;  // CSR: (b*H+h)*nqb + qb -> key blocks (dq pass) or
  const uint32_t* indices;  //      (b*H+h)*nkb + kb -> query blocks (dk/dv pass)
  int b, h, s, sk;  // s query tokens, sk key tokens
  int q_per_head, k_per_head;
  int rows_blocks;  // nqb for the dq pass, nkb for the dk/dv pass
  int row_chunks;   // 64-row chunks of the largest row block: CTA x = block * row_chunks + chunk
  int all_cols;     // > 0: every row block runs against all `all_cols` column blocks (no lists)
  int uniform_cols;  // > 0: every list has this length and `offsets` is unused
  float scale;
};
#include "abi/BwdParams.h"  // checks the layout against sparse/src/kernel_params.rs

constexpr float LOG2E = 1.4426950408889634f;

// The column side of a pass seen as a forward kernel's key side, so that the key-stream walk
// and tile copies of attention_params.cuh serve it: blocks, lists, and the two column tensors
// (K and V for the dq pass, Q and dO for the dk/dv pass) in the K and V places.
template <bool KV>
__device__ __forceinline__ AttnParams column_view(const BwdParams& p) {
  AttnParams c = {};
  c.k_starts = KV ? p.q_starts : p.k_starts;
  c.offsets = p.offsets;
  c.indices = p.indices;
  c.all_keys = p.all_cols;
  c.uniform_k = p.uniform_cols;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    c.k_strides[i] = KV ? p.q_strides[i] : p.k_strides[i];
    c.v_strides[i] = KV ? p.o_strides[i] : p.v_strides[i];
  }
  return c;
}

// Row stride (elements) of the dk/dv pass's dS tile in shared memory: padded so that
// ldmatrix's eight 16-byte rows fall in distinct banks.
template <int BC> __host__ __device__ constexpr int ds_stride() { return BC + 8; }

// dq of a dk/dv tile's BC query columns += scale * dS K over the CTA's 64 keys, added with
// atomics: warp w takes query columns (w & 1) * 16 and channels (w >> 1) * D / 2. `ds` holds
// dS^T (keys x columns), `k` the key rows (swizzled), `tok` the columns' query tokens.
template <typename T, int D, int BC>
__device__ __forceinline__ void add_dq_tile(const BwdParams& p, const T* ds, const T* k, const uint32_t* tok, int cols,
                                            int bh) {
  constexpr int CH = D / 8, RM = 64;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int q0 = (warp & 1) * 16, c0 = (warp >> 1) * (D / 2);
  float acc[D / 16][4];
#pragma unroll
  for (int i = 0; i < D / 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < RM / 16; ++kk) {
    // A = dS (columns x keys), read transposed from dS^T.
    uint32_t a[4];
    ldmatrix_x4_trans(a, ds + (kk * 16 + (lane & 7) + ((lane >> 4) & 1) * 8) * ds_stride<BC>() + q0 + ((lane >> 3) & 1) * 8);
#pragma unroll
    for (int j = 0; j < D / 32; ++j) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, k + swz<CH>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c0 / 8 + j * 2 + (lane >> 4)));
      mma16816<T>(acc[2 * j], a, b);
      mma16816<T>(acc[2 * j + 1], a, b + 2);
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int c = q0 + (lane >> 2) + half * 8;
    if (c >= cols) continue;
    float* dst = p.dq + ((size_t)bh * p.s + tok[c]) * D + c0 + (lane & 3) * 2;
#pragma unroll
    for (int nt = 0; nt < D / 16; ++nt) {
      atomicAdd(dst + nt * 8, acc[nt][half * 2] * p.scale);
      atomicAdd(dst + nt * 8 + 1, acc[nt][half * 2 + 1] * p.scale);
    }
  }
}

// One pass: rows X (q, or k) with their companion Y (dout, or v) against column tiles A (k, or
// q) with companion B (v, or dout), BC columns per tile; DQ_ATOMIC (dk/dv pass only) also adds
// dS K into dq.
template <typename T, int D, int BC, bool KV, bool DQ_ATOMIC>
__device__ __forceinline__ void bwd_pass(const BwdParams& p) {
  constexpr int RM = 64, CH = D / 8, THREADS = 128;
  static_assert(!DQ_ATOMIC || (KV && BC == 32), "dq by atomics: dk/dv pass, 32-column tiles (2 x 2 warps)");
  using Rows = TileRows<BC, CH, THREADS>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sX = reinterpret_cast<T*>(smem_raw);  // RM x D
  T* sY = sX + RM * D;                      // RM x D
  T* sA = sY + RM * D;                      // two buffers of BC x D
  T* sB = sA + 2 * BC * D;                  // two buffers of BC x D
  float* sL = reinterpret_cast<float*>(sB + 2 * BC * D);  // dk/dv pass: columns' lse (log2), two buffers
  float* sDelta = sL + 2 * BC;                            // and delta
  uint32_t* sTok = reinterpret_cast<uint32_t*>(sDelta + 2 * BC);  // dk/dv pass: columns' tokens
  T* sDS = reinterpret_cast<T*>(sTok + 2 * BC);                    // DQ_ATOMIC: dS^T, RM x BC

  const int bh = blockIdx.y, b = bh / p.h, h = bh % p.h;
  const int blk = blockIdx.x / p.row_chunks, chunk = blockIdx.x % p.row_chunks;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t* row_starts = KV ? p.k_starts : p.q_starts;
  const int first = (int)row_starts[blk] + chunk * RM;
  const int nr = min(RM, (int)row_starts[blk + 1] - first);
  if (nr <= 0) return;

  const uint32_t* q_ord = p.q_order + (p.q_per_head ? (size_t)h * p.s : 0);
  const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)h * p.sk : 0);
  const uint32_t* row_ord = KV ? k_ord : q_ord;
  const uint32_t* col_ord = KV ? q_ord : k_ord;
  const T* q = reinterpret_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = reinterpret_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* v = reinterpret_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* dout = reinterpret_cast<const T*>(p.dout) + b * p.o_strides[0] + h * p.o_strides[1];
  const float* lse = p.lse + (size_t)bh * p.s;
  const float* delta = p.delta + (size_t)bh * p.s;

  auto off = [](int r, int c) { return swz<CH>(r, c) * (int)sizeof(T); };
  auto bytes = [](T* t) { return reinterpret_cast<unsigned char*>(t); };
  load_row_tile<T, RM, CH, THREADS>(KV ? p.k_strides[2] : p.q_strides[2], row_ord, first, nr, KV ? k : q, bytes(sX),
                                    off, tid);
  load_row_tile<T, RM, CH, THREADS>(KV ? p.v_strides[2] : p.o_strides[2], row_ord, first, nr, KV ? v : dout, bytes(sY),
                                    off, tid);
  cp_async_commit();

  // The dq pass's rows carry their own lse and delta (rows g and g + 8 of this warp's 16).
  float row_l[2] = {0.f, 0.f}, row_delta[2] = {0.f, 0.f};
  if (!KV) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + (lane >> 2) + half * 8;
      if (r < nr) {
        const uint32_t tok = row_ord[first + r];
        row_l[half] = lse[tok] * LOG2E;
        row_delta[half] = delta[tok];
      }
    }
  }

  const AttnParams cv = column_view<KV>(p);
  const float scale_log2 = p.scale * LOG2E;
  const T* col_a = KV ? q : k;
  const T* col_b = KV ? dout : v;
  // Issues the copies of the column tile of `rows` stream rows from `s` into buffer `buf`
  // (and, in the dk/dv pass, its columns' lse and delta; columns past `rows` get zeros).
  auto load_columns = [&](KeyStream s, int rows, int buf) {
    uint32_t tok[Rows::PER_THREAD];
    tile_tokens<BC, CH, THREADS>(cv, s, rows, col_ord, tok);
    copy_kv_tile<T, BC, CH, THREADS>(cv, tok, rows, col_a, col_b, bytes(sA + buf * BC * D), bytes(sB + buf * BC * D),
                                     off);
    if (KV && tid % CH == 0) {
#pragma unroll
      for (int j = 0; j < Rows::PER_THREAD; ++j) {
        const int r = tid / CH + j * Rows::STEP;
        sL[buf * BC + r] = r < rows ? lse[tok[j]] * LOG2E : 0.f;
        sDelta[buf * BC + r] = r < rows ? delta[tok[j]] : 0.f;
        sTok[buf * BC + r] = tok[j];
      }
    }
  };

  float acc1[D / 8][4], acc2[KV ? D / 8 : 1][4];  // dq or dk; dv
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc1[i][e] = 0.f;
      if (KV) acc2[i][e] = 0.f;
    }
  }

  KeyStream cur = key_stream(cv, (size_t)bh * p.rows_blocks + blk);
  int rows = 0;
  KeyStream nxt = stream_advance(cv, cur, BC, rows);
  if (cur.item < cur.end) load_columns(cur, rows, 0);
  cp_async_commit();
  const int arow = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;  // A-fragment ldmatrix row
  for (int buf = 0; cur.item < cur.end; buf ^= 1) {
    int next_rows = 0;
    const KeyStream after = stream_advance(cv, nxt, BC, next_rows);
    if (nxt.item < nxt.end) load_columns(nxt, next_rows, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const T* ta = sA + buf * BC * D;
    const T* tb = sB + buf * BC * D;

    // S = X A^T and dP = Y B^T for this warp's 16 rows.
    float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
    for (int i = 0; i < BC / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t xf[4], yf[4];
      ldmatrix_x4(xf, sX + swz<CH>(arow, kk * 2 + (lane >> 4)));
      ldmatrix_x4(yf, sY + swz<CH>(arow, kk * 2 + (lane >> 4)));
#pragma unroll
      for (int j = 0; j < BC / 16; ++j) {
        const int brow = j * 16 + (lane & 7) + (lane >> 4) * 8, bch = kk * 2 + ((lane >> 3) & 1);
        uint32_t af[4], bf[4];
        ldmatrix_x4(af, ta + swz<CH>(brow, bch));
        ldmatrix_x4(bf, tb + swz<CH>(brow, bch));
        mma16816<T>(s[2 * j], xf, af);
        mma16816<T>(s[2 * j + 1], xf, af + 2);
        mma16816<T>(dp[2 * j], yf, bf);
        mma16816<T>(dp[2 * j + 1], yf, bf + 2);
      }
    }

    // P = exp(S - lse) and dS = P (dP - delta), with the lse and delta of each row (dq pass)
    // or column (dk/dv pass); columns past the tile's end get zeros.
#pragma unroll
    for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + (lane & 3) * 2 + (e & 1);
        const float l = KV ? sL[buf * BC + col] : row_l[e >> 1];
        const float dl = KV ? sDelta[buf * BC + col] : row_delta[e >> 1];
        const float pr = col < rows ? exp2f(s[nt][e] * scale_log2 - l) : 0.f;
        s[nt][e] = pr;
        dp[nt][e] = pr * (dp[nt][e] - dl);
      }
    }
    if (DQ_ATOMIC) {
      // This warp's 16 rows of dS^T (its keys) to shared memory, for the dq product below.
#pragma unroll
      for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int r = warp * 16 + (lane >> 2) + half * 8, c = nt * 8 + (lane & 3) * 2;
          *reinterpret_cast<uint32_t*>(sDS + r * ds_stride<BC>() + c) =
              pack2<T>(dp[nt][half * 2], dp[nt][half * 2 + 1]);
        }
      }
    }

    // acc1 += dS A and (dk/dv pass) acc2 += P B, the columns as the reduction dimension.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const uint32_t ds[4] = {pack2<T>(dp[2 * kk][0], dp[2 * kk][1]), pack2<T>(dp[2 * kk][2], dp[2 * kk][3]),
                              pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                              pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
      uint32_t pf[4];
      if (KV) {
        pf[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        pf[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        pf[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pf[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
#pragma unroll
      for (int j = 0; j < D / 16; ++j) {
        const int trow = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, tch = j * 2 + (lane >> 4);
        uint32_t af[4];
        ldmatrix_x4_trans(af, ta + swz<CH>(trow, tch));
        mma16816<T>(acc1[2 * j], ds, af);
        mma16816<T>(acc1[2 * j + 1], ds, af + 2);
        if (KV) {
          uint32_t bf[4];
          ldmatrix_x4_trans(bf, tb + swz<CH>(trow, tch));
          mma16816<T>(acc2[2 * j], pf, bf);
          mma16816<T>(acc2[2 * j + 1], pf, bf + 2);
        }
      }
    }
    if (DQ_ATOMIC) {
      __syncthreads();
      add_dq_tile<T, D, BC>(p, sDS, sX, sTok + buf * BC, rows, bh);
    }
    __syncthreads();
    cur = nxt;
    nxt = after;
    rows = next_rows;
  }

  // Rows in natural token order: dq (or dk) scaled by the softmax scale, and dv.
  float* g1 = (KV ? p.dk : p.dq) + (size_t)bh * (KV ? p.sk : p.s) * D;
  float* g2 = p.dv + (size_t)bh * p.sk * D;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warp * 16 + (lane >> 2) + half * 8;
    if (r >= nr) continue;
    const size_t at = (size_t)row_ord[first + r] * D + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<float2*>(g1 + at + dt * 8) =
          make_float2(acc1[dt][half * 2] * p.scale, acc1[dt][half * 2 + 1] * p.scale);
      if (KV) *reinterpret_cast<float2*>(g2 + at + dt * 8) = make_float2(acc2[dt][half * 2], acc2[dt][half * 2 + 1]);
    }
  }
}

// 64-column tiles, but 32 where the dk/dv pass also adds dq (its dS tile is split 2 x 2 over
// the warps).
#define INSTANTIATE_BWD(T, NAME, D)                                                                     \
  extern "C" __global__ void __launch_bounds__(128) bsattn_bwd_dq_##NAME##_d##D(const BwdParams p) {   \
    bwd_pass<T, D, 64, false, false>(p);                                                                \
  }                                                                                                     \
  extern "C" __global__ void __launch_bounds__(128) bsattn_bwd_dkdv_##NAME##_d##D(const BwdParams p) { \
    bwd_pass<T, D, 64, true, false>(p);                                                                 \
  }                                                                                                     \
  extern "C" __global__ void __launch_bounds__(128) bsattn_bwd_dkdvdq_##NAME##_d##D(const BwdParams p) { \
    bwd_pass<T, D, 32, true, true>(p);                                                                  \
  }
INSTANTIATE_BWD(__nv_bfloat16, bf16, 64)
INSTANTIATE_BWD(__nv_bfloat16, bf16, 128)
INSTANTIATE_BWD(__half, f16, 64)
INSTANTIATE_BWD(__half, f16, 128)

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
// Gradients are [B, H, S, D] contiguous, in the inputs' type (f32 where dq is added by
// atomics). Also here: delta = rowsum(dout * out), which both passes read.
#include "attention_params.cuh"
#include "bwd_params.cuh"
#include "common.cuh"

// Row stride (elements) of the dk/dv pass's dS tile in shared memory: padded so that
// ldmatrix's eight 16-byte rows fall in distinct banks.
template <int BC> __host__ __device__ constexpr int ds_stride() { return BC + 8; }

// dq of a dk/dv tile's BC query columns += scale * dS K over the CTA's 64 keys, added with
// atomics: warp w takes query columns (w & 1) * 16 and channels (w >> 1) * D / 2. `ds` holds
// dS^T (keys x columns), `k` the key rows (swizzled), `tok` the columns' query tokens.
template <typename T, int D, int BC>
__device__ __forceinline__ void add_dq_tile(const BwdParams& p, const T* ds, const T* k, const uint32_t* tok, int cols,
                                            int bh) {
  constexpr int CH = D / 8, RM = BWD_ROWS;
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
    float* dst = reinterpret_cast<float*>(p.dq) + ((size_t)bh * p.s + tok[c]) * D + c0 + (lane & 3) * 2;
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
  constexpr int RM = BWD_ROWS, CH = D / 8, THREADS = 128;
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

  const RowChunk rc = row_chunk<KV>(p);
  const int bh = rc.bh, blk = rc.blk, first = rc.first, nr = rc.nr;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  if (nr <= 0) return;

  const uint32_t* row_ord = rc.ord;
  const uint32_t* col_ord = column_order<KV>(p, rc.h);
  const T* q = head_base<T>(p.q, p.q_strides, rc.b, rc.h);
  const T* k = head_base<T>(p.k, p.k_strides, rc.b, rc.h);
  const T* v = head_base<T>(p.v, p.v_strides, rc.b, rc.h);
  const T* dout = head_base<T>(p.dout, p.o_strides, rc.b, rc.h);
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
        const int col = fragment_column(4 * nt + e, lane);
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

  // Rows in natural token order: dq (or dk) scaled by the softmax scale, and dv; f32 with dq by
  // atomics, the inputs' type otherwise.
  using G = std::conditional_t<DQ_ATOMIC, float, T>;
  G* g1 = reinterpret_cast<G*>(KV ? p.dk : p.dq) + (size_t)bh * (KV ? p.sk : p.s) * D;
  G* g2 = reinterpret_cast<G*>(p.dv) + (size_t)bh * p.sk * D;
  store_row_grads<G, D, KV>(g1, g2, &acc1[0][0], &acc2[0][0], p.scale, row_ord, first, nr);
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

// delta[(b * H + h) * S + s] = sum over channels of x[b, h, s, :] * y[b, h, s, :] (f32), for
// views with unit channel stride whose rows start 16-byte aligned: D / 8 threads per row, one
// 16-byte vector each.
template <typename T, int D>
__device__ __forceinline__ void row_dots(const T* x, long long xb, long long xh, long long xs, const T* y,
                                         long long yb, long long yh, long long ys, float* delta, int h, int s,
                                         long long rows) {
  constexpr int LANES = D / 8;
  static_assert(32 % LANES == 0, "a row's lanes stay in one warp");
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x, r = i / LANES;
  const int c = (int)(i % LANES) * 8;
  float acc = 0.f;
  if (r < rows) {
    const long long bh = r / s, b = bh / h;
    const int hh = (int)(bh % h), tok = (int)(r % s);
    float a[8], bv[8];
    load8(x + b * xb + hh * xh + tok * xs + c, a);
    load8(y + b * yb + hh * yh + tok * ys + c, bv);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(a[e], bv[e], acc);
  }
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
  if (r < rows && c == 0) delta[r] = acc;
}

#define INSTANTIATE_DELTA(T, NAME, D)                                                                       \
  extern "C" __global__ void bsattn_bwd_delta_##NAME##_d##D(const T* x, long long xb, long long xh, long long xs, \
                                                            const T* y, long long yb, long long yh, long long ys, \
                                                            float* delta, int h, int s, long long rows) {     \
    row_dots<T, D>(x, xb, xh, xs, y, yb, yh, ys, delta, h, s, rows);                                          \
  }
INSTANTIATE_DELTA(__nv_bfloat16, bf16, 64)
INSTANTIATE_DELTA(__nv_bfloat16, bf16, 128)
INSTANTIATE_DELTA(__half, f16, 64)
INSTANTIATE_DELTA(__half, f16, 128)

// dq[i] = scale * acc[i] in the inputs' type, eight values per thread: the one-pass Hopper
// backward's dq (attention_bwd_sm90.cu), which it adds into f32 `acc` by bulk reductions.
template <typename T>
__device__ __forceinline__ void finish_dq(const float* acc, T* dq, float scale, long long groups) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  const float4 a = reinterpret_cast<const float4*>(acc)[2 * i];
  const float4 b = reinterpret_cast<const float4*>(acc)[2 * i + 1];
  const uint4 out = {pack2<T>(a.x * scale, a.y * scale), pack2<T>(a.z * scale, a.w * scale),
                     pack2<T>(b.x * scale, b.y * scale), pack2<T>(b.z * scale, b.w * scale)};
  reinterpret_cast<uint4*>(dq)[i] = out;
}

#define INSTANTIATE_FINISH_DQ(T, NAME)                                                                 \
  extern "C" __global__ void bsattn_bwd_finish_dq_##NAME(const float* acc, T* dq, float scale, long long groups) { \
    finish_dq<T>(acc, dq, scale, groups);                                                            \
  }
INSTANTIATE_FINISH_DQ(__nv_bfloat16, bf16)
INSTANTIATE_FINISH_DQ(__half, f16)

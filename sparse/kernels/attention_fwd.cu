// Block-sparse flash attention, forward: one CTA per (batch*head, query block). Query rows and
// key rows are read through the plan's token orders straight from (possibly strided) q, k, v;
// the CTA walks its query block's key stream (attention_params.cuh) in 64-key tiles with an
// online softmax, and writes out[b, token, h, :] ([B, S, H, D]) and the log-sum-exp.
#include "common.cuh"
#include "attention_params.cuh"
#include "softmax.cuh"

template <typename T, int D, int WARPS>
__device__ __forceinline__ void bsattn_fwd(const AttnParams& p) {
  constexpr int BM = 16 * WARPS, BN = 64, CH = D / 8, THREADS = WARPS * 32;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;       // two buffers of BN x D
  T* sV = sK + 2 * BN * D;   // two buffers of BN x D

  const QueryTile qt = query_tile(p);
  if (qt.nq == 0) return;  // a spare work tile of the gathered mode
  const int b = qt.b, h = qt.h, qs = qt.qs, nq = qt.nq;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t* q_ord = qt.q_ord;
  const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)h * p.sk : 0);
  const T* qbase = reinterpret_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* kbase = reinterpret_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* vbase = reinterpret_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];

  auto off = [](int r, int c) { return swz<CH>(r, c) * (int)sizeof(T); };
  load_row_tile<T, BM, CH, THREADS>(p.q_strides[2], q_ord, qs, nq, qbase, reinterpret_cast<unsigned char*>(sQ), off, tid);
  cp_async_commit();

  // Tile j's copies are issued at the start of iteration j - 1, from key tokens looked up
  // during iteration j - 2.
  KeyStream cur = qt.keys;
  int rows = 0, next_rows = 0;
  KeyStream nxt = stream_advance(p, cur, BN, rows);
  KeyStream after = stream_advance(p, nxt, BN, next_rows);
  auto tile_at = [&](T* base, int buf) { return reinterpret_cast<unsigned char*>(base + buf * BN * D); };
  uint32_t tok[TileRows<BN, CH, THREADS>::PER_THREAD];
  if (cur.item < cur.end) load_kv_tile<T, BN, CH, THREADS>(p, cur, rows, k_ord, kbase, vbase, tile_at(sK, 0), tile_at(sV, 0), off);
  cp_async_commit();
  if (nxt.item < nxt.end) tile_tokens<BN, CH, THREADS>(p, nxt, next_rows, k_ord, tok);
  cp_async_wait<0>();
  __syncthreads();

  // This warp's 16 query rows as A fragments, for every 16-wide slice of the head dim.
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    ldmatrix_x4(qf[kk], sQ + swz<CH>(row, kk * 2 + (lane >> 4)));
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  int buf = 0;

  while (cur.item < cur.end) {
    if (nxt.item < nxt.end) {
      copy_kv_tile<T, BN, CH, THREADS>(p, tok, next_rows, kbase, vbase, tile_at(sK, buf ^ 1), tile_at(sV, buf ^ 1), off);
    }
    cp_async_commit();
    int later_rows = 0;
    const KeyStream later = stream_advance(p, after, BN, later_rows);
    if (after.item < after.end) tile_tokens<BN, CH, THREADS>(p, after, later_rows, k_ord, tok);
    const T* tk = sK + buf * BN * D;
    const T* tv = sV + buf * BN * D;

    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        uint32_t kf[4];
        ldmatrix_x4(kf, tk + swz<CH>(j * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)));
        mma16816<T>(s[2 * j], qf[kk], kf);
        mma16816<T>(s[2 * j + 1], qf[kk], kf + 2);
      }
    }

    // Online softmax (softmax.cuh: m16n8 fragments are laid out as the shared rule expects),
    // then O rescaled unconditionally (the warp-uniform skip costs this kernel spills at d64).
    float alpha[2];
    softmax_tile<BN>(&s[0][0], rows, p.scale_log2, m, l, alpha);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[dt][e] *= alpha[e >> 1];
    }

    // O += P V with P taken straight from the score registers.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                       pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < D / 16; ++j) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, tv + swz<CH>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, j * 2 + (lane >> 4)));
        mma16816<T>(o[2 * j], a, vf);
        mma16816<T>(o[2 * j + 1], a, vf + 2);
      }
    }
    cp_async_wait<0>();
    __syncthreads();
    buf ^= 1;
    cur = nxt;
    nxt = after;
    after = later;
    rows = next_rows;
    next_rows = later_rows;
  }

  // Normalise and write rows (and the log-sum-exp) in natural token order, or to their pairs.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    finish_row<T, D>(p, qt, warp * 16 + (lane >> 2) + half * 8, m[half], l[half],
                     [&](int dt, int e) { return o[dt][half * 2 + e]; });
  }
}

#define INSTANTIATE(T, NAME, D, W)                                                        \
  extern "C" __global__ void __launch_bounds__(W * 32)                                    \
      bsattn_fwd_##NAME##_d##D##_w##W(const AttnParams p) {                               \
    bsattn_fwd<T, D, W>(p);                                                               \
  }
INSTANTIATE(__nv_bfloat16, bf16, 64, 4)
INSTANTIATE(__nv_bfloat16, bf16, 128, 4)
INSTANTIATE(__nv_bfloat16, bf16, 64, 8)
INSTANTIATE(__nv_bfloat16, bf16, 128, 8)
INSTANTIATE(__half, f16, 64, 4)
INSTANTIATE(__half, f16, 128, 4)
INSTANTIATE(__half, f16, 64, 8)
INSTANTIATE(__half, f16, 128, 8)


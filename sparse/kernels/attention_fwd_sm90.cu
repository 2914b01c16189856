// Block-sparse flash attention, forward, for Hopper (sm_90a): the plan walk of
// attention_params.cuh with warpgroup MMAs (wgmma) that read Q, K and V straight from
// 128-byte-swizzled shared memory. One CTA per (batch*head, query block of up to 64*WG rows);
// warpgroup g owns query rows 64g..64g+63; key tiles of 64 or 128 rows (BN) of the key stream
// (spanning key blocks where they are small or partial), double-buffered,
// the next tile's copies issued while S of the current one is on the tensor cores. S = Q K^T is
// an SS wgmma (both K-major), the online softmax runs on the accumulators, and O += P V is an RS
// wgmma with P from registers and V read MN-major (transposed) from the same tile layout as K.
#include <type_traits>

#include "attention_params.cuh"
#include "common.cuh"
#include "wgmma.cuh"

// Byte offset of 16-byte chunk `c` (of D/8) of row `r` in a tile of `rows` rows stored as D/64
// column blocks of [rows][128 bytes], each 8-row atom 128-byte swizzled (wgmma's canonical
// layout; tile bases are 1024-byte aligned).
__device__ __forceinline__ int tile_off(int rows, int r, int c) {
  return (c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

template <typename T, int BN>
__device__ __forceinline__ void mma_qk(float* s, uint64_t a, uint64_t b, int accumulate) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (BN == 128) wgmma_ss_m64n128k16_bf16(s, a, b, accumulate);
    else wgmma_ss_m64n64k16_bf16(s, a, b, accumulate);
  } else {
    if constexpr (BN == 128) wgmma_ss_m64n128k16_f16(s, a, b, accumulate);
    else wgmma_ss_m64n64k16_f16(s, a, b, accumulate);
  }
}

template <typename T, int D>
__device__ __forceinline__ void mma_pv(float* o, const uint32_t* a, uint64_t b) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (D == 128) wgmma_rs_m64n128k16_bf16(o, a, b, 1);
    else wgmma_rs_m64n64k16_bf16(o, a, b, 1);
  } else {
    if constexpr (D == 128) wgmma_rs_m64n128k16_f16(o, a, b, 1);
    else wgmma_rs_m64n64k16_f16(o, a, b, 1);
  }
}

template <typename T, int D, int WG, int BN>
__device__ __forceinline__ void bsattn_fwd_sm90(const AttnParams& p) {
  constexpr int BM = 64 * WG, CH = D / 8, THREADS = 128 * WG;
  constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem =
      reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  unsigned char* sQ = smem;
  unsigned char* sK = sQ + Q_BYTES;       // two buffers
  unsigned char* sV = sK + 2 * KV_BYTES;  // two buffers

  const QueryTile qt = query_tile(p);
  const int b = qt.b, h = qt.h, qs = qt.qs, nq = qt.nq;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const uint32_t* q_ord = qt.q_ord;
  const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)h * p.SK : 0);
  const T* qbase = reinterpret_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
  const T* kbase = reinterpret_cast<const T*>(p.k) + b * p.k_sb + h * p.k_sh;
  const T* vbase = reinterpret_cast<const T*>(p.v) + b * p.v_sb + h * p.v_sh;

  auto off_q = [](int r, int c) { return tile_off(BM, r, c); };
  auto off_kv = [](int r, int c) { return tile_off(BN, r, c); };
  load_q_tile<T, BM, CH, THREADS>(p, q_ord, qs, nq, qbase, sQ, off_q);
  cp_async_commit();

  KeyStream cur = qt.keys;
  int rows = 0;
  KeyStream nxt = stream_advance(p, cur, BN, rows);
  if (cur.item < cur.end) load_kv_tile<T, BN, CH, THREADS, false>(p, cur, rows, k_ord, kbase, vbase, sK, sV, off_kv);
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_shared();
  __syncthreads();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float s[BN / 2];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  int buf = 0;

  while (cur.item < cur.end) {
    const unsigned char* tk = sK + buf * KV_BYTES;
    const unsigned char* tv = sV + buf * KV_BYTES;

    // S = Q K^T over the head dim, 16 channels per wgmma (32 bytes inside a swizzle atom).
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int block = kk >> 2, within = (kk & 3) * 32;
      const uint64_t da = smem_desc(sQ + block * BM * 128 + wg * 64 * 128 + within, 16, 1024);
      const uint64_t db = smem_desc(tk + block * BN * 128 + within, 16, 1024);
      mma_qk<T, BN>(s, da, db, kk > 0);
    }
    wg_commit();
    // The next tile's loads (token lookups included) are issued while S is being computed.
    // (Measured slower on an H100: looking the tokens up an iteration earlier, a third K/V
    // buffer, 176-key tiles.)
    int next_rows = 0;
    const KeyStream after = stream_advance(p, nxt, BN, next_rows);
    if (nxt.item < nxt.end) {
      load_kv_tile<T, BN, CH, THREADS, false>(p, nxt, next_rows, k_ord, kbase, vbase, sK + (buf ^ 1) * KV_BYTES,
                                       sV + (buf ^ 1) * KV_BYTES, off_kv);
    }
    cp_async_commit();
    wg_wait<0>();
    wg_pin<BN / 2>(s);

    // Online softmax in the log2 domain; s[4 * chunk + e] holds row lane/4 (+8 for e >= 2),
    // column 8 * chunk + 2 * (lane % 4) + (e & 1). Keys past a partial tile's rows are masked;
    // the scale is folded into the exponent's FMA.
    if (rows < BN) {
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) {
        const int key = (i / 4) * 8 + (lane & 3) * 2 + (i & 1);
        s[i] = key < rows ? s[i] : -INFINITY;
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx = fmaxf(mx, fmaxf(s[4 * nt + half * 2], s[4 * nt + half * 2 + 1]));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
      const float m_new = fmaxf(m[half], mx * p.scale_log2);
      const float base = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[half] - base);
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = exp2f(fmaf(s[4 * nt + half * 2 + e], p.scale_log2, -base));
          s[4 * nt + half * 2 + e] = pr;
          sum += pr;
        }
      }
      l[half] = l[half] * alpha + sum;
      m[half] = m_new;
      // Once the row maxima settle, whole warps skip the rescale of O.
      if (__any_sync(0xffffffff, alpha != 1.f)) {
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[4 * dt + half * 2] *= alpha;
          o[4 * dt + half * 2 + 1] *= alpha;
        }
      }
    }

    // O += P V: P's register layout is wgmma's A layout, 16 keys per wgmma.
    uint32_t a[BN / 16][4];
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      a[t][0] = pack2<T>(s[8 * t + 0], s[8 * t + 1]);
      a[t][1] = pack2<T>(s[8 * t + 2], s[8 * t + 3]);
      a[t][2] = pack2<T>(s[8 * t + 4], s[8 * t + 5]);
      a[t][3] = pack2<T>(s[8 * t + 6], s[8 * t + 7]);
    }
    wg_pin<D / 2>(o);
    wg_fence();
#pragma unroll
    for (int t = 0; t < BN / 16; ++t) {
      const uint64_t dv = smem_desc(tv + t * 16 * 128, BN * 128, 1024);
      mma_pv<T, D>(o, a[t], dv);
    }
    wg_commit();
    wg_wait<0>();
    wg_pin<D / 2>(o);

    cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();
    buf ^= 1;
    cur = nxt;
    nxt = after;
    rows = next_rows;
  }

  // Normalise and write rows (and the log-sum-exp) in natural token order, or to their pairs.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    finish_row<T, D>(p, qt, wg * 64 + warp * 16 + (lane >> 2) + half * 8, m[half], l[half],
                     [&](int dt, int e) { return o[4 * dt + half * 2 + e]; });
  }
}

#define INSTANTIATE_SM90(T, NAME, D, WG, BN)                                             \
  extern "C" __global__ void __launch_bounds__(WG * 128, 1)                              \
      bsattn_fwd_sm90_##NAME##_d##D##_wg##WG##_bn##BN(const AttnParams p) {             \
    bsattn_fwd_sm90<T, D, WG, BN>(p);                                                    \
  }
// Query tiles of 64 (one warpgroup) or 128 rows (two); key tiles of 64 or 128.
#define INSTANTIATE_SM90_ALL(T, NAME)     \
  INSTANTIATE_SM90(T, NAME, 64, 1, 64)    \
  INSTANTIATE_SM90(T, NAME, 128, 1, 64)   \
  INSTANTIATE_SM90(T, NAME, 64, 2, 64)    \
  INSTANTIATE_SM90(T, NAME, 128, 2, 64)   \
  INSTANTIATE_SM90(T, NAME, 64, 2, 128)   \
  INSTANTIATE_SM90(T, NAME, 128, 2, 128)
INSTANTIATE_SM90_ALL(__nv_bfloat16, bf16)
INSTANTIATE_SM90_ALL(__half, f16)

// Top-k per row on the GPU: the indices of the k largest scores of every row of a
// [rows, n] f32 matrix, best first, ties to the lower index (the CPU rule, whose order is
// f32::total_cmp). For k <= SMALL_K one warp per row selects by radix search and ranks the
// kept few; otherwise one CTA per row sorts (score, index) pairs bitonically in shared memory
// (n <= 4096).
#include <stdint.h>

// Largest k the warp-per-row kernel takes.
#define SMALL_K 128

// Maps a float to an unsigned key with the order of f32::total_cmp.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// true when (sa, ia) must come before (sb, ib): higher score first, then lower index.
__device__ __forceinline__ bool before(float sa, uint32_t ia, float sb, uint32_t ib) {
  const uint32_t ka = order_key(sa), kb = order_key(sb);
  return ka > kb || (ka == kb && ia < ib);
}

// One warp per row: the k-th largest key T by a bitwise search (32 counting passes over the
// row), the kept set (keys above T, then keys equal to T in index order until k), compacted in
// index order into shared memory, then each kept entry's rank (entries before it: higher key,
// or equal key and lower index) is its output position.
extern "C" __global__ void __launch_bounds__(128) topk_rows_small_k_f32(const float* scores, uint32_t* out, int rows,
                                                                       int n, int k) {
  __shared__ uint32_t kept_key[4][SMALL_K];
  __shared__ uint32_t kept_idx[4][SMALL_K];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * 4 + warp;
  if (row >= rows) return;
  const float* src = scores + (size_t)row * n;
  uint32_t t = 0u;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = t | (1u << bit);
    uint32_t count = 0u;
    for (int c = lane; c < n; c += 32) count += order_key(src[c]) >= cand;
    if (__reduce_add_sync(0xffffffffu, count) >= (uint32_t)k) t = cand;
  }
  uint32_t above = 0u;
  for (int c = lane; c < n; c += 32) above += order_key(src[c]) > t;
  const uint32_t ties_wanted = (uint32_t)k - __reduce_add_sync(0xffffffffu, above);
  const uint32_t below_me = (1u << lane) - 1u;
  uint32_t kept = 0u, ties = 0u;
  for (int base = 0; base < n; base += 32) {
    const int c = base + lane;
    const uint32_t key = c < n ? order_key(src[c]) : 0u;
    const bool tie = c < n && key == t;
    const uint32_t tie_mask = __ballot_sync(0xffffffffu, tie);
    const bool keep = (c < n && key > t) || (tie && ties + __popc(tie_mask & below_me) < ties_wanted);
    const uint32_t keep_mask = __ballot_sync(0xffffffffu, keep);
    if (keep) {
      const uint32_t at = kept + __popc(keep_mask & below_me);
      kept_key[warp][at] = key;
      kept_idx[warp][at] = (uint32_t)c;
    }
    kept += __popc(keep_mask);
    ties += __popc(tie_mask);
  }
  __syncwarp();
  for (int e = lane; e < k; e += 32) {
    const uint32_t key = kept_key[warp][e], idx = kept_idx[warp][e];
    int rank = 0;
    for (int o = 0; o < k; ++o) {
      const uint32_t ok = kept_key[warp][o];
      rank += ok > key || (ok == key && kept_idx[warp][o] < idx);
    }
    out[(size_t)row * k + rank] = idx;
  }
}


extern "C" __global__ void __launch_bounds__(512) topk_rows_f32(const float* scores, uint32_t* out, int n, int k,
                                                               int padded) {
  extern __shared__ unsigned char smem_raw[];
  float* s = reinterpret_cast<float*>(smem_raw);
  uint32_t* idx = reinterpret_cast<uint32_t*>(s + padded);
  const float* row = scores + (size_t)blockIdx.x * n;
  for (int i = threadIdx.x; i < padded; i += blockDim.x) {
    s[i] = i < n ? row[i] : -INFINITY;
    idx[i] = i < n ? i : 0xffffffffu;
  }
  __syncthreads();
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < padded; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool up = (i & size) == 0;  // this run sorts best-first
          const bool swap = up ? before(s[j], idx[j], s[i], idx[i]) : before(s[i], idx[i], s[j], idx[j]);
          if (swap) {
            const float ts = s[i];
            s[i] = s[j];
            s[j] = ts;
            const uint32_t ti = idx[i];
            idx[i] = idx[j];
            idx[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)blockIdx.x * k + i] = idx[i];
}

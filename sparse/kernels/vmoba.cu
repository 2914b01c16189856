// VMoBA on the GPU, around the gathered-query attention kernel (attention_fwd_sm90.cu and
// attention_fwd.cu in gathered mode): chunk selection per (head, query) row, the lists of
// (query, chunk) pairs grouped by chunk, their 64-query work tiles, and the exact
// log-sum-exp merge of each query's per-chunk partial outputs. Rows are numbered
// g * S + query for the heads g of one group (batch * heads, a range at a time).
#include <stdint.h>

#include "common.cuh"

// True when (va, ca) ranks before (vb, cb): higher score first, then lower chunk.
__device__ __forceinline__ bool ranks_before(float va, int ca, float vb, int cb) {
  return va > vb || (va == vb && ca < cb);
}

// The best remaining chunk of a warp's row (value -inf marks a taken chunk); -1 when none.
__device__ __forceinline__ int warp_best(const float* vals, int n) {
  const int lane = threadIdx.x & 31;
  float bv = -INFINITY;
  int bc = -1;
  for (int c = lane; c < n; c += 32) {
    if (vals[c] > bv) {
      bv = vals[c];
      bc = c;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffff, bv, o);
    const int oc = __shfl_xor_sync(0xffffffff, bc, o);
    if (oc >= 0 && (bc < 0 || ranks_before(ov, oc, bv, bc))) {
      bv = ov;
      bc = oc;
    }
  }
  return bc;
}

// Count rule for one warp's row: the own chunk plus the `keep` best others, ranked as the CPU
// rule ranks them (vmoba.rs: by (x - lo) in f32, ties to the lower chunk). The keys are the
// bits of x - lo (never negative, so bit order is value order). A radix select (four 8-bit
// passes over a shared histogram) finds the keep-th largest key T; one pass over the chunks in
// order then takes the keys above T and the first ties at T, and writes the mask words.
__device__ __forceinline__ int select_by_count(const float* vals, float lo, int n, int own, int keep,
                                               uint32_t* hist, uint32_t* mask_row, int words) {
  const int lane = threadIdx.x & 31;
  auto key = [&](int c) { return __float_as_uint(vals[c] - lo); };
  uint32_t prefix = 0u, fixed = 0u, want = (uint32_t)keep, threshold = 0xffffffffu;
  if (keep > 0) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = lane; i < 256; i += 32) hist[i] = 0u;
      __syncwarp();
      for (int c = lane; c < n; c += 32) {
        const uint32_t u = key(c);
        if (c != own && (u & fixed) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
      }
      __syncwarp();
      // Lane l sums bins 255 - 8l down to 248 - 8l; a scan over lanes counts from the top.
      uint32_t local = 0u;
#pragma unroll
      for (int j = 0; j < 8; ++j) local += hist[255 - 8 * lane - j];
      uint32_t inclusive = local;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t t = __shfl_up_sync(0xffffffff, inclusive, o);
        if (lane >= o) inclusive += t;
      }
      const int src = __ffs(__ballot_sync(0xffffffff, inclusive >= want)) - 1;
      int bin = 0;
      uint32_t above = inclusive - local;
      if (lane == src) {
        int j = 0;
        for (; j < 7 && above + hist[255 - 8 * lane - j] < want; ++j) above += hist[255 - 8 * lane - j];
        bin = 255 - 8 * lane - j;
      }
      bin = __shfl_sync(0xffffffff, bin, src);
      above = __shfl_sync(0xffffffff, above, src);
      want -= above;
      prefix |= (uint32_t)bin << shift;
      fixed |= 255u << shift;
      __syncwarp();
    }
    threshold = prefix;
  }
  uint32_t ties_seen = 0u;
  for (int w = 0; w < words; ++w) {
    const int c = w * 32 + lane;
    bool take = c == own, tie = false;
    if (c < n && c != own) {
      const uint32_t u = key(c);
      take = u > threshold;
      tie = u == threshold;
    }
    const uint32_t ties = __ballot_sync(0xffffffff, tie);
    if (tie && ties_seen + __popc(ties & ((1u << lane) - 1u)) < want) take = true;
    ties_seen += __popc(ties);
    const uint32_t word = __ballot_sync(0xffffffff, take);
    if (lane == 0) mask_row[w] = word;
  }
  return keep + 1;
}

// Share rule for one warp's row: after min-max normalising the row, the own chunk then the best
// others until the kept mass reaches `tau` of the total (the CPU rule of vmoba.rs). `vals` is
// consumed (taken chunks become -inf); the kept chunks are set in `bits`.
__device__ __forceinline__ int select_by_share(float* vals, const float* src, float lo, float hi, int n, int own,
                                               double tau, uint32_t* bits) {
  const int lane = threadIdx.x & 31;
  const double range = (double)(hi - lo);
  auto norm = [&](float v) { return range > 0.0 ? (double)(v - lo) / range : 1.0; };
  double total = 0.0;
  for (int c = lane; c < n; c += 32) total += norm(vals[c]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
  __syncwarp();
  double mass = norm(vals[own]);
  int kept = 1;
  auto take = [&](int c) {
    if (lane == 0) {
      bits[c >> 5] |= 1u << (c & 31);
      vals[c] = -INFINITY;
    }
    __syncwarp();
  };
  take(own);
  while (kept < n && mass < tau * total) {
    const int c = warp_best(vals, n);
    if (c < 0) break;
    mass += norm(src[c]);
    take(c);
    ++kept;
  }
  return kept;
}

// One warp per row of `scores` ([rows, n] f32, q . chunk mean): keeps the query's own chunk,
// then the best others, either `topk - 1` of them (topk > 0) or, with topk 0, until the kept
// mass reaches `tau` of the total. Writes the kept chunks as a bitmask [rows, words] and their
// number.
extern "C" __global__ void __launch_bounds__(128) vmoba_select(const float* scores, const uint32_t* chunk_of,
                                                              uint32_t* mask, uint32_t* count, int rows, int S,
                                                              int n, int words, int topk, double tau) {
  extern __shared__ float vals_all[];
  __shared__ uint32_t hist_all[4][256];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * 4 + warp;
  if (row >= rows) return;
  float* vals = vals_all + warp * n;
  uint32_t* bits = reinterpret_cast<uint32_t*>(vals_all + 4 * n) + warp * words;
  const float* src = scores + (size_t)row * n;
  float lo = INFINITY, hi = -INFINITY;
  for (int c = lane; c < n; c += 32) {
    const float v = src[c];
    vals[c] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffff, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffff, hi, o));
  }
  __syncwarp();
  const int own = (int)chunk_of[row % S];
  uint32_t* mask_row = mask + (size_t)row * words;
  int kept;
  if (topk > 0) {
    kept = select_by_count(vals, lo, n, own, min(topk, n) - 1, hist_all[warp], mask_row, words);
  } else {
    for (int w = lane; w < words; w += 32) bits[w] = 0u;
    __syncwarp();
    kept = select_by_share(vals, src, lo, hi, n, own, tau, bits);
    for (int w = lane; w < words; w += 32) mask_row[w] = bits[w];
  }
  if (lane == 0) count[row] = kept;
}

// Pairs per (head in group, chunk): counts[g * n + c] += rows of head g keeping chunk c. Each
// CTA takes 256 rows of one head and adds a shared-memory histogram.
extern "C" __global__ void vmoba_chunk_counts(const uint32_t* mask, uint32_t* counts, int S, int n, int words) {
  extern __shared__ uint32_t hist[];
  const int g = blockIdx.y;
  for (int c = threadIdx.x; c < n; c += blockDim.x) hist[c] = 0u;
  __syncthreads();
  const int query = blockIdx.x * blockDim.x + threadIdx.x;
  if (query < S) {
    const uint32_t* bits = mask + ((size_t)g * S + query) * words;
    for (int w = 0; w < words; ++w) {
      for (uint32_t m = bits[w]; m != 0u; m &= m - 1u) atomicAdd(&hist[w * 32 + __ffs(m) - 1], 1u);
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    if (hist[c] != 0u) atomicAdd(&counts[(size_t)g * n + c], hist[c]);
  }
}

// Exclusive prefix sums, in place, of 1024-element blocks of `x`; each block's total goes to
// `totals[block]` (a second pass over the totals and `scan_add` finish a long scan).
extern "C" __global__ void __launch_bounds__(1024) scan_blocks_u32(uint32_t* x, uint32_t* totals, int n) {
  __shared__ uint32_t warp_sums[32];
  const int i = blockIdx.x * 1024 + threadIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t v = i < n ? x[i] : 0u;
  uint32_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t t = __shfl_up_sync(0xffffffff, inc, o);
    if (lane >= o) inc += t;
  }
  if (lane == 31) warp_sums[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint32_t s = warp_sums[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t t = __shfl_up_sync(0xffffffff, s, o);
      if (lane >= o) s += t;
    }
    warp_sums[lane] = s;  // inclusive over warps
  }
  __syncthreads();
  const uint32_t before = (warp > 0 ? warp_sums[warp - 1] : 0u) + inc - v;
  if (i < n) x[i] = before;
  if (threadIdx.x == 1023) totals[blockIdx.x] = warp_sums[31];
}

// Adds each 1024-element block's offset (the scanned totals) to its elements.
extern "C" __global__ void scan_add_u32(uint32_t* x, const uint32_t* offsets, int n) {
  const int i = blockIdx.x * 1024 + threadIdx.x;
  if (i < n) x[i] += offsets[blockIdx.x];
}

// Places every kept (query, chunk) pair: the query token at the pair's slot in its chunk's
// list (`pair_query`), and the row-major pair number (`pair_row`: the row's offset plus the
// pair's rank in the row, chunks ascending) where its partial output goes.
extern "C" __global__ void vmoba_fill(const uint32_t* mask, const uint32_t* row_offsets,
                                      const uint32_t* chunk_offsets, uint32_t* chunk_cursor, uint32_t* pair_query,
                                      uint32_t* pair_row, int rows, int S, int n, int words) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int g = row / S;
  const uint32_t* bits = mask + (size_t)row * words;
  uint32_t rank = row_offsets[row];
  for (int w = 0; w < words; ++w) {
    for (uint32_t m = bits[w]; m != 0u; m &= m - 1u) {
      const size_t gc = (size_t)g * n + w * 32 + __ffs(m) - 1;
      const uint32_t slot = chunk_offsets[gc] + atomicAdd(&chunk_cursor[gc], 1u);
      pair_query[slot] = (uint32_t)(row % S);
      pair_row[slot] = rank++;
    }
  }
}

// Work tiles per (head in group, chunk): ceil(pairs / rows).
extern "C" __global__ void vmoba_tile_counts(const uint32_t* counts, uint32_t* tiles, int len, uint32_t rows) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < len) tiles[i] = (counts[i] + rows - 1u) / rows;
}

// The work tiles: (batch * head, chunk, first slot, queries) for each `rows`-query slice of
// each chunk's list.
extern "C" __global__ void vmoba_tiles(const uint32_t* counts, const uint32_t* chunk_offsets,
                                       const uint32_t* tile_offsets, uint4* tiles, int len, int n, int bh0,
                                       uint32_t rows) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  const uint32_t cnt = counts[i];
  for (uint32_t t = 0; t * rows < cnt; ++t) {
    tiles[tile_offsets[i] + t] = make_uint4((uint32_t)(bh0 + i / n), (uint32_t)(i % n), chunk_offsets[i] + rows * t,
                                            min(rows, cnt - rows * t));
  }
}

// One warp per row: out[b, query, h, :] = sum_j exp(lse_j - lse) o_j over the row's partial
// outputs (`partial` [pairs, D] f32 and `partial_lse`, natural log, at row_offsets[row]..+count),
// lse = log sum_j exp(lse_j). Rows without keys get zeros.
template <typename T, int D>
__device__ __forceinline__ void merge_rows(const float* partial, const float* partial_lse, const uint32_t* row_offsets,
                                           const uint32_t* count, T* out, int rows, int S, int H, int bh0) {
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const uint32_t first = row_offsets[row], last = first + count[row];
  float mx = -INFINITY;
  for (uint32_t j = first; j < last; ++j) mx = fmaxf(mx, partial_lse[j]);
  float acc[D / 32] = {0.f}, wsum = 0.f;
  if (mx > -INFINITY) {
    for (uint32_t j = first; j < last; ++j) {
      const float w = __expf(partial_lse[j] - mx);
      wsum += w;
#pragma unroll
      for (int i = 0; i < D / 32; ++i) acc[i] += w * partial[(size_t)j * D + lane + 32 * i];
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  const int bh = bh0 + row / S, b = bh / H, h = bh % H, query = row % S;
  T* dst = out + (((size_t)b * S + query) * H + h) * D;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) dst[lane + 32 * i] = from_f32<T>(acc[i] * inv);
}

#define MERGE(T, NAME, D)                                                                                 \
  extern "C" __global__ void vmoba_merge_##NAME##_d##D(const float* partial, const float* partial_lse,     \
                                                       const uint32_t* row_offsets, const uint32_t* count, \
                                                       T* out, int rows, int S, int H, int bh0) {          \
    merge_rows<T, D>(partial, partial_lse, row_offsets, count, out, rows, S, H, bh0);                     \
  }
MERGE(__nv_bfloat16, bf16, 64)
MERGE(__nv_bfloat16, bf16, 128)
MERGE(__half, f16, 64)
MERGE(__half, f16, 128)

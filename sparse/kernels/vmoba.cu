// VMoBA on the GPU, around the gathered-query attention kernels (vmoba_sm90.cu, and
// attention_fwd_sm90.cu and attention_fwd.cu in gathered mode): chunk selection per (head,
// query) row, the lists of (query, chunk) pairs grouped by chunk, their work tiles, and the
// exact log-sum-exp merge of each query's per-chunk partial outputs. Rows are numbered
// g * S + query for the heads g of one group (batch * heads, a range at a time). A pair's
// partial output is the row of its slot in its chunk's list; each list starts at a multiple of
// LIST_ALIGN slots (vmoba_cuda.rs), its padding never written to by the lists and never read
// by the merge.
#include <stdint.h>

#include "common.cuh"
#include "vmoba_scores.cuh"

// Chunk selection ranks a row's chunks as the CPU rule does (vmoba.rs): by (x - lo) in f32,
// ties to the lower chunk. The keys are the bits of x - lo (never negative, so bit order is
// value order). A radix select (up to four 8-bit passes over shared histograms of the
// candidates' counts and normalised masses) finds the key T of the last chunk taken, or the
// leading digits of T once they settle the cut; one pass over the chunks in order then takes
// the own chunk, every key above T and the first `ties` keys at T (keys compared on T's digits).

// A warp's histograms: candidates and their mass per 8-bit digit.
struct Histogram {
  uint32_t count[256];
  double mass[256];
};

// What the radix select found: keys whose digits under `mask` lie above `threshold` are taken,
// and `ties` of those whose digits equal it.
struct Cut {
  uint32_t threshold, mask, ties;
};

// Writes a row's mask words for `cut` (chunks in order, so that ties go to the lower chunk) and
// returns the number of chunks kept.
__device__ __forceinline__ int write_mask(const float* vals, float lo, int n, int own, Cut cut, uint32_t* mask_row,
                                          int words) {
  const int lane = threadIdx.x & 31;
  uint32_t ties_seen = 0u;
  int kept = 0;
  for (int w = 0; w < words; ++w) {
    const int c = w * 32 + lane;
    bool take = c == own, tie = false;
    if (c < n && c != own) {
      const uint32_t u = __float_as_uint(vals[c] - lo) & cut.mask;
      take = u > cut.threshold;
      tie = u == cut.threshold;
    }
    const uint32_t ties = __ballot_sync(0xffffffff, tie);
    if (tie && ties_seen + __popc(ties & ((1u << lane) - 1u)) < cut.ties) take = true;
    ties_seen += __popc(ties);
    const uint32_t word = __ballot_sync(0xffffffff, take);
    kept += __popc(word);
    if (lane == 0) mask_row[w] = word;
  }
  return kept;
}

// The cut of one warp's row. Count rule (BY_MASS false): the `keep` best others. Share rule:
// the fewest best others whose summed normalised mass reaches `need` (all when it never does),
// with `range` the row's max - min (the CPU rule's normalisation: (x - lo) / range, or 1).
template <bool BY_MASS>
__device__ __forceinline__ Cut radix_cut(const float* vals, float lo, double range, int n, int own, uint32_t keep,
                                         double need, Histogram& hist) {
  const int lane = threadIdx.x & 31;
  if (n <= 1) return Cut{0xffffffffu, 0xffffffffu, 0u};
  auto norm = [&](float d) { return range > 0.0 ? (double)d / range : 1.0; };
  uint32_t prefix = 0u, fixed = 0u, want = keep;
  double want_mass = need;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = lane; i < 256; i += 32) {
      hist.count[i] = 0u;
      if (BY_MASS) hist.mass[i] = 0.0;
    }
    __syncwarp();
    for (int c = lane; c < n; c += 32) {
      const float d = vals[c] - lo;
      const uint32_t u = __float_as_uint(d);
      if (c != own && (u & fixed) == prefix) {
        atomicAdd(&hist.count[(u >> shift) & 255u], 1u);
        if (BY_MASS) atomicAdd(&hist.mass[(u >> shift) & 255u], norm(d));
      }
    }
    __syncwarp();
    // Lane l holds bins 255 - 8l down to 248 - 8l; scans over lanes sum from the top.
    uint32_t count = 0u;
    double mass = 0.0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      count += hist.count[255 - 8 * lane - j];
      if (BY_MASS) mass += hist.mass[255 - 8 * lane - j];
    }
    uint32_t count_incl = count;
    double mass_incl = mass;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t t = __shfl_up_sync(0xffffffff, count_incl, o);
      const double tm = __shfl_up_sync(0xffffffff, mass_incl, o);
      if (lane >= o) {
        count_incl += t;
        mass_incl += tm;
      }
    }
    // The first lane whose bins reach the target; with none (a share never reached, or
    // rounding), the lowest non-empty bin, so that every candidate above it is taken.
    const bool reached = BY_MASS ? count > 0u && mass_incl >= want_mass : count_incl >= want;
    const uint32_t reaching = __ballot_sync(0xffffffff, reached);
    const uint32_t nonempty = __ballot_sync(0xffffffff, count > 0u);
    const int src = reaching != 0u ? __ffs(reaching) - 1 : 31 - __clz(nonempty);
    uint32_t above = count_incl - count;
    double above_mass = mass_incl - mass;
    int stop = 7;
    if (lane == src) {
      if (reaching != 0u) {
        for (int j = 0; j < 7; ++j) {
          const int b = 255 - 8 * lane - j;
          const bool here = BY_MASS ? hist.count[b] > 0u && above_mass + hist.mass[b] >= want_mass
                                    : above + hist.count[b] >= want;
          if (here) {
            stop = j;
            break;
          }
          above += hist.count[b];
          if (BY_MASS) above_mass += hist.mass[b];
        }
      } else {
        while (stop > 0 && hist.count[255 - 8 * lane - stop] == 0u) --stop;
        for (int j = 0; j < stop; ++j) {
          above += hist.count[255 - 8 * lane - j];
          if (BY_MASS) above_mass += hist.mass[255 - 8 * lane - j];
        }
      }
    }
    const int bin = __shfl_sync(0xffffffff, 255 - 8 * lane - stop, src);
    want -= __shfl_sync(0xffffffff, above, src);
    want_mass -= __shfl_sync(0xffffffff, above_mass, src);
    prefix |= (uint32_t)bin << shift;
    fixed |= 255u << shift;
    // The digits so far settle the cut once the bin's candidates are all taken (count rule) or
    // it holds one candidate (share rule: taken while the kept mass is short).
    const uint32_t in_bin = hist.count[bin];
    __syncwarp();
    if (shift > 0 && (BY_MASS ? in_bin == 1u : in_bin == want)) {
      return Cut{prefix, fixed, BY_MASS ? (want_mass > 0.0 ? 1u : 0u) : want};
    }
  }
  if (!BY_MASS) return Cut{prefix, 0xffffffffu, want};
  // Ties at T share one mass v: the CPU rule takes them while the kept mass is short.
  if (want_mass <= 0.0) return Cut{prefix, 0xffffffffu, 0u};
  const double v = norm(__uint_as_float(prefix));
  const double ties = v > 0.0 ? ceil(want_mass / v) : 4294967295.0;
  return Cut{prefix, 0xffffffffu, (uint32_t)fmin(ties, 4294967295.0)};
}

// One warp per row of `scores` ([rows, n] f32, rows `ld` apart, q . chunk mean): keeps the
// query's own chunk, then the best others, either `topk - 1` of them (topk > 0) or, with topk
// 0, until the kept mass reaches `tau` of the total (after min-max normalising the row). Writes
// the kept chunks as a bitmask [rows, words] and their number.
extern "C" __global__ void __launch_bounds__(128) vmoba_select(const float* scores, const uint32_t* chunk_of,
                                                              uint32_t* mask, uint32_t* count, int rows, int S,
                                                              int n, int ld, int words, int topk, double tau) {
  extern __shared__ float vals_all[];
  __shared__ Histogram hists[4];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row = blockIdx.x * 4 + warp;
  if (row >= rows) return;
  float* vals = vals_all + warp * n;
  const float* src = scores + (size_t)row * ld;
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
  const double range = (double)(hi - lo);
  Cut cut;
  if (topk > 0) {
    cut = radix_cut<false>(vals, lo, range, n, own, (uint32_t)(min(topk, n) - 1), 0.0, hists[warp]);
  } else {
    auto norm = [&](float v) { return range > 0.0 ? (double)(v - lo) / range : 1.0; };
    double total = 0.0;
    for (int c = lane; c < n; c += 32) total += norm(vals[c]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
    cut = radix_cut<true>(vals, lo, range, n, own, 0u, tau * total - norm(vals[own]), hists[warp]);
  }
  const int kept = write_mask(vals, lo, n, own, cut, mask + (size_t)row * words, words);
  if (lane == 0) count[row] = kept;
}

// Pairs per (head in group, chunk): counts[g * n + c] += rows of head g keeping chunk c, and
// their query-key pairs (chunk c holding starts[c + 1] - starts[c] keys) added to `pairs`. Each
// CTA takes 256 rows of one head and adds a shared-memory histogram.
extern "C" __global__ void vmoba_chunk_counts(const uint32_t* mask, uint32_t* counts, int S, int n, int words,
                                              const uint32_t* starts, unsigned long long* pairs) {
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
  unsigned long long keys = 0ull;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    if (hist[c] != 0u) {
      atomicAdd(&counts[(size_t)g * n + c], hist[c]);
      keys += (unsigned long long)hist[c] * (starts[c + 1] - starts[c]);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) keys += __shfl_xor_sync(0xffffffff, keys, o);
  if ((threadIdx.x & 31) == 0 && keys != 0ull) atomicAdd(pairs, keys);
}

// Exclusive prefix sum of `v` over a CTA of 1024 threads (`warp_sums` 32 entries of shared
// memory); `total` gets the CTA's sum. Every thread of the CTA calls it.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_sums, uint32_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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
  total = warp_sums[31];
  __syncthreads();  // warp_sums may be reused
  return before;
}

// Exclusive prefix sums, in place, of 1024-element blocks of `x`; each block's total goes to
// `totals[block]` (a second pass over the totals and `scan_add` finish a long scan).
extern "C" __global__ void __launch_bounds__(1024) scan_blocks_u32(uint32_t* x, uint32_t* totals, int n) {
  __shared__ uint32_t warp_sums[32];
  const int i = blockIdx.x * 1024 + threadIdx.x;
  uint32_t total;
  const uint32_t before = block_exclusive_scan(i < n ? x[i] : 0u, warp_sums, total);
  if (i < n) x[i] = before;
  if (threadIdx.x == 0) totals[blockIdx.x] = total;
}

// Adds each 1024-element block's offset (the scanned totals) to its elements.
extern "C" __global__ void scan_add_u32(uint32_t* x, const uint32_t* offsets, int n) {
  const int i = blockIdx.x * 1024 + threadIdx.x;
  if (i < n) x[i] += offsets[blockIdx.x];
}

// The number of row `row`'s first pair in row-major order: row * `uniform` where every row
// keeps that many chunks (the top-k rule), else row_offsets[row] (the scanned row counts).
__device__ __forceinline__ uint32_t row_first_pair(const uint32_t* row_offsets, uint32_t uniform, int row) {
  return uniform > 0u ? (uint32_t)row * uniform : row_offsets[row];
}

// Places every kept (query, chunk) pair: the query token at the pair's slot in its chunk's
// list (`pair_query`), and that slot at the pair's row-major number (`pair_slot`: the row's
// offset plus the pair's rank in the row, chunks ascending), where the merge finds it
// (row_first_pair). A CTA of 256 rows counts its pairs per (head, chunk) in shared memory,
// reserves each count's run of slots with one global atomic, and places its pairs inside those
// runs (a chunk's list is otherwise claimed one pair at a time by thousands of rows, whose
// atomics on one counter serialise). The counters fit: a CTA's rows span at most two heads
// where S >= 256, and fewer than 256 / S + 2 heads of at most S chunks each otherwise (a chunk
// holds a token at least), so at most 2,048 chunks (MAX_CHUNKS of vmoba_cuda.rs) make at most
// FILL_COUNTERS of them.
constexpr int FILL_COUNTERS = 4096;
extern "C" __global__ void __launch_bounds__(256)
    vmoba_fill(const uint32_t* mask, const uint32_t* row_offsets, const uint32_t* chunk_offsets,
               uint32_t* chunk_cursor, uint32_t* pair_query, uint32_t* pair_slot, int rows, int S, int n, int words,
               uint32_t uniform) {
  __shared__ uint32_t local[FILL_COUNTERS];
  const int first = blockIdx.x * blockDim.x, row = first + threadIdx.x;
  const int last = min(first + (int)blockDim.x, rows) - 1;
  const int g0 = first / S, span = (last / S - g0 + 1) * n;  // (head, chunk) counters of this CTA
  const bool mine = row < rows;
  const int g = row / S;
  const uint32_t* bits = mask + (size_t)row * words;
  uint32_t rank = mine ? row_first_pair(row_offsets, uniform, row) : 0u;
  // Each kept chunk of this row in ascending order: `place(counter index)`.
  auto each_pair = [&](auto place) {
    if (!mine) return;
    for (int w = 0; w < words; ++w) {
      for (uint32_t m = bits[w]; m != 0u; m &= m - 1u) place((g - g0) * n + w * 32 + __ffs(m) - 1);
    }
  };
  auto put = [&](uint32_t slot) {
    pair_query[slot] = (uint32_t)(row % S);
    pair_slot[rank++] = slot;
  };
  const uint32_t* offsets = chunk_offsets + (size_t)g0 * n;
  uint32_t* cursor = chunk_cursor + (size_t)g0 * n;
  if (span > FILL_COUNTERS) __trap();  // beyond MAX_CHUNKS (above)
  for (int i = threadIdx.x; i < span; i += blockDim.x) local[i] = 0u;
  __syncthreads();
  each_pair([&](int i) { atomicAdd(&local[i], 1u); });
  __syncthreads();
  for (int i = threadIdx.x; i < span; i += blockDim.x) {
    const uint32_t count = local[i];
    if (count > 0u) local[i] = offsets[i] + atomicAdd(&cursor[i], count);
  }
  __syncthreads();
  each_pair([&](int i) { put(atomicAdd(&local[i], 1u)); });
}

// Where each (head in group, chunk) list of `counts` pairs starts: its first slot
// (`slot_offsets`; the lists before it rounded up to `align` slots, LIST_ALIGN of
// vmoba_cuda.rs, so that a list starts where a query tile of the chunk-stationary kernel may)
// and its first work tile (`tile_offsets`; tiles of up to `rows` pairs); zeroes the lists'
// cursors (vmoba_fill's) and the entries of `tiles` (`capacity` of them) past the lists' tiles
// (vmoba_tiles writes the others). One CTA of 1024 threads scans the `len` lists 1024 at a time.
extern "C" __global__ void __launch_bounds__(1024)
    vmoba_list_offsets(const uint32_t* counts, uint32_t* slot_offsets, uint32_t* tile_offsets, uint32_t* cursor,
                       uint4* tiles, int len, uint32_t rows, uint32_t align, uint32_t capacity) {
  __shared__ uint32_t warp_sums[32];
  uint32_t slots_before = 0u, tiles_before = 0u;
  for (int i0 = 0; i0 < len; i0 += 1024) {
    const int i = i0 + threadIdx.x;
    const uint32_t count = i < len ? counts[i] : 0u;
    uint32_t slots, tiles;
    const uint32_t slot = block_exclusive_scan((count + align - 1u) / align * align, warp_sums, slots);
    const uint32_t tile = block_exclusive_scan((count + rows - 1u) / rows, warp_sums, tiles);
    if (i < len) {
      slot_offsets[i] = slots_before + slot;
      tile_offsets[i] = tiles_before + tile;
      cursor[i] = 0u;
    }
    slots_before += slots;
    tiles_before += tiles;
  }
  for (uint32_t t = tiles_before + threadIdx.x; t < capacity; t += 1024) tiles[t] = make_uint4(0u, 0u, 0u, 0u);
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

// N consecutive elements, aligned so that they move as one load or store.
template <typename T, int N> struct alignas(sizeof(T) * N) Elems {
  T e[N];
};

// One warp per row: out[b, query, h, :] = sum_j exp(lse_j - lse) o_j over the row's partial
// outputs (`partial` [slots, D] in the output's dtype and `partial_lse`, natural log, at the
// slots pair_slot[first .. first + count]: first by row_first_pair, count `uniform` or
// count[row]), lse = log sum_j exp(lse_j). The row's pairs go 32 at a time: lane j loads pair
// j's slot and log-sum-exp (one load each for the warp, not one per pair in turn), the sums so
// far are rescaled to the running maximum, and the pairs' rows are added with their weights
// taken from the lanes that hold them, two rows at a time: each half of the warp reads one row,
// 16 bytes a lane (D / 16 consecutive columns), and the halves' sums are added at the end. Rows
// without keys get zeros.
template <typename T, int D>
__device__ __forceinline__ void merge_rows(const T* partial, const float* partial_lse, const uint32_t* pair_slot,
                                           const uint32_t* row_offsets, const uint32_t* count, uint32_t uniform, T* out,
                                           int rows, int S, int H, int bh0) {
  constexpr int N = D / 16;
  using Row = Elems<T, N>;
  const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const int half = lane >> 4, col = lane & 15;
  if (row >= rows) return;
  const uint32_t* slots = pair_slot + row_first_pair(row_offsets, uniform, row);
  const int pairs = (int)(uniform > 0u ? uniform : count[row]);
  float acc[N] = {0.f}, wsum = 0.f, mx = -INFINITY;
  for (int j0 = 0; j0 < pairs; j0 += 32) {
    uint32_t slot = 0u;
    float lse = -INFINITY;
    if (j0 + lane < pairs) {
      slot = slots[j0 + lane];
      lse = partial_lse[slot];
    }
    float top = lse;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, o));
    if (top == -INFINITY) continue;  // no keys in these pairs
    const float next = fmaxf(mx, top), rescale = __expf(mx - next);
    wsum *= rescale;
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] *= rescale;
    mx = next;
    const float w = __expf(lse - mx);  // 0 for lanes past the row's pairs
    const int m = min(32, pairs - j0);
#pragma unroll 2
    for (int j = 0; j < m; j += 2) {
      const float wj = __shfl_sync(0xffffffff, w, j + half);
      const uint32_t sj = __shfl_sync(0xffffffff, slot, j + half);
      if (j + half < m) {
        const Row o = reinterpret_cast<const Row*>(partial + (size_t)sj * D)[col];
        wsum += wj;
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] += wj * to_f32<T>(o.e[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] += __shfl_xor_sync(0xffffffff, acc[i], 16);
  wsum += __shfl_xor_sync(0xffffffff, wsum, 16);
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  const int bh = bh0 + row / S, b = bh / H, h = bh % H, query = row % S;
  if (half == 0) {
    Row r;
#pragma unroll
    for (int i = 0; i < N; ++i) r.e[i] = from_f32<T>(acc[i] * inv);
    reinterpret_cast<Row*>(out + (((size_t)b * S + query) * H + h) * D)[col] = r;
  }
}

// Sixteen CTAs of four warps per SM (at most 32 registers a thread): the more rows in flight,
// the closer the merge's scattered reads come to the memory's bandwidth.
#define MERGE(T, NAME, D)                                                                                     \
  extern "C" __global__ void __launch_bounds__(128, 16)                                                       \
      vmoba_merge_##NAME##_d##D(const T* partial, const float* partial_lse, const uint32_t* pair_slot,         \
                                const uint32_t* row_offsets, const uint32_t* count, uint32_t uniform, T* out, \
                                int rows, int S, int H, int bh0) {                                            \
    merge_rows<T, D>(partial, partial_lse, pair_slot, row_offsets, count, uniform, out, rows, S, H, bh0);     \
  }
MERGE(__nv_bfloat16, bf16, 64)
MERGE(__nv_bfloat16, bf16, 128)
MERGE(__half, f16, 64)
MERGE(__half, f16, 128)

// Queries per CTA of vmoba_scores (eight warps of 32) and chunks per staged block of means.
constexpr int SCORE_ROWS = 256, SCORE_CHUNKS = 32;

// Scores of every chunk for the queries of heads h0.. of batch element b: out[(g * S + query) *
// ld + c] = q . mean of chunk c, for the n chunks of parts ([heads, n, SCORE_PARTS * D], parts
// side by side; vmoba_scores.cuh). vmoba_scores_sm90.cu runs the same product on Hopper. A CTA
// takes 256 queries of one head; each warp keeps its 32 queries' operand fragments in registers
// (loaded once from q) and runs mma.sync over blocks of SCORE_CHUNKS chunks' parts, staged in
// shared memory by cp.async into two buffers (a block's copy overlaps the previous block's
// products). Columns n..ld get zeros.
template <typename T, int D>
__device__ __forceinline__ void chunk_scores(const T* q, long long sb, long long sh, long long ss, int b, int h0,
                                             int S, const T* parts, int n, int ld, float* out) {
  constexpr int KSTEPS = D / 16;
  constexpr int ROW_VECS = SCORE_PARTS * D / 8;  // 16-byte vectors in a chunk's parts
  constexpr int BLOCK = SCORE_CHUNKS * SCORE_PARTS * D;
  extern __shared__ __align__(128) unsigned char score_smem[];
  T* stage = reinterpret_cast<T*>(score_smem);  // [2][SCORE_CHUNKS][SCORE_PARTS * D], swizzled
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = blockIdx.y;
  const T* means = parts + (size_t)g * n * SCORE_PARTS * D;
  auto stage_block = [&](int block) {
    T* dst = stage + (block & 1) * BLOCK;
    for (int i = threadIdx.x; i < SCORE_CHUNKS * ROW_VECS; i += blockDim.x) {
      const int r = i / ROW_VECS, v = i % ROW_VECS, chunk = block * SCORE_CHUNKS + r;
      const bool valid = chunk < n;
      cp_async16(dst + swz<ROW_VECS>(r, v), means + (size_t)(valid ? chunk : 0) * SCORE_PARTS * D + v * VEC, valid);
    }
    cp_async_commit();
  };
  stage_block(0);

  // a[m][k]: the A fragment of query rows row0 + 16m .. + 15, channels 16k .. 16k + 15.
  const T* qh = q + b * sb + (long long)(h0 + g) * sh;
  const int row0 = blockIdx.x * SCORE_ROWS + warp * 32 + (lane >> 2), col0 = (lane & 3) * 2;
  uint32_t a[2][KSTEPS][4];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + 16 * m + 8 * half;
      const uint32_t* src = reinterpret_cast<const uint32_t*>(qh + (long long)min(row, S - 1) * ss + col0);
#pragma unroll
      for (int k = 0; k < KSTEPS; ++k) {
        a[m][k][half] = row < S ? src[8 * k] : 0u;
        a[m][k][half + 2] = row < S ? src[8 * k + 4] : 0u;
      }
    }
  }

  const int blocks = (n + SCORE_CHUNKS - 1) / SCORE_CHUNKS;
  for (int block = 0; block < blocks; ++block) {
    if (block + 1 < blocks) {
      stage_block(block + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* tile = stage + (block & 1) * BLOCK;
    float acc[2][SCORE_CHUNKS / 8][4] = {};
#pragma unroll 1
    for (int part = 0; part < SCORE_PARTS; ++part) {
#pragma unroll
      for (int k = 0; k < KSTEPS; ++k) {
#pragma unroll
        for (int pair = 0; pair < SCORE_CHUNKS / 16; ++pair) {
          // Chunks 16 pair .. + 15, channels 16k .. + 15 of this part: B fragments of two n8 tiles.
          uint32_t bf[4];
          const int r = pair * 16 + (lane >> 4) * 8 + (lane & 7);
          ldmatrix_x4(bf, tile + swz<ROW_VECS>(r, (part * D + 16 * k) / VEC + ((lane >> 3) & 1)));
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            mma16816<T>(acc[m][2 * pair], a[m][k], bf);
            mma16816<T>(acc[m][2 * pair + 1], a[m][k], bf + 2);
          }
        }
      }
    }
    __syncthreads();  // the next iteration refills this buffer
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int t = 0; t < SCORE_CHUNKS / 8; ++t) {
        const int col = block * SCORE_CHUNKS + t * 8 + col0;
        if (col >= ld) continue;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = row0 + 16 * m + 8 * half;
          if (row < S) {
            *reinterpret_cast<float2*>(out + ((size_t)g * S + row) * ld + col) =
                make_float2(acc[m][t][2 * half], acc[m][t][2 * half + 1]);
          }
        }
      }
    }
  }
}

// Chunk means (f32 [rows, D], `len` values) as SCORE_PARTS parts in the inputs' dtype side by
// side ([rows, SCORE_PARTS * D]).
template <typename T>
__device__ __forceinline__ void split_means(const float* means, long long len, int D, T* out) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  const long long row = i / D;
  const int c = (int)(i % D);
  float rest = means[i];
#pragma unroll
  for (int part = 0; part < SCORE_PARTS; ++part) {
    const T x = from_f32<T>(rest);
    out[(row * SCORE_PARTS + part) * D + c] = x;
    rest -= to_f32<T>(x);
  }
}

#define SCORE_KERNELS(T, NAME)                                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2)                                                          \
      vmoba_scores_##NAME##_d64(const T* q, long long sb, long long sh, long long ss, int b, int h0, int S,     \
                                const T* parts, int n, int ld, float* out) {                                    \
    chunk_scores<T, 64>(q, sb, sh, ss, b, h0, S, parts, n, ld, out);                                            \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(256, 2)                                                          \
      vmoba_scores_##NAME##_d128(const T* q, long long sb, long long sh, long long ss, int b, int h0, int S,    \
                                 const T* parts, int n, int ld, float* out) {                                   \
    chunk_scores<T, 128>(q, sb, sh, ss, b, h0, S, parts, n, ld, out);                                           \
  }                                                                                                             \
  extern "C" __global__ void split_means_##NAME(const float* means, long long len, int D, T* out) {            \
    split_means<T>(means, len, D, out);                                                                         \
  }
SCORE_KERNELS(__nv_bfloat16, bf16)
SCORE_KERNELS(__half, f16)

// Launch parameters of the block-sparse attention forward kernels (the Rust side is
// AttnParams in sparse/src/kernel_params.rs), and the plan walk they share:
// key streams, and the gathered copies of query and key/value tiles.
#pragma once
#include <stdint.h>

#include "common.cuh"

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;           // [B, H, S, D] with o_strides (gathered mode: [slots, D], contiguous)
  float* lse;          // [B * H, S] (natural log), or null (gathered mode: [slots])
  long long q_strides[3];  // element strides of q over batch, head, token
  long long k_strides[3];
  long long v_strides[3];
  long long o_strides[3];  // unused in gathered mode
  const uint32_t* q_order;   // slot -> token, [q_orders * S]
  const uint32_t* q_starts;  // query block boundaries in slots, [nqb + 1]
  const uint32_t* k_order;   // slot -> key token, [k_orders * SK]
  const uint32_t* k_starts;
  const uint32_t* offsets;   // CSR over (b * H + h) * nqb + qb
  const uint32_t* indices;   // key blocks
  int b, h, s, sk;           // s query tokens, sk key tokens
  int q_per_head, k_per_head;  // 1 when orders differ per head
  int nqb;
  int uniform_k;     // > 0: every list has this length and `offsets` is unused
  int all_keys;      // > 0: every query block attends to all `all_keys` key blocks
  float scale_log2;  // softmax scale * log2(e)
  // Gathered mode (VMoBA) when non-null: CTA i runs work tile tiles[i] = (batch * head, key
  // block, first slot, queries); `q_order` lists the pairs' query tokens slot by slot, and slot
  // s's output row and LSE are row s of `out` and `lse`. `all_keys` > 0 (key blocks by number).
  // Tiles of no queries (spare entries of a list sized by a bound) do nothing.
  const uint4* tiles;
  int k_natural;  // > 0: the key order is the identity (slots are tokens; no lookups)
};
#include "abi/AttnParams.h"  // checks the layout against sparse/src/kernel_params.rs

// The key tokens of one query block form a stream: the slots of its listed key blocks back to
// back. Key tiles are consecutive windows of BN rows of that stream, so a tile may span several
// small or partial key blocks and only the last tile of a list is partial.
struct KeyStream {
  uint32_t item, end;  // position in `indices` (in the block numbers when `all_keys`)
  uint32_t offset;     // slot offset inside the current key block
};

// Key block number of stream item `item`.
__device__ __forceinline__ uint32_t stream_block(const AttnParams& p, uint32_t item) {
  return p.all_keys > 0 ? item : p.indices[item];
}

// Slots of key block `kb`.
__device__ __forceinline__ int block_slots(const AttnParams& p, uint32_t kb) {
  return (int)(p.k_starts[kb + 1] - p.k_starts[kb]);
}

// Skips empty key blocks, so that a stream with item < end has a row left.
__device__ __forceinline__ KeyStream stream_settle(const AttnParams& p, KeyStream s) {
  while (s.item < s.end && (int)s.offset >= block_slots(p, stream_block(p, s.item))) {
    s.item += 1;
    s.offset = 0;
  }
  return s;
}

// The key stream of list `list` ((b * H + h) * nqb + query block).
__device__ __forceinline__ KeyStream key_stream(const AttnParams& p, size_t list) {
  KeyStream s{0, 0, 0};
  if (p.all_keys > 0) {
    s.end = p.all_keys;
  } else if (p.uniform_k > 0) {
    s.item = (uint32_t)(list * p.uniform_k);
    s.end = s.item + p.uniform_k;
  } else {
    s.item = p.offsets[list];
    s.end = p.offsets[list + 1];
  }
  return stream_settle(p, s);
}

// Moves `s` forward by up to `n` rows; `rows` gets how many it moved over.
__device__ __forceinline__ KeyStream stream_advance(const AttnParams& p, KeyStream s, int n, int& rows) {
  rows = 0;
  while (s.item < s.end && rows < n) {
    const int left = block_slots(p, stream_block(p, s.item)) - (int)s.offset;
    const int take = min(left, n - rows);
    rows += take;
    s.offset += take;
    if (take == left) {
      s.item += 1;
      s.offset = 0;
    }
  }
  return stream_settle(p, s);
}

// True when the tile of `rows` stream rows from `s` is one run of consecutive key slots that
// is either BN long or ends at the last key (`first` gets its first slot), so that with an
// identity key order it can be copied as a box whose rows past the keys read as zeros.
__device__ __forceinline__ bool tile_is_run(const AttnParams& p, KeyStream s, int rows, int bn, int& first) {
  const uint32_t kb = stream_block(p, s.item);
  first = (int)(p.k_starts[kb] + s.offset);
  const int len = (int)p.k_starts[kb + 1] - first;
  return rows <= len && (rows == bn || first + rows == p.sk);
}

// The query rows a CTA runs and the key stream they attend to.
struct QueryTile {
  int b, h, bh;
  const uint32_t* q_ord;  // slot -> query token
  int qs, nq;             // first slot, rows
  KeyStream keys;
};

__device__ __forceinline__ QueryTile query_tile(const AttnParams& p) {
  QueryTile t;
  if (p.tiles != nullptr) {
    const uint4 w = p.tiles[blockIdx.x];
    t.bh = (int)w.x;
    t.q_ord = p.q_order;
    t.qs = (int)w.z;
    t.nq = (int)w.w;
    t.keys = stream_settle(p, KeyStream{w.y, w.y + 1, 0});
  } else {
    const int qb = blockIdx.x;
    t.bh = blockIdx.y;
    t.q_ord = p.q_order + (p.q_per_head ? (size_t)(t.bh % p.h) * p.s : 0);
    t.qs = (int)p.q_starts[qb];
    t.nq = (int)p.q_starts[qb + 1] - t.qs;
    t.keys = key_stream(p, (size_t)t.bh * p.nqb + qb);
  }
  t.b = t.bh / p.h;
  t.h = t.bh % p.h;
  return t;
}

// Where row r of a query tile goes: a row of out[b, h, token, :] (strided), or of the gathered mode's
// partial outputs (in the inputs' dtype); and the index of its log-sum-exp.
template <typename T>
struct RowOut {
  T* row;
  size_t lse_at;

  // Stores columns c and c + 1.
  __device__ __forceinline__ void store2(int c, float a, float b) const {
    *reinterpret_cast<uint32_t*>(row + c) = pack2<T>(a, b);
  }
};

template <typename T, int D>
__device__ __forceinline__ RowOut<T> row_out(const AttnParams& p, const QueryTile& t, int r) {
  if (p.tiles != nullptr) {
    const size_t slot = (size_t)t.qs + r;
    return {reinterpret_cast<T*>(p.out) + slot * D, slot};
  }
  const long long tok = t.q_ord[t.qs + r];
  return {reinterpret_cast<T*>(p.out) + t.b * p.o_strides[0] + t.h * p.o_strides[1] + tok * p.o_strides[2],
          (size_t)t.bh * p.s + tok};
}

// A row's softmax totals from this lane's share `sum` of its sum (the row's four lanes in the
// MMA layout hold the rest) and its maximum `m` (log2 units): 1 / sum for normalising (0 for
// an empty row) and the log-sum-exp in natural log (-inf for an empty row).
struct RowTotals {
  float inv, lse;
};
__device__ __forceinline__ RowTotals row_totals(float m, float sum) {
  sum += __shfl_xor_sync(0xffffffff, sum, 1);
  sum += __shfl_xor_sync(0xffffffff, sum, 2);
  if (sum > 0.f) return {1.f / sum, (m + log2f(sum)) * 0.6931471805599453f};
  return {0.f, -INFINITY};
}

// Finishes row r of a query tile for this lane: sums the row's softmax denominator over the
// four lanes holding the row, then writes the normalised output (`o(dt, e)`: this lane's
// accumulator e of column pair dt) and the log-sum-exp (`m` is the row maximum, log2 domain).
// Every lane calls it (the sum is shuffled); rows past the tile's end write nothing.
template <typename T, int D, typename Acc>
__device__ __forceinline__ void finish_row(const AttnParams& p, const QueryTile& qt, int r, float m, float sum,
                                           Acc o) {
  const int lane = threadIdx.x & 31;
  const RowTotals t = row_totals(m, sum);
  if (r >= qt.nq) return;
  const RowOut<T> dst = row_out<T, D>(p, qt, r);
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) dst.store2(dt * 8 + (lane & 3) * 2, o(dt, 0) * t.inv, o(dt, 1) * t.inv);
  if (p.lse != nullptr && (lane & 3) == 0) p.lse[dst.lse_at] = t.lse;
}

// Key rows each thread copies: rows r0 + j * STEP of a BN-row tile, in one chunk column.
template <int BN, int CH, int THREADS>
struct TileRows {
  static_assert(THREADS % CH == 0 && (BN * CH) % THREADS == 0, "each thread keeps one chunk column");
  static constexpr int STEP = THREADS / CH, PER_THREAD = BN / STEP;
};

// The key tokens of this thread's rows of the tile of `rows` stream rows from `s` (rows past
// the end repeat the last one). Slots are found first, walking across key blocks only when the
// tile leaves the current one, so that the token lookups are independent of each other; an
// identity key order needs no lookups.
template <int BN, int CH, int THREADS>
__device__ __forceinline__ void tile_tokens(const AttnParams& p, KeyStream s, int rows, const uint32_t* k_ord,
                                            uint32_t (&tok)[TileRows<BN, CH, THREADS>::PER_THREAD]) {
  using R = TileRows<BN, CH, THREADS>;
  const int r0 = threadIdx.x / CH;
  uint32_t kb = stream_block(p, s.item);
  int first = (int)(p.k_starts[kb] + s.offset), len = (int)p.k_starts[kb + 1] - first;
  if (rows <= len) {
#pragma unroll
    for (int j = 0; j < R::PER_THREAD; ++j) tok[j] = first + min(r0 + j * R::STEP, rows - 1);
  } else {
    int base = 0;
#pragma unroll
    for (int j = 0; j < R::PER_THREAD; ++j) {
      const int r = min(r0 + j * R::STEP, rows - 1);
      while (r - base >= len) {
        base += len;
        kb = stream_block(p, ++s.item);
        first = (int)p.k_starts[kb];
        len = (int)p.k_starts[kb + 1] - first;
      }
      tok[j] = first + r - base;
    }
  }
  if (p.k_natural <= 0) {
#pragma unroll
    for (int j = 0; j < R::PER_THREAD; ++j) tok[j] = k_ord[tok[j]];
  }
}

// Issues the asynchronous copies of this thread's rows of one K and one V tile from their
// tokens (rows >= `rows` are zero-filled). `off(r, c)` is the byte offset of 16-byte chunk c of
// row r in a tile.
template <typename T, int BN, int CH, int THREADS, typename Off>
__device__ __forceinline__ void copy_kv_tile(const AttnParams& p, const uint32_t (&tok)[TileRows<BN, CH, THREADS>::PER_THREAD],
                                             int rows, const T* kbase, const T* vbase, unsigned char* dk,
                                             unsigned char* dv, Off off) {
  using R = TileRows<BN, CH, THREADS>;
  const int ch = threadIdx.x % CH, r0 = threadIdx.x / CH;
#pragma unroll
  for (int j = 0; j < R::PER_THREAD; ++j) {
    const int r = r0 + j * R::STEP;
    const bool valid = r < rows;
    cp_async16(dk + off(r, ch), kbase + (long long)tok[j] * p.k_strides[2] + ch * 8, valid);
    cp_async16(dv + off(r, ch), vbase + (long long)tok[j] * p.v_strides[2] + ch * 8, valid);
  }
}

// Both of the above: the copies of a K and V tile of `rows` stream rows from `s`.
template <typename T, int BN, int CH, int THREADS, typename Off>
__device__ __forceinline__ void load_kv_tile(const AttnParams& p, KeyStream s, int rows, const uint32_t* k_ord,
                                             const T* kbase, const T* vbase, unsigned char* dk,
                                             unsigned char* dv, Off off) {
  uint32_t tok[TileRows<BN, CH, THREADS>::PER_THREAD];
  tile_tokens<BN, CH, THREADS>(p, s, rows, k_ord, tok);
  copy_kv_tile<T, BN, CH, THREADS>(p, tok, rows, kbase, vbase, dk, dv, off);
}

// Issues the asynchronous copies of a tile of BM rows (`nq` of them real, zeros below) read
// through the token order `ord` from slot `qs` (rows `stride` elements apart), shared by
// THREADS threads of which this is `t`.
template <typename T, int BM, int CH, int THREADS, typename Off>
__device__ __forceinline__ void load_row_tile(long long stride, const uint32_t* ord, int qs, int nq,
                                              const T* base, unsigned char* dst, Off off, int t) {
  for (int i = t; i < BM * CH; i += THREADS) {
    const int r = i / CH, c = i % CH;
    const bool valid = r < nq;
    const T* src = base + (valid ? (long long)ord[qs + r] * stride : 0) + c * 8;
    cp_async16(dst + off(r, c), src, valid);
  }
}

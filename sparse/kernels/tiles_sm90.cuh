// Tiles and tensor-core steps shared by the Hopper (sm_90a) attention kernels: the 128-byte-
// swizzled shared-memory tile layout wgmma reads, the product shapes they issue (SS: both
// operands K-major, or both MN-major, in shared memory; RS: A from registers, B read K-major or
// MN-major from the same tile layout), and the producer warpgroup that fills a ring of column
// tiles from a key stream.
#pragma once
#include <type_traits>

#include "attention_params.cuh"
#include "common.cuh"
#include "sync_sm90.cuh"
#include "tma_sm90.cuh"
#include "wgmma.cuh"

// wg_wait<N> held after the math that produces `after`. ptxas sees no dependence between a
// wgmma wait and the arithmetic before it, and moved the forward's wait for O += P V up to the
// first instruction of the softmax, so that the softmax never overlapped that product; a
// shared-memory store of a value the math produces (one lane per warp, into `sink`, this warp's
// word of a scratch array) is not moved across the wait, and keeps the math before it.
template <int N>
__device__ __forceinline__ void wg_wait_after(float after, float* sink) {
  if ((threadIdx.x & 31) == 0) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(shared_addr(sink)), "f"(after) : "memory");
  }
  wg_wait<N>();
}

// Byte offset of 16-byte chunk `c` (of D/8) of row `r` in a tile of `rows` rows stored as D/64
// column blocks of [rows][128 bytes], each 8-row atom 128-byte swizzled (wgmma's canonical
// layout; tile bases are 1024-byte aligned).
__device__ __forceinline__ int tile_off(int rows, int r, int c) {
  return (c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

// Stores four 8x8 matrices of 16-bit values to shared memory: lanes 8j .. 8j + 7 give the
// addresses of matrix j's rows (16 bytes each), and each lane's r[j] holds its two values of
// matrix j (row lane / 4, columns 2 (lane % 4) and one more), as an accumulator places them.
__device__ __forceinline__ void stmatrix_x4(void* smem, const uint32_t* r) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(shared_addr(smem)),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// One k16 step of C[64 x N] (+)= A B^T, both operands K-major in shared memory.
template <typename T, int N>
__device__ __forceinline__ void mma_ss(float* c, uint64_t a, uint64_t b, int accumulate) {
  static_assert(N == 64 || N == 128, "wgmma shapes of wgmma.cuh");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (N == 128) wgmma_ss_m64n128k16_bf16(c, a, b, accumulate);
    else wgmma_ss_m64n64k16_bf16(c, a, b, accumulate);
  } else {
    if constexpr (N == 128) wgmma_ss_m64n128k16_f16(c, a, b, accumulate);
    else wgmma_ss_m64n64k16_f16(c, a, b, accumulate);
  }
}

// One k16 step of C[64 x N] += A B, A in registers, B MN-major in shared memory.
template <typename T, int N>
__device__ __forceinline__ void mma_rs(float* c, const uint32_t* a, uint64_t b) {
  static_assert(N == 64 || N == 128, "wgmma shapes of wgmma.cuh");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (N == 128) wgmma_rs_m64n128k16_bf16(c, a, b, 1);
    else wgmma_rs_m64n64k16_bf16(c, a, b, 1);
  } else {
    if constexpr (N == 128) wgmma_rs_m64n128k16_f16(c, a, b, 1);
    else wgmma_rs_m64n64k16_f16(c, a, b, 1);
  }
}

// One k16 step of C[64 x N] (+)= A B^T, A in registers, B K-major in shared memory.
template <typename T, int N>
__device__ __forceinline__ void mma_rs_kmajor(float* c, const uint32_t* a, uint64_t b, int accumulate) {
  static_assert(N == 64, "wgmma shapes of wgmma.cuh");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) wgmma_rs_kmajor_m64n64k16_bf16(c, a, b, accumulate);
  else wgmma_rs_kmajor_m64n64k16_f16(c, a, b, accumulate);
}

// One k16 step of C[64 x 64] (+)= A B, both operands MN-major in shared memory (tiles whose
// rows run along the contraction, as `mma_rs`'s B).
template <typename T>
__device__ __forceinline__ void mma_ss_mn(float* c, uint64_t a, uint64_t b, int accumulate) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) wgmma_ss_mn_m64n64k16_bf16(c, a, b, accumulate);
  else wgmma_ss_mn_m64n64k16_f16(c, a, b, accumulate);
}

// C[64 x BN] = A B^T over the head dim D: A is 64 rows starting at `a` of a tile of `a_rows`
// rows, B a tile of BN rows; 16 channels per wgmma (32 bytes inside a swizzle atom). Issues
// only: the caller fences and commits.
template <typename T, int D, int BN>
__device__ __forceinline__ void mma_ss_tile(float* c, const unsigned char* a, int a_rows, const unsigned char* b) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int block = kk >> 2, within = (kk & 3) * 32;
    const uint64_t da = smem_desc(a + block * a_rows * 128 + within, 16, 1024);
    const uint64_t db = smem_desc(b + block * BN * 128 + within, 16, 1024);
    mma_ss<T, BN>(c, da, db, kk > 0);
  }
}

// C[64 x BN] (+)= A B^T over the head dim D with A's 64 rows in registers
// (`load_a_rows_global`): B is read once per k16 step and A not at all, which halves the
// shared-memory reads of a 64-column product. Adds to C where `accumulate`. Issues only.
template <typename T, int D, int BN>
__device__ __forceinline__ void mma_rs_kmajor_tile(float* c, const uint32_t (&a)[D / 16][4], const unsigned char* b,
                                                   bool accumulate = false) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int block = kk >> 2, within = (kk & 3) * 32;
    mma_rs_kmajor<T, BN>(c, a[kk], smem_desc(b + block * BN * 128 + within, 16, 1024), accumulate || kk > 0);
  }
}

// Warpgroup rows [row0, row0 + 64) of the `nq` rows at tokens `ord[r]` (or `r` where `ord` is
// null) of `base` (`stride` elements apart; rows from `nq` on are zeros) as wgmma A fragments,
// one k16 step per entry, read from global memory four bytes per load: warp w's rows 16w +
// lane / 4 and 8 below it, channels 2 (lane % 4) and 8 to the right of them.
template <typename T, int D>
__device__ __forceinline__ void load_a_rows_global(uint32_t (&a)[D / 16][4], const T* base, long long stride,
                                                   const uint32_t* ord, int nq, int row0) {
  const int lane = threadIdx.x & 31, r = row0 + ((threadIdx.x >> 5) & 3) * 16 + (lane >> 2);
  const uint32_t* rows[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = r + 8 * h;
    rows[h] = row < nq ? reinterpret_cast<const uint32_t*>(base + (long long)(ord != nullptr ? ord[row] : row) * stride)
                       : nullptr;
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t* row = rows[i & 1];
      a[kk][i] = row != nullptr ? row[8 * kk + 4 * (i >> 1) + (lane & 3)] : 0u;
    }
  }
}

// C[64 x D] += A B over a tile's BN rows: A (64 x BN) as wgmma A fragments in registers, 16
// rows per wgmma, B a tile of BN rows of D channels. Issues only.
template <typename T, int D, int BN>
__device__ __forceinline__ void mma_rs_tile(float* c, const uint32_t (&a)[BN / 16][4], const unsigned char* b) {
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) mma_rs<T, D>(c, a[t], smem_desc(b + t * 16 * 128, BN * 128, 1024));
}

// Accumulator values `c` (a 64 x BN product's layout) packed to T as wgmma A fragments.
template <typename T, int BN>
__device__ __forceinline__ void pack_a(uint32_t (&a)[BN / 16][4], const float* c) {
#pragma unroll
  for (int t = 0; t < BN / 16; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[t][i] = pack2<T>(c[8 * t + 2 * i], c[8 * t + 2 * i + 1]);
  }
}

// Keeps the registers of an RS wgmma's A operand alive (unreused) until this point: the tensor
// cores read them after the instruction has issued.
template <int N>
__device__ __forceinline__ void wg_keep(const uint32_t (&a)[N][4]) {
#pragma unroll
  for (int t = 0; t < N; ++t) asm volatile("" ::"r"(a[t][0]), "r"(a[t][1]), "r"(a[t][2]), "r"(a[t][3]) : "memory");
}

// Named barrier of the producer warpgroup's 128 threads (the kernels' own barriers are 1-3).
constexpr int BAR_PRODUCER = 4;

// The most items a staged stream holds (8 KiB of shared memory; VSA's cube lists hold 78 items at
// 480p and about 180 at 720p); longer streams walk the plan in global memory.
constexpr int STAGED_CAP = 1024;

// A key stream staged in shared memory by the producer (streams of at most STAGED_CAP items):
// where each item starts in the stream (`pos`; `pos[n]` is the stream's length) and its first
// slot, so that a row's slot is found in shared memory instead of by a walk through the plan in
// global memory (two dependent loads per key block); and the tokens of the rows of the tiles in
// flight, one row looked up per thread and shared through `row_tok` (two tiles' worth).
template <int BN> struct StagedStream {
  uint32_t pos[STAGED_CAP + 1];
  uint32_t first[STAGED_CAP];
  uint32_t row_tok[2][BN];
  uint32_t warp_sum[4];
  int n;
};

// Stages the stream `s` (fresh: offset 0) into `st`, all 128 producer threads taking part;
// false (nothing staged) where it has more than STAGED_CAP items.
template <int BN>
__device__ __forceinline__ bool stage_stream(const AttnParams& p, KeyStream s, StagedStream<BN>& st) {
  const int n = (int)(s.end - s.item), t = threadIdx.x, lane = t & 31, warp = t >> 5;
  if (n > STAGED_CAP) return false;
  uint32_t carry = 0;  // rows of the items before this chunk of 128
  for (int base = 0; base < n; base += 128) {
    const int i = base + t;
    uint32_t first = 0, len = 0;
    if (i < n) {
      const uint32_t kb = stream_block(p, s.item + i);
      first = p.k_starts[kb];
      len = p.k_starts[kb + 1] - first;
    }
    uint32_t incl = len;  // inclusive prefix sum over the warp
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const uint32_t v = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += v;
    }
    if (lane == 31) st.warp_sum[warp] = incl;
    named_sync(BAR_PRODUCER, 128);
    uint32_t before = carry, chunk = 0;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      if (w < warp) before += st.warp_sum[w];
      chunk += st.warp_sum[w];
    }
    if (i < n) {
      st.pos[i] = before + incl - len;
      st.first[i] = first;
    }
    carry += chunk;
    named_sync(BAR_PRODUCER, 128);  // warp_sum is reused
  }
  if (t == 0) {
    st.pos[n] = carry;
    st.n = n;
  }
  named_sync(BAR_PRODUCER, 128);
  return true;
}

// The CTA's staged stream for 64-key tiles (a static shared allocation only in the kernels that
// call it).
template <int BN>
__device__ __forceinline__ StagedStream<BN>* staged_storage() {
  __shared__ StagedStream<BN> st;
  return &st;
}

// The producer warpgroup: copies the stream `cur`'s tiles of BN rows of two tensors (A and B,
// read through the token order `ord`) into a ring of STAGES buffers each, waiting for the
// consumers to release a buffer before refilling it, and signals each through `full`; the
// tile's row count goes to `tile_rows` (negated for the stream's last tile). `extra(stage, tok,
// rows)` may issue more asynchronous copies of the tile (this thread's row tokens `tok`),
// which the same signal covers. A tile's tokens are looked up before the wait.
//
// Where the stream fits `staged` (when given; producers without bulk copies), it is staged there
// first and each row's token is looked up by one thread; otherwise every thread walks the plan
// for its own rows, finding the next tile before the wait.
//
// With BULK and `tma.maps` enabled, a tile of BN contiguous tokens (or fewer, ending at the
// last token) is copied by thread 0 through the tensor maps instead (no `extra` copies then);
// the other threads only arrive.
template <typename T, int D, int BN, int STAGES, bool BULK = false, typename Extra>
__device__ __forceinline__ void produce_tiles(const AttnParams& p, KeyStream cur, const uint32_t* ord, const T* abase,
                                              const T* bbase, unsigned char* sA, unsigned char* sB, int* tile_rows,
                                              uint64_t* full, uint64_t* empty, Extra extra, KvTma tma = {nullptr, 0, 0},
                                              StagedStream<BN>* staged = nullptr) {
  const bool maps = BULK && tma.maps->enabled;
  constexpr int CH = D / 8, TILE_BYTES = BN * D * 2;
  using R = TileRows<BN, CH, 128>;
  auto off = [](int r, int c) { return tile_off(BN, r, c); };
  // Fills ring entry j with the tile of `rows` rows whose tokens (this thread's rows) are `tok`,
  // by TMA from token `run` where that is not negative.
  auto fill = [&](int j, const uint32_t (&tok)[R::PER_THREAD], int rows, int run, bool last) {
    const int stage = j % STAGES;
    if (j >= STAGES) mbar_wait(&empty[stage], ((j / STAGES) & 1) ^ 1);
    if (BULK && run >= 0) {
      if (threadIdx.x == 0) tma.load<D, BN>(run, sA + stage * TILE_BYTES, sB + stage * TILE_BYTES, &full[stage]);
      else mbar_arrive(&full[stage]);
    } else {
      copy_kv_tile<T, BN, CH, 128>(p, tok, rows, abase, bbase, sA + stage * TILE_BYTES, sB + stage * TILE_BYTES, off);
      extra(stage, tok, rows);
      mbar_arrive_after_copies(&full[stage]);
    }
    if (threadIdx.x == 0) {
      tile_rows[stage] = last ? -rows : rows;
      mbar_arrive(&full[stage]);
    }
  };
  if (!BULK && staged != nullptr && stage_stream(p, cur, *staged)) {
    StagedStream<BN>& st = *staged;
    const uint32_t total = st.pos[st.n];
    // Row lookups run a tile ahead: thread r (< BN) finds row r of the next tile, walking on
    // from the item that held its row of this one, and issues the token load, which lands while
    // this tile's copies go out.
    const int r = threadIdx.x;
    int item = 0;
    auto lookup = [&](int j) {
      const uint32_t pos = min((uint32_t)(j * BN + r), total - 1);  // rows past the end repeat the last
      while (st.pos[item + 1] <= pos) ++item;                         // empty items start where the next does
      const uint32_t slot = st.first[item] + pos - st.pos[item];
      return p.k_natural > 0 ? slot : ord[slot];
    };
    uint32_t next = r < BN && total > 0 ? lookup(0) : 0;
    for (int j = 0; (uint32_t)j * BN < total; ++j) {
      const uint32_t pos0 = (uint32_t)j * BN;
      uint32_t* row_tok = st.row_tok[j & 1];
      if (r < BN) {
        row_tok[r] = next;
        if (pos0 + BN < total) next = lookup(j + 1);
      }
      named_sync(BAR_PRODUCER, 128);
      uint32_t tok[R::PER_THREAD];
#pragma unroll
      for (int k = 0; k < R::PER_THREAD; ++k) tok[k] = row_tok[threadIdx.x / CH + k * R::STEP];
      fill(j, tok, (int)min((uint32_t)BN, total - pos0), -1, pos0 + BN >= total);
    }
  } else {
    int rows = 0;
    KeyStream nxt = stream_advance(p, cur, BN, rows);
    for (int j = 0; cur.item < cur.end; ++j) {
      uint32_t tok[R::PER_THREAD];
      tile_tokens<BN, CH, 128>(p, cur, rows, ord, tok);
      int next_rows = 0;
      const KeyStream after = stream_advance(p, nxt, BN, next_rows);
      int first = 0;
      fill(j, tok, rows, maps && tile_is_run(p, cur, rows, BN, first) ? first : -1, nxt.item >= nxt.end);
      cur = nxt;
      nxt = after;
      rows = next_rows;
    }
  }
  cp_async_wait<0>();
}

// Launch parameters of the block-sparse attention backward kernels (the Rust side is BwdParams
// in sparse/src/kernel_params.rs) and what the warp-MMA passes (attention_bwd.cu) and the
// Hopper ones (attention_bwd_sm90.cu) share: both run one pass per gradient side, a CTA's rows
// of one side against column tiles of the other, and write the rows they own.
#pragma once
#include <stdint.h>

#include <type_traits>

#include "attention_params.cuh"

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
  void* dq;            // [B, H, S, D]: the inputs' type, or f32 where dq is added by atomics
  void* dk;            // [B, H, SK, D], likewise
  void* dv;
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
// Rows per CTA of both passes (BWD_ROWS in sparse/src/cuda.rs).
constexpr int BWD_ROWS = 64;

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

// The rows a CTA runs: blockIdx.y is (batch * H + head), blockIdx.x is row block `blk` times
// row_chunks plus a chunk of `parts` x BWD_ROWS rows; part `part` of the chunk is `nr` slots
// from `first` of the row side's token order `ord` (`nr` <= 0: past the block's end).
struct RowChunk {
  int b, h, bh;
  const uint32_t* ord;
  int first, nr;
  int blk;
};

template <bool KV>
__device__ __forceinline__ RowChunk row_chunk(const BwdParams& p, int part = 0, int parts = 1) {
  RowChunk r;
  r.bh = blockIdx.y;
  r.b = r.bh / p.h;
  r.h = r.bh % p.h;
  r.blk = blockIdx.x / p.row_chunks;
  const uint32_t* starts = KV ? p.k_starts : p.q_starts;
  r.first = (int)starts[r.blk] + ((blockIdx.x % p.row_chunks) * parts + part) * BWD_ROWS;
  r.nr = min(BWD_ROWS, (int)starts[r.blk + 1] - r.first);
  r.ord = KV ? p.k_order + (p.k_per_head ? (size_t)r.h * p.sk : 0)
             : p.q_order + (p.q_per_head ? (size_t)r.h * p.s : 0);
  return r;
}

// The column tokens' order of a pass (queries for dk/dv, keys for dq).
template <bool KV>
__device__ __forceinline__ const uint32_t* column_order(const BwdParams& p, int h) {
  return KV ? p.q_order + (p.q_per_head ? (size_t)h * p.s : 0) : p.k_order + (p.k_per_head ? (size_t)h * p.sk : 0);
}

// Base of tensor `t` (element strides `st`) at batch b, head h.
template <typename T>
__device__ __forceinline__ const T* head_base(const void* t, const long long* st, int b, int h) {
  return reinterpret_cast<const T*>(t) + b * st[0] + h * st[1];
}

// Stores a row's gradient values for channels c and c + 1 at `at`: an f32 pair, or a packed pair
// of the inputs' type.
template <typename G>
__device__ __forceinline__ void store_grad2(G* at, float a, float b) {
  if constexpr (std::is_same<G, float>::value) {
    *reinterpret_cast<float2*>(at) = make_float2(a, b);
  } else {
    *reinterpret_cast<uint32_t*>(at) = pack2<G>(a, b);
  }
}

// Writes this lane's share of a 64-row chunk's gradients (16 rows per warp) in natural token
// order: rows warp * 16 + lane / 4 (+ 8) are slots `first + r` of `ord` (the first `nr` real),
// acc1 (scaled by `scale`) goes to g1 and, in the dk/dv pass, acc2 to g2. Accumulators are in
// the MMA layout: acc[4 * dt + 2 * half + e] holds row half, channel 8 dt + 2 (lane % 4) + e.
template <typename G, int D, bool KV>
__device__ __forceinline__ void store_row_grads(G* g1, G* g2, const float* acc1, const float* acc2, float scale,
                                                const uint32_t* ord, int first, int nr) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warp * 16 + (lane >> 2) + half * 8;
    if (r >= nr) continue;
    const size_t at = (size_t)ord[first + r] * D + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int i = 4 * dt + 2 * half;
      store_grad2(g1 + at + dt * 8, acc1[i] * scale, acc1[i + 1] * scale);
      if (KV) store_grad2(g2 + at + dt * 8, acc2[i], acc2[i + 1]);
    }
  }
}

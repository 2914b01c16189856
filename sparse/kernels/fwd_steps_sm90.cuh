// The consumer steps of the Hopper (sm_90a) forward kernels (attention_fwd_sm90.cu and
// vmoba_sm90.cu): a consumer warpgroup's 64 query rows, the two products it issues per key tile,
// the turns two consumers take on the tensor cores, and the register split between the
// producer warpgroup and the consumers.
#pragma once
#include "tiles_sm90.cuh"

// Named barriers: the consumers' query tile is in shared memory; consumer c's turn to issue.
constexpr int BAR_Q_READY = 1, BAR_TURN = 2;

// Consumer c's 64 query rows: in shared memory, or for 64-key tiles in registers, read straight
// from global memory (an SS product of 64 columns reads twice the shared memory per flop that a
// 128-column one does, and the shared memory a query tile would take holds a third K/V stage).
template <int D, int BN> struct QueryRows {
  static constexpr bool IN_REGS = BN == 64;
  const unsigned char* smem;  // the CTA's query tile (null in registers)
  uint32_t frag[IN_REGS ? D / 16 : 1][4];
};

// Issues S = Q K^T for consumer c's 64 rows as one commit group.
template <typename T, int D, int BM, int BN>
__device__ __forceinline__ void issue_qk(float* s, const QueryRows<D, BN>& q, const unsigned char* tk, int c) {
  wg_fence();
  if constexpr (QueryRows<D, BN>::IN_REGS) mma_rs_kmajor_tile<T, D, BN>(s, q.frag, tk);
  else mma_ss_tile<T, D, BN>(s, q.smem + c * 64 * 128, BM, tk);
  wg_commit();
}

// Issues O += P V (P's register layout is wgmma's A layout) as one commit group.
template <typename T, int D, int BN>
__device__ __forceinline__ void issue_pv(float* o, const uint32_t (&a)[BN / 16][4], const unsigned char* tv) {
  wg_fence();
  mma_rs_tile<T, D, BN>(o, a, tv);
  wg_commit();
}

// Consumer c's turn to issue wgmmas (two consumers alternate), and the end of it: the other
// consumer's turn, except after consumer 1's last issue, so that every arrival is waited for.
template <int WG>
__device__ __forceinline__ void turn_begin(int c) {
  if constexpr (WG == 2) named_sync(BAR_TURN + c, 256);
}
template <int WG>
__device__ __forceinline__ void turn_end(int c, bool more) {
  if constexpr (WG == 2) {
    if (c == 0 || more) named_arrive(BAR_TURN + (c ^ 1), 256);
  }
}

// Registers per thread at launch (the launch bounds' share of the register file), and after
// the producer hands its surplus to the consumers (one consumer holds its query rows too).
template <int WG> struct RegisterSplit {
  static constexpr int LAUNCH = WG == 2 ? 168 : 128, PRODUCER = WG == 2 ? 88 : 56;
  static constexpr int CONSUMER = LAUNCH + (LAUNCH - PRODUCER) / WG;
};

// Normalises consumer c's 64 rows of accumulators `o` (row maxima `m`, sums `l`) and writes
// them (and their log-sum-exp) in natural token order, or to their pairs.
template <typename T, int D>
__device__ __forceinline__ void write_rows(const AttnParams& p, const QueryTile& qt, int c, const float* o,
                                           const float* m, const float* l) {
  const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    finish_row<T, D>(p, qt, c * 64 + warp * 16 + (lane >> 2) + half * 8, m[half], l[half],
                     [&](int dt, int e) { return o[4 * dt + half * 2 + e]; });
  }
}

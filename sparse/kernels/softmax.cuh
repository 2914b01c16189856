// The online softmax of the forward kernels, on MMA accumulator fragments: mma.sync's m16n8
// tiles and wgmma's m64 accumulators give a thread the same places, so both kernels share it.
// A thread's scores are s[4 * chunk + e] = row lane/4 (+8 for e >= 2), column
// 8 * chunk + 2 * (lane % 4) + (e & 1); its output accumulators o[4 * chunk + e] likewise.
#pragma once
#include "common.cuh"

// Online softmax of one S tile of BN keys in the log2 domain. Keys past the tile's `rows` are
// masked, the scale is folded into the exponent's FMA; `s` becomes P, the row maxima `m` and
// sums `l` are updated, and `alpha` gets the factors by which O must be rescaled.
template <int BN>
__device__ __forceinline__ void softmax_tile(float* s, int rows, float scale_log2, float* m, float* l, float* alpha) {
  const int lane = threadIdx.x & 31;
  if (rows < BN) {
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      const int key = fragment_column(i, lane);
      s[i] = key < rows ? s[i] : -INFINITY;
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + half * 2], s[4 * nt + half * 2 + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    const float m_new = fmaxf(m[half], mx * scale_log2);
    const float base = m_new == -INFINITY ? 0.f : m_new;
    alpha[half] = exp2f(m[half] - base);
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pr = exp2f(fmaf(s[4 * nt + half * 2 + e], scale_log2, -base));
        s[4 * nt + half * 2 + e] = pr;
        sum += pr;
      }
    }
    l[half] = l[half] * alpha[half] + sum;
    m[half] = m_new;
  }
}

// Rescales O's rows by `alpha`; once the row maxima settle, whole warps skip it.
template <int D>
__device__ __forceinline__ void rescale(float* o, const float* alpha) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (__any_sync(0xffffffff, alpha[half] != 1.f)) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[4 * dt + half * 2] *= alpha[half];
        o[4 * dt + half * 2 + 1] *= alpha[half];
      }
    }
  }
}


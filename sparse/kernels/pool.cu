// Mean of each block's tokens, per (batch, head): out[(b*H + h) * nb + block][d] (f32) for
// x[b, h, token, d] read through a shared token order. One CTA per (block, batch*head);
// threads run over channels, so reads of a token row are coalesced.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void block_mean(const T* x, long long sb, long long sh, long long ss, const uint32_t* order,
                                           const uint32_t* starts, float* out, int H, int nb, int D) {
  const int block = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const T* base = x + b * sb + h * sh;
  const uint32_t beg = starts[block], end = starts[block + 1];
  const float inv = 1.f / (float)(end - beg);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (uint32_t s = beg; s < end; ++s) acc += to_f32<T>(base[(long long)order[s] * ss + d]);
    out[((size_t)bh * nb + block) * D + d] = acc * inv;
  }
}

#define BLOCK_MEAN(T, NAME)                                                                                     \
  extern "C" __global__ void block_mean_##NAME(const T* x, long long sb, long long sh, long long ss,            \
                                               const uint32_t* order, const uint32_t* starts, float* out, int H, \
                                               int nb, int D) {                                                 \
    block_mean<T>(x, sb, sh, ss, order, starts, out, H, nb, D);                                                 \
  }
BLOCK_MEAN(__nv_bfloat16, bf16)
BLOCK_MEAN(__half, f16)
BLOCK_MEAN(float, f32)

// Per-block statistics of token rows and their way back to tokens:
// - block_mean_*: mean of each block's tokens, per (batch, head): out[(b*H + h) * nb + block][d]
//   (f32) for x[b, h, token, d] read through a shared token order. One CTA per (block,
//   batch*head) of D x L threads: thread (d, l) sums every L-th token of the block in channel d
//   (a token row's reads are coalesced), then the L partial sums are added in a fixed order, so
//   the result does not depend on scheduling.
// - gated_add_*: VSA's output, out = fine + gate * coarse[block of token], summed in f32, with
//   `out` written [B, S, H, D]; each thread moves 8 channels (16-byte loads and stores).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void block_mean(const T* x, long long sb, long long sh, long long ss, const uint32_t* order,
                                           const uint32_t* starts, float* out, int H, int nb, int D) {
  __shared__ float partial[1024];
  const int block = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int d = threadIdx.x, lane = threadIdx.y, lanes = blockDim.y;
  const T* base = x + b * sb + h * sh;
  const uint32_t beg = starts[block], end = starts[block + 1];
  float acc = 0.f;
  for (uint32_t s = beg + lane; s < end; s += lanes) acc += to_f32<T>(base[(long long)order[s] * ss + d]);
  partial[lane * D + d] = acc;
  __syncthreads();
  if (lane == 0) {
    float sum = 0.f;
    for (int l = 0; l < lanes; ++l) sum += partial[l * D + d];
    out[((size_t)bh * nb + block) * D + d] = sum / (float)(end - beg);
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

template <typename T>
__device__ __forceinline__ void gated_add(const T* fine, long long fb, long long fh, long long fs, const T* gate,
                                          long long gb, long long gh, long long gs, const float* coarse,
                                          const uint32_t* block_of, T* out, int S, int H, int nb, int D,
                                          long long vectors) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const int per_row = D / VEC;
  const int c = (int)(i % per_row) * VEC;
  long long row = i / per_row;  // (b * S + s) * H + h
  const int h = (int)(row % H);
  row /= H;
  const int s = (int)(row % S), b = (int)(row / S);
  float f[VEC], g[VEC], cv[VEC];
  load8(fine + b * fb + h * fh + s * fs + c, f);
  load8(gate + b * gb + h * gh + s * gs + c, g);
  load8(coarse + (((size_t)b * H + h) * nb + block_of[s]) * D + c, cv);
#pragma unroll
  for (int k = 0; k < VEC; ++k) f[k] += g[k] * cv[k];
  store8(out + (((size_t)b * S + s) * H + h) * D + c, f);
}

#define GATED_ADD(T, NAME)                                                                                    \
  extern "C" __global__ void gated_add_##NAME(const T* fine, long long fb, long long fh, long long fs,        \
                                              const T* gate, long long gb, long long gh, long long gs,        \
                                              const float* coarse, const uint32_t* block_of, T* out, int S,   \
                                              int H, int nb, int D, long long vectors) {                       \
    gated_add<T>(fine, fb, fh, fs, gate, gb, gh, gs, coarse, block_of, out, S, H, nb, D, vectors);            \
  }
GATED_ADD(__nv_bfloat16, bf16)
GATED_ADD(__half, f16)

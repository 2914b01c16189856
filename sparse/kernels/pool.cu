// Per-block statistics of token rows and their way back to tokens:
// - block_reduce_*: sum or mean of each block's tokens (of x, or of x * y), per (batch, head):
//   out[(b*H + h) * nb + block][d] (f32) for x[b, h, token, d] read through a shared token
//   order. One CTA per (block, batch*head) of (D / V) x L threads: thread (c, l) sums every
//   L-th token of the block in channels c * V .. c * V + V - 1 (a token row's reads are
//   coalesced; block_reduce_vec_* moves V = 8 channels per 16-byte load, block_reduce_* one),
//   then the L partial sums are added in a fixed order, so the result does not depend on
//   scheduling.
// - spread_blocks_*: each token's row of its block (the backward of the means), written or
//   added in place.
// - gated_add_*: VSA's output, out = fine + gate * coarse[block of token] (fine may be null:
//   zero), summed in f32, with `out` written [B, S, H, D] when `out_bshd`, else [B, H, S, D];
//   `gate_bshd`, where not null, gets a copy of gate written [B, S, H, D] (the backward hands
//   its output gradient on to a [B, S, H, D] fine this way); each thread moves 8 channels
//   (16-byte loads and stores).
#include "common.cuh"

// V elements at `p` as floats (V = 8: one 16-byte load).
template <typename T, int V>
__device__ __forceinline__ void load_channels(const T* p, float* f) {
  if constexpr (V == VEC) {
    load8(p, f);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = to_f32<T>(p[k]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void block_reduce(const T* x, long long sb, long long sh, long long ss, const T* y,
                                             long long yb, long long yh, long long ys, int mean,
                                             const uint32_t* order, const uint32_t* starts, float* out, int H, int nb,
                                             int D) {
  __shared__ float partial[8192];  // L x D partial sums (the launch keeps L * D within)
  const int block = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int c = threadIdx.x * V, lane = threadIdx.y, lanes = blockDim.y;
  const T* xb = x + b * sb + h * sh;
  const T* yb_ = y != nullptr ? y + b * yb + h * yh : nullptr;
  const uint32_t beg = starts[block], end = starts[block + 1];
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0.f;
  for (uint32_t s = beg + lane; s < end; s += lanes) {
    const long long t = order[s];
    float v[V];
    load_channels<T, V>(xb + t * ss + c, v);
    if (yb_ != nullptr) {
      float w[V];
      load_channels<T, V>(yb_ + t * ys + c, w);
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += v[k] * w[k];
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) partial[lane * D + c + k] = acc[k];
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float sum = 0.f;
      for (int l = 0; l < lanes; ++l) sum += partial[l * D + c + k];
      out[((size_t)bh * nb + block) * D + c + k] = mean ? sum / (float)(end - beg) : sum;
    }
  }
}

// Sum (mean when `mean`) over each block of x, or of x * y when y is not null: one channel per
// thread, or (vec) eight, for rows that start 16-byte aligned.
#define BLOCK_REDUCE(T, NAME)                                                                                   \
  extern "C" __global__ void block_reduce_##NAME(const T* x, long long sb, long long sh, long long ss,         \
                                                 const T* y, long long yb, long long yh, long long ys,         \
                                                 int mean, const uint32_t* order, const uint32_t* starts,      \
                                                 float* out, int H, int nb, int D) {                           \
    block_reduce<T, 1>(x, sb, sh, ss, y, yb, yh, ys, mean, order, starts, out, H, nb, D);                      \
  }                                                                                                             \
  extern "C" __global__ void block_reduce_vec_##NAME(const T* x, long long sb, long long sh, long long ss,     \
                                                     const T* y, long long yb, long long yh, long long ys,     \
                                                     int mean, const uint32_t* order, const uint32_t* starts,  \
                                                     float* out, int H, int nb, int D) {                       \
    block_reduce<T, VEC>(x, sb, sh, ss, y, yb, yh, ys, mean, order, starts, out, H, nb, D);                    \
  }
BLOCK_REDUCE(__nv_bfloat16, bf16)
BLOCK_REDUCE(__half, f16)
BLOCK_REDUCE(float, f32)

// Each token's row of its block: out[b, h, t, :] (T, [B, H, S, D] contiguous) =
// x[b, h, block_of[t], :] (f32 [B, H, nb, D]), divided by the block's length when `mean` (the
// backward of block means), or added to what `out` holds when `accumulate`. One thread per 8
// channels.
template <typename T>
__device__ __forceinline__ void spread_blocks(const float* x, const uint32_t* block_of, const uint32_t* starts,
                                              int mean, int accumulate, T* out, int S, int nb, int D,
                                              long long vectors) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const int per_row = D / VEC;
  const int c = (int)(i % per_row) * VEC;
  const long long row = i / per_row;  // bh * S + t
  const int t = (int)(row % S);
  const long long bh = row / S;
  const uint32_t block = block_of[t];
  float v[VEC];
  load8(x + ((size_t)bh * nb + block) * D + c, v);
  if (mean) {
    const float inv = 1.f / (float)(starts[block + 1] - starts[block]);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] *= inv;
  }
  if (accumulate) {
    float held[VEC];
    load8(out + row * D + c, held);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] += held[k];
  }
  store8(out + row * D + c, v);
}

#define SPREAD_BLOCKS(T, NAME)                                                                                \
  extern "C" __global__ void spread_blocks_##NAME(const float* x, const uint32_t* block_of,                   \
                                                  const uint32_t* starts, int mean, int accumulate, T* out,    \
                                                  int S, int nb, int D, long long vectors) {                   \
    spread_blocks<T>(x, block_of, starts, mean, accumulate, out, S, nb, D, vectors);                           \
  }
SPREAD_BLOCKS(__nv_bfloat16, bf16)
SPREAD_BLOCKS(__half, f16)
SPREAD_BLOCKS(float, f32)

template <typename T>
__device__ __forceinline__ void gated_add(const T* fine, long long fb, long long fh, long long fs, const T* gate,
                                          long long gb, long long gh, long long gs, const float* coarse,
                                          const uint32_t* block_of, T* out, int out_bshd, T* gate_bshd, int S,
                                          int H, int nb, int D, long long vectors) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const int per_row = D / VEC;
  const int c = (int)(i % per_row) * VEC;
  const long long row = i / per_row;  // (b * S + s) * H + h, or (b * H + h) * S + s
  int b, h, s;
  if (out_bshd) {
    h = (int)(row % H);
    s = (int)(row / H % S);
    b = (int)(row / H / S);
  } else {
    s = (int)(row % S);
    h = (int)(row / S % H);
    b = (int)(row / S / H);
  }
  float f[VEC] = {0.f}, g[VEC], cv[VEC];
  if (fine != nullptr) load8(fine + b * fb + h * fh + s * fs + c, f);
  load8(gate + b * gb + h * gh + s * gs + c, g);
  load8(coarse + (((size_t)b * H + h) * nb + block_of[s]) * D + c, cv);
  const size_t bshd = (((size_t)b * S + s) * H + h) * D + c;
  if (gate_bshd != nullptr) store8(gate_bshd + bshd, g);
#pragma unroll
  for (int k = 0; k < VEC; ++k) f[k] += g[k] * cv[k];
  store8(out + (out_bshd ? bshd : (size_t)row * D + c), f);
}

#define GATED_ADD(T, NAME)                                                                                    \
  extern "C" __global__ void gated_add_##NAME(const T* fine, long long fb, long long fh, long long fs,        \
                                              const T* gate, long long gb, long long gh, long long gs,        \
                                              const float* coarse, const uint32_t* block_of, T* out,           \
                                              int out_bshd, T* gate_bshd, int S, int H, int nb, int D,         \
                                              long long vectors) {                                             \
    gated_add<T>(fine, fb, fh, fs, gate, gb, gh, gs, coarse, block_of, out, out_bshd, gate_bshd, S, H, nb, D,  \
                 vectors);                                                                                     \
  }
GATED_ADD(__nv_bfloat16, bf16)
GATED_ADD(__half, f16)

// Memory-bound passes over channels-last frames, one 8-channel vector per thread (C % 8 == 0,
// operands 16-byte aligned): a convolution's output filled with its bias, plus a residual where
// one is given, and nearest-neighbour 2x upsampling.
#include "vdit/convert.cuh"

// out[p][c] = bias[c] (+ residual[p][c]) over `vectors` vectors of rows of C channels.
template <typename T>
__device__ __forceinline__ void bias_fill(const T* bias, const T* residual, T* out, long long vectors, int C) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  float v[VEC];
  load8(bias + (i * VEC) % C, v);
  if (residual != nullptr) {
    float r[VEC];
    load8(residual + i * VEC, r);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] += r[e];
  }
  store8(out + i * VEC, v);
}

// Images [n, H, W, C] to [n, 2H, 2W, C], each input pixel's vector written to its 2x2 block;
// `vectors` = n * H * W * C / 8.
template <typename T>
__device__ __forceinline__ void upsample2x(const T* in, T* out, long long vectors, int H, int W, int C) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= vectors) return;
  const int per_pixel = C / VEC;
  const int c = (int)(i % per_pixel) * VEC;
  long long p = i / per_pixel;
  const int x = (int)(p % W);
  p /= W;
  const int y = (int)(p % H);
  const long long n = p / H;
  float v[VEC];
  load8(in + i * VEC, v);
#pragma unroll
  for (int dy = 0; dy < 2; ++dy)
#pragma unroll
    for (int dx = 0; dx < 2; ++dx) store8(out + ((n * 2 * H + 2 * y + dy) * 2 * W + 2 * x + dx) * C + c, v);
}

#define FRAME_KERNELS(T, NAME)                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                                         \
      bias_fill_##NAME(const T* bias, const T* residual, T* out, long long vectors, int C) {                \
    bias_fill<T>(bias, residual, out, vectors, C);                                                          \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(256)                                                         \
      upsample2x_##NAME(const T* in, T* out, long long vectors, int H, int W, int C) {                      \
    upsample2x<T>(in, out, vectors, H, W, C);                                                               \
  }
FRAME_KERNELS(__nv_bfloat16, bf16)
FRAME_KERNELS(__half, f16)
FRAME_KERNELS(float, f32)

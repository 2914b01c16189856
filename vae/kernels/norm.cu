// The VAE's channel norm on channels-last rows, optionally followed by SiLU:
// out[p][c] = act(x[p][c] * gain[c] / max(|x[p]|, 1e-12)), with gain = gamma * sqrt(C) in f32.
// A group of `lanes` lanes of a warp per row of C channels (lanes a power of two, at least C / 8,
// so narrow rows share a warp), eight channels per 16-byte vector, C % 8 == 0, C <= 1024; the
// sum of squares and the scaling in f32, one rounding at the end.
#include "vdit/convert.cuh"

constexpr int MAX_VECTORS_PER_LANE = 4;  // 4 * 32 * 8 = 1024 channels

template <typename T>
__device__ __forceinline__ void channel_norm(const T* x, const float* gain, T* out, long long rows, int C, int lanes,
                                             int silu) {
  const int lane = threadIdx.x & (lanes - 1);
  const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / lanes;
  // rows past the end still take part in the shuffles
  const bool valid = row < rows;
  const T* xr = x + row * C;
  T* orow = out + row * C;
  const int vectors = C / VEC;
  float v[MAX_VECTORS_PER_LANE][VEC];
  float squares = 0.f;
#pragma unroll
  for (int i = 0; i < MAX_VECTORS_PER_LANE; ++i) {
    const int at = lane + lanes * i;
    if (valid && at < vectors) {
      load8(xr + at * VEC, v[i]);
#pragma unroll
      for (int e = 0; e < VEC; ++e) squares += v[i][e] * v[i][e];
    }
  }
  for (int o = lanes / 2; o > 0; o >>= 1) squares += __shfl_xor_sync(0xffffffff, squares, o);
  const float inv = 1.f / fmaxf(sqrtf(squares), 1e-12f);
#pragma unroll
  for (int i = 0; i < MAX_VECTORS_PER_LANE; ++i) {
    const int at = lane + lanes * i;
    if (valid && at < vectors) {
      float g[VEC];
      load8(gain + at * VEC, g);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float y = v[i][e] * inv * g[e];
        if (silu) y = y / (1.f + __expf(-y));
        v[i][e] = y;
      }
      store8(orow + at * VEC, v[i]);
    }
  }
}

#define CHANNEL_NORM(T, NAME)                                                                             \
  extern "C" __global__ void __launch_bounds__(256)                                                       \
      channel_norm_##NAME(const T* x, const float* gain, T* out, long long rows, int C, int lanes, int silu) { \
    channel_norm<T>(x, gain, out, rows, C, lanes, silu);                                                  \
  }
CHANNEL_NORM(__nv_bfloat16, bf16)
CHANNEL_NORM(__half, f16)
CHANNEL_NORM(float, f32)

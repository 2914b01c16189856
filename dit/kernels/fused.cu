// Fused element-wise kernels for the transformer's hot paths on CUDA (bf16/f16 activations,
// f32 arithmetic): LayerNorm with adaLN modulation, RMSNorm with 3D RoPE, and the epilogue of
// a linear layer (bias, GELU, gate, residual).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float ld(const T* p);
template <> __device__ __forceinline__ float ld<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <> __device__ __forceinline__ float ld<__half>(const __half* p) { return __half2float(*p); }
template <typename T> __device__ __forceinline__ void st(T* p, float v);
template <> __device__ __forceinline__ void st<__nv_bfloat16>(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
template <> __device__ __forceinline__ void st<__half>(__half* p, float v) { *p = __float2half(v); }

constexpr int THREADS = 256;
constexpr int MAX_PER_THREAD = 32;  // rows of up to 8192 channels

// Sum over the block; every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
  return total;
}

// out = LayerNorm(x) * (1 + scale[b]) + shift[b], one CTA per row of `dim` channels; rows
// [b * rows_per_batch, (b + 1) * rows_per_batch) use modulation row b (stride mod_stride, 0
// for per-channel affine parameters).
template <typename T>
__device__ __forceinline__ void ln_modulate(const T* x, T* out, const float* shift, const float* scale, long long mod_stride,
                                            int rows_per_batch, int dim, float eps) {
  __shared__ float scratch[THREADS / 32];
  const long long row = blockIdx.x;
  const T* xr = x + row * dim;
  float v[MAX_PER_THREAD];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < MAX_PER_THREAD; ++k) {
    const int i = threadIdx.x + k * THREADS;
    v[k] = i < dim ? ld(xr + i) : 0.f;
    sum += v[k];
  }
  const float mean = block_sum(sum, scratch) / dim;
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < MAX_PER_THREAD; ++k) {
    const int i = threadIdx.x + k * THREADS;
    const float c = i < dim ? v[k] - mean : 0.f;
    sq += c * c;
  }
  const float rstd = rsqrtf(block_sum(sq, scratch) / dim + eps);
  const long long b = row / rows_per_batch;
  const float* sh = shift + b * mod_stride;
  const float* sc = scale + b * mod_stride;
  T* o = out + row * dim;
#pragma unroll
  for (int k = 0; k < MAX_PER_THREAD; ++k) {
    const int i = threadIdx.x + k * THREADS;
    if (i < dim) st(o + i, (v[k] - mean) * rstd * (1.f + sc[i]) + sh[i]);
  }
}

// RMSNorm over the whole row of heads * head_dim channels (f32 accumulation), times `weight`,
// then RoPE on interleaved pairs of each head with cos_sin[token][pair] = (cos, sin); one CTA
// per row (token); rows are (batch, token) with `tokens` tokens per batch element.
template <typename T>
__device__ __forceinline__ void rms_rope(const T* x, const T* weight, const float* cos_sin, T* out, int tokens, int dim,
                                         int head_dim, float eps) {
  __shared__ float scratch[THREADS / 32];
  const long long row = blockIdx.x;
  const int token = row % tokens;
  const T* xr = x + row * dim;
  const int pairs = dim / 2;
  float a[MAX_PER_THREAD / 2], c[MAX_PER_THREAD / 2];
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < MAX_PER_THREAD / 2; ++k) {
    const int j = threadIdx.x + k * THREADS;
    a[k] = j < pairs ? ld(xr + 2 * j) : 0.f;
    c[k] = j < pairs ? ld(xr + 2 * j + 1) : 0.f;
    sq += a[k] * a[k] + c[k] * c[k];
  }
  const float r = rsqrtf(block_sum(sq, scratch) / dim + eps);
  const float* cs = cos_sin + (long long)token * head_dim;  // head_dim / 2 pairs of (cos, sin)
  T* o = out + row * dim;
#pragma unroll
  for (int k = 0; k < MAX_PER_THREAD / 2; ++k) {
    const int j = threadIdx.x + k * THREADS;
    if (j >= pairs) continue;
    const float x0 = a[k] * r * ld(weight + 2 * j), x1 = c[k] * r * ld(weight + 2 * j + 1);
    const int p = j % (head_dim / 2);
    const float co = cs[2 * p], si = cs[2 * p + 1];
    st(o + 2 * j, x0 * co - x1 * si);
    st(o + 2 * j + 1, x0 * si + x1 * co);
  }
}

__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// The epilogue of a linear layer: out = residual + act(y + bias) * gate, element-wise in f32,
// eight elements per step (cols % 8 == 0, 16-byte aligned rows). y, residual, out: [rows, cols];
// bias: [cols]; gate: f32, one row of cols per batch element of rows_per_batch rows (stride
// gate_stride), or null for 1; residual may be null; act 0 = identity, 1 = GELU (tanh).
template <typename T>
__device__ __forceinline__ void linear_epilogue(const T* y, const T* bias, const float* gate, long long gate_stride,
                                                const T* residual, T* out, long long n, int cols, int rows_per_batch,
                                                int act) {
  const long long steps = n / 8;
  for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < steps; k += (long long)gridDim.x * blockDim.x) {
    const long long i = k * 8;
    const long long row = i / cols;
    const int c = (int)(i % cols);
    uint4 yv = *reinterpret_cast<const uint4*>(y + i);
    uint4 bv = *reinterpret_cast<const uint4*>(bias + c);
    uint4 rv = residual != nullptr ? *reinterpret_cast<const uint4*>(residual + i) : make_uint4(0, 0, 0, 0);
    const T* ye = reinterpret_cast<const T*>(&yv);
    const T* be = reinterpret_cast<const T*>(&bv);
    const T* re = reinterpret_cast<const T*>(&rv);
    const float* g = gate != nullptr ? gate + (row / rows_per_batch) * gate_stride + c : nullptr;
    uint4 ov;
    T* oe = reinterpret_cast<T*>(&ov);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float v = ld(ye + e) + ld(be + e);
      if (act == 1) v = gelu_tanh(v);
      if (g != nullptr) v *= g[e];
      if (residual != nullptr) v += ld(re + e);
      st(oe + e, v);
    }
    *reinterpret_cast<uint4*>(out + i) = ov;
  }
}

#define FUSED(T, NAME)                                                                                               \
  extern "C" __global__ void __launch_bounds__(THREADS) ln_modulate_##NAME(                                          \
      const T* x, T* out, const float* shift, const float* scale, long long mod_stride, int rows_per_batch, int dim, \
      float eps) {                                                                                                   \
    ln_modulate<T>(x, out, shift, scale, mod_stride, rows_per_batch, dim, eps);                                      \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) rms_rope_##NAME(                                             \
      const T* x, const T* weight, const float* cos_sin, T* out, int tokens, int dim, int head_dim, float eps) {     \
    rms_rope<T>(x, weight, cos_sin, out, tokens, dim, head_dim, eps);                                                \
  }                                                                                                                  \
  extern "C" __global__ void linear_epilogue_##NAME(const T* y, const T* bias, const float* gate, long long gate_stride, \
                                                    const T* residual, T* out, long long n, int cols,                \
                                                    int rows_per_batch, int act) {                                   \
    linear_epilogue<T>(y, bias, gate, gate_stride, residual, out, n, cols, rows_per_batch, act);                     \
  }
FUSED(__nv_bfloat16, bf16)
FUSED(__half, f16)

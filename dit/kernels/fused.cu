// Fused element-wise kernels for the transformer's hot paths on CUDA (bf16/f16 activations,
// f32 arithmetic): LayerNorm with adaLN modulation, RMSNorm with 3D RoPE, and the epilogue of
// a linear layer (bias, GELU, gate, residual).
#include "vdit/convert.cuh"

// Sum over the CTA (whole warps, at most 32); every thread gets the result.
__device__ __forceinline__ float cta_sum(float v) {
  __shared__ float scratch[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  __syncthreads();  // a previous call may still be reading scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
  return total;
}

// out = LayerNorm(x) * (1 + scale[b]) + shift[b], one CTA per row; rows
// [b * rows_per_batch, (b + 1) * rows_per_batch) use modulation row b (stride mod_stride, 0
// for per-channel affine parameters).
template <typename T>
__device__ __forceinline__ void ln_modulate(const T* x, T* out, const float* shift, const float* scale, long long mod_stride,
                                            int rows_per_batch, int dim, float eps) {
  const long long row = blockIdx.x;
  const int c = threadIdx.x * VEC;
  const bool on = c < dim;
  float v[VEC];
  if (on) load8(x + row * dim + c, v);
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) sum += on ? v[i] : 0.f;
  const float mean = cta_sum(sum) / dim;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) sq += on ? (v[i] - mean) * (v[i] - mean) : 0.f;
  const float rstd = rsqrtf(cta_sum(sq) / dim + eps);
  if (!on) return;
  const long long b = row / rows_per_batch;
  float sh[VEC], sc[VEC];
  load8(shift + b * mod_stride + c, sh);
  load8(scale + b * mod_stride + c, sc);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = (v[i] - mean) * rstd * (1.f + sc[i]) + sh[i];
  store8(out + row * dim + c, v);
}

// RMSNorm over the whole row of heads * head_dim channels (f32 accumulation), times `weight`,
// then (when cos_sin is not null) RoPE on interleaved pairs of each head with
// cos_sin[token][pair] = (cos, sin); one CTA per row, rows are (batch, token) with `tokens`
// tokens per batch element.
template <typename T>
__device__ __forceinline__ void rms_rope(const T* x, const T* weight, const float* cos_sin, T* out, int tokens, int dim,
                                         int head_dim, float eps) {
  const long long row = blockIdx.x;
  const int c = threadIdx.x * VEC;
  const bool on = c < dim;
  float v[VEC], w[VEC];
  if (on) load8(x + row * dim + c, v);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < VEC; ++i) sq += on ? v[i] * v[i] : 0.f;
  const float r = rsqrtf(cta_sum(sq) / dim + eps);
  if (!on) return;
  load8(weight + c, w);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] *= r * w[i];
  if (cos_sin != nullptr) {
    const float* cs = cos_sin + (long long)(row % tokens) * head_dim;  // head_dim / 2 (cos, sin)
#pragma unroll
    for (int i = 0; i < VEC; i += 2) {
      const int pair = ((c + i) / 2) % (head_dim / 2);
      const float co = cs[2 * pair], si = cs[2 * pair + 1], x0 = v[i], x1 = v[i + 1];
      v[i] = x0 * co - x1 * si;
      v[i + 1] = x0 * si + x1 * co;
    }
  }
  store8(out + row * dim + c, v);
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
      float v = to_f32(ye[e]) + to_f32(be[e]);
      if (act == 1) v = gelu_tanh(v);
      if (g != nullptr) v *= g[e];
      if (residual != nullptr) v += to_f32(re[e]);
      oe[e] = from_f32<T>(v);
    }
    *reinterpret_cast<uint4*>(out + i) = ov;
  }
}

#define FUSED(T, NAME)                                                                                               \
  extern "C" __global__ void __launch_bounds__(1024) ln_modulate_##NAME(                                          \
      const T* x, T* out, const float* shift, const float* scale, long long mod_stride, int rows_per_batch, int dim, \
      float eps) {                                                                                                   \
    ln_modulate<T>(x, out, shift, scale, mod_stride, rows_per_batch, dim, eps);                                      \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(1024) rms_rope_##NAME(                                             \
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

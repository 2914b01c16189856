// Block-sparse attention, backward (correct, simple): one warp per row, each lane holding
// D/32 channels. dQ walks each query block's key-block list; dK and dV walk each key block's
// list of query blocks (the transposed mask). Gradients are f32, [B, H, S, D] contiguous.
#include "common.cuh"

struct BwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  long long q_strides[3];
  long long k_strides[3];
  long long v_strides[3];
  long long o_strides[3];
  const float* lse;    // [B * H, S]
  const float* delta;  // [B * H, S]: sum over channels of dout * out
  float* dq;           // [B, H, S, D]
  float* dk;           // [B, H, SK, D]
  float* dv;
  const uint32_t* q_order;
  const uint32_t* q_starts;
  const uint32_t* k_order;
  const uint32_t* k_starts;
  const uint32_t* offsets;  // CSR: (b*H+h)*nqb + qb -> key blocks (dq pass) or
  const uint32_t* indices;  //      (b*H+h)*nkb + kb -> query blocks (dk/dv pass)
  int b, h, s, sk;  // s query tokens, sk key tokens
  int q_per_head, k_per_head;
  int rows_blocks;  // nqb for the dq pass, nkb for the dk/dv pass
  float scale;
};
#include "abi/BwdParams.h"  // checks the layout against sparse/src/kernel_params.rs

template <int D> __device__ __forceinline__ float warp_dot(const float* a, const float* b) {
  float x = 0.f;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) x += a[i] * b[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffff, x, o);
  return x;
}

template <typename T, int D> __device__ __forceinline__ void load_row(float* dst, const T* src) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < D / 32; ++i) dst[i] = to_f32<T>(src[lane + 32 * i]);
}

template <typename T, int D> __device__ __forceinline__ void bwd_dq(const BwdParams& p) {
  const int blk = blockIdx.x, bh = blockIdx.y, b = bh / p.h, h = bh % p.h;
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  const uint32_t* q_ord = p.q_order + (p.q_per_head ? (size_t)h * p.s : 0);
  const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)h * p.sk : 0);
  const T* qb = reinterpret_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* kb = reinterpret_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* vb = reinterpret_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* ob = reinterpret_cast<const T*>(p.dout) + b * p.o_strides[0] + h * p.o_strides[1];
  const size_t list = (size_t)bh * p.rows_blocks + blk;
  for (uint32_t slot = p.q_starts[blk] + warp; slot < p.q_starts[blk + 1]; slot += warps) {
    const long long tok = q_ord[slot];
    float q[D / 32], dout[D / 32], acc[D / 32] = {0.f};
    load_row<T, D>(q, qb + tok * p.q_strides[2]);
    load_row<T, D>(dout, ob + tok * p.o_strides[2]);
    const float lse = p.lse[(size_t)bh * p.s + tok], delta = p.delta[(size_t)bh * p.s + tok];
    for (uint32_t it = p.offsets[list]; it < p.offsets[list + 1]; ++it) {
      const uint32_t key_block = p.indices[it];
      for (uint32_t ks = p.k_starts[key_block]; ks < p.k_starts[key_block + 1]; ++ks) {
        const long long kt = k_ord[ks];
        float k[D / 32], v[D / 32];
        load_row<T, D>(k, kb + kt * p.k_strides[2]);
        load_row<T, D>(v, vb + kt * p.v_strides[2]);
        const float pr = __expf(warp_dot<D>(q, k) * p.scale - lse);
        const float ds = pr * (warp_dot<D>(dout, v) - delta) * p.scale;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) acc[i] += ds * k[i];
      }
    }
    float* dst = p.dq + ((size_t)bh * p.s + tok) * D;
#pragma unroll
    for (int i = 0; i < D / 32; ++i) dst[lane + 32 * i] = acc[i];
  }
}

template <typename T, int D> __device__ __forceinline__ void bwd_dkdv(const BwdParams& p) {
  const int blk = blockIdx.x, bh = blockIdx.y, b = bh / p.h, h = bh % p.h;
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5, lane = threadIdx.x & 31;
  const uint32_t* q_ord = p.q_order + (p.q_per_head ? (size_t)h * p.s : 0);
  const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)h * p.sk : 0);
  const T* qb = reinterpret_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* kb = reinterpret_cast<const T*>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
  const T* vb = reinterpret_cast<const T*>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
  const T* ob = reinterpret_cast<const T*>(p.dout) + b * p.o_strides[0] + h * p.o_strides[1];
  const size_t list = (size_t)bh * p.rows_blocks + blk;
  for (uint32_t slot = p.k_starts[blk] + warp; slot < p.k_starts[blk + 1]; slot += warps) {
    const long long kt = k_ord[slot];
    float k[D / 32], v[D / 32], dk[D / 32] = {0.f}, dv[D / 32] = {0.f};
    load_row<T, D>(k, kb + kt * p.k_strides[2]);
    load_row<T, D>(v, vb + kt * p.v_strides[2]);
    for (uint32_t it = p.offsets[list]; it < p.offsets[list + 1]; ++it) {
      const uint32_t query_block = p.indices[it];
      for (uint32_t qs = p.q_starts[query_block]; qs < p.q_starts[query_block + 1]; ++qs) {
        const long long tok = q_ord[qs];
        float q[D / 32], dout[D / 32];
        load_row<T, D>(q, qb + tok * p.q_strides[2]);
        load_row<T, D>(dout, ob + tok * p.o_strides[2]);
        const float lse = p.lse[(size_t)bh * p.s + tok], delta = p.delta[(size_t)bh * p.s + tok];
        const float pr = __expf(warp_dot<D>(q, k) * p.scale - lse);
        const float ds = pr * (warp_dot<D>(dout, v) - delta) * p.scale;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) {
          dv[i] += pr * dout[i];
          dk[i] += ds * q[i];
        }
      }
    }
    float* dkd = p.dk + ((size_t)bh * p.sk + kt) * D;
    float* dvd = p.dv + ((size_t)bh * p.sk + kt) * D;
#pragma unroll
    for (int i = 0; i < D / 32; ++i) {
      dkd[lane + 32 * i] = dk[i];
      dvd[lane + 32 * i] = dv[i];
    }
  }
}

#define INSTANTIATE_BWD(T, NAME, D)                                                                       \
  extern "C" __global__ void bsattn_bwd_dq_##NAME##_d##D(const BwdParams p) { bwd_dq<T, D>(p); }     \
  extern "C" __global__ void bsattn_bwd_dkdv_##NAME##_d##D(const BwdParams p) { bwd_dkdv<T, D>(p); }
INSTANTIATE_BWD(__nv_bfloat16, bf16, 64)
INSTANTIATE_BWD(__nv_bfloat16, bf16, 128)
INSTANTIATE_BWD(__half, f16, 64)
INSTANTIATE_BWD(__half, f16, 128)
INSTANTIATE_BWD(float, f32, 64)
INSTANTIATE_BWD(float, f32, 128)

// Top-k per row on the GPU: the indices of the k largest scores of every row of a
// [rows, n] f32 matrix, best first, ties to the lower index (the CPU rule). One CTA per row
// sorts (score, index) pairs bitonically in shared memory; n <= 4096.
#include <stdint.h>

// true when (sa, ia) must come before (sb, ib): higher score first, then lower index.
__device__ __forceinline__ bool before(float sa, uint32_t ia, float sb, uint32_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

extern "C" __global__ void __launch_bounds__(512) topk_rows_f32(const float* scores, uint32_t* out, int n, int k,
                                                               int padded) {
  extern __shared__ unsigned char smem_raw[];
  float* s = reinterpret_cast<float*>(smem_raw);
  uint32_t* idx = reinterpret_cast<uint32_t*>(s + padded);
  const float* row = scores + (size_t)blockIdx.x * n;
  for (int i = threadIdx.x; i < padded; i += blockDim.x) {
    s[i] = i < n ? row[i] : -INFINITY;
    idx[i] = i < n ? i : 0xffffffffu;
  }
  __syncthreads();
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < padded; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool up = (i & size) == 0;  // this run sorts best-first
          const bool swap = up ? before(s[j], idx[j], s[i], idx[i]) : before(s[i], idx[i], s[j], idx[j]);
          if (swap) {
            const float ts = s[i];
            s[i] = s[j];
            s[j] = ts;
            const uint32_t ti = idx[i];
            idx[i] = idx[j];
            idx[j] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)blockIdx.x * k + i] = idx[i];
}

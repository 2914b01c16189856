// Memory probe behind VMoBA's partial outputs (BENCHMARKS.md, twelfth session): how long the
// traffic of one spatial call's 7.86 M (query, chunk) pairs takes on the GPU as it is now (a
// 256-byte bf16 row per pair stored in order, then read back at random by the merge) against
// accumulating each pair's f32 row into a per-query sum in place (red.global.add from
// registers, 8 or 16 bytes a lane, or a bulk reduction of a 512-byte row from shared memory),
// with the sums of one head (16.8 MB, L2-resident) or of all twelve (201 MB) as targets.
//   nvcc -arch=sm_90a -O3 -std=c++17 pipelines/vdit/bench/partial_rows_probe.cu -o .gpu/partial_rows_probe
//   .gpu/partial_rows_probe        (on the GPU machine: a line per variant, ms and TB/s)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

constexpr int D = 128;                      // head dim
constexpr long long PAIRS = 32760LL * 12 * 20;  // spatial kind: tokens x heads x top-20
constexpr int TOKENS = 32760, HEADS = 12;

// A fixed pseudo-random row for pair r.
__device__ __forceinline__ uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

// The target row of pair r: the sums of its head (pairs split evenly by head, so that the grid
// works through one head at a time) or anywhere in `region` rows.
__device__ __forceinline__ long long target_row(long long r, int region, int heads) {
  return (long long)(r * heads / PAIRS) * region + mix((uint32_t)r) % region;
}

__global__ void store_rows(__nv_bfloat16* out) {
  const long long n = PAIRS * D / 8, step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    reinterpret_cast<uint4*>(out)[i] = make_uint4((uint32_t)i, 0u, 0u, 0u);
  }
}

// Half a warp per row, 16 bytes a lane, rows at random: the merge's reads.
__global__ void read_rows(const __nv_bfloat16* in, float* sink) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
  float acc = 0.f;
  for (long long r = warp * 2 + (lane >> 4); r < PAIRS; r += warps * 2) {
    const uint4 v = reinterpret_cast<const uint4*>(in + (mix((uint32_t)r) % PAIRS) * D)[lane & 15];
    acc += __uint_as_float(v.x);
  }
  if (acc == 1.2345f) *sink = acc;  // keeps the loads
}

// A wgmma accumulator's pattern: a warp instruction covers 8 rows x 8 columns (8 bytes a lane).
__global__ void reduce_fragments(float* sums, int region, int heads) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
  for (long long r0 = warp * 16; r0 < PAIRS; r0 += warps * 16) {
    for (int half = 0; half < 2; ++half) {
      float* p = sums + target_row(r0 + half * 8 + (lane >> 2), region, heads) * D + (lane & 3) * 2;
#pragma unroll 8
      for (int c = 0; c < D / 8; ++c) {
        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p + c * 8), "f"(1.f), "f"(1.f) : "memory");
      }
    }
  }
}

// A warp instruction per row, 16 bytes a lane.
__global__ void reduce_rows(float* sums, int region, int heads) {
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
  for (long long r = warp; r < PAIRS; r += warps) {
    float* p = sums + target_row(r, region, heads) * D + lane * 4;
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(1.f), "f"(1.f), "f"(1.f), "f"(1.f)
                 : "memory");
  }
}

// A bulk reduction of a 512-byte row from shared memory per lane.
__global__ void reduce_bulk(float* sums, int region, int heads) {
  __shared__ __align__(128) float rows[8][D];
  for (int i = threadIdx.x; i < 8 * D; i += blockDim.x) (&rows[0][0])[i] = 1.f;
  asm volatile("fence.proxy.async.shared::cta;");
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
  const uint32_t src = (uint32_t)__cvta_generic_to_shared(&rows[threadIdx.x >> 5][0]);
  for (long long r = warp * 32 + lane; r < PAIRS; r += warps * 32) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(
                     sums + target_row(r, region, heads) * D),
                 "r"(src), "r"(D * 4)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;");
  }
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}

int main() {
  __nv_bfloat16* rows;
  float *sums, *sink;
  cudaMalloc(&rows, PAIRS * D * 2);
  cudaMalloc(&sums, (long long)TOKENS * HEADS * D * 4);
  cudaMalloc(&sink, 4);
  cudaMemset(sums, 0, (long long)TOKENS * HEADS * D * 4);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const int grid = 132 * 16, block = 256;
  auto time = [&](const char* name, double bytes, auto launch) {
    for (int i = 0; i < 3; ++i) launch();
    cudaEventRecord(start);
    for (int i = 0; i < 10; ++i) launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms;
    cudaEventElapsedTime(&ms, start, stop);
    ms /= 10;
    printf("%-40s %7.3f ms %6.2f TB/s %s\n", name, ms, bytes / ms * 1e-9, cudaGetErrorString(cudaGetLastError()));
  };
  const double bf16_rows = PAIRS * D * 2.0, f32_rows = PAIRS * D * 4.0;
  time("bf16 rows stored in order", bf16_rows, [&] { store_rows<<<grid, block>>>(rows); });
  time("bf16 rows read at random", bf16_rows, [&] { read_rows<<<grid, block>>>(rows, sink); });
  time("f32 sums, fragments, one head at a time", f32_rows,
       [&] { reduce_fragments<<<grid, block>>>(sums, TOKENS, HEADS); });
  time("f32 sums, rows, one head at a time", f32_rows, [&] { reduce_rows<<<grid, block>>>(sums, TOKENS, HEADS); });
  time("f32 sums, bulk rows, one head at a time", f32_rows,
       [&] { reduce_bulk<<<grid, block>>>(sums, TOKENS, HEADS); });
  time("f32 sums, rows, all heads", f32_rows, [&] { reduce_rows<<<grid, block>>>(sums, TOKENS * HEADS, 1); });
  time("f32 sums, fragments, all heads", f32_rows,
       [&] { reduce_fragments<<<grid, block>>>(sums, TOKENS * HEADS, 1); });
  return 0;
}

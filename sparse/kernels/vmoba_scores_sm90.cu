// VMoBA's chunk scores on Hopper (sm_90a): q . mean for every query and chunk by wgmma
// (vmoba_scores.cuh; vmoba.cu's chunk_scores runs the same product by mma.sync elsewhere). A CTA
// of two warpgroups takes 128 queries of one head, each warpgroup 64 of them as A fragments in
// registers, read once from q. Blocks of 64 chunks' mean parts are copied by cp.async into two
// shared-memory buffers, one tile per part in wgmma's canonical layout, and a block's scores are
// one accumulator: the sum over parts of the queries times the part's tile, B read by the
// tensor cores straight from shared memory. Accumulators alternate by block, so that a block's
// scores are stored, and the next block's parts copied, while the following block's products
// run.
#include "common.cuh"
#include "tiles_sm90.cuh"
#include "vmoba_scores.cuh"

// Queries per CTA (two warpgroups of 64) and chunks per staged block.
constexpr int SM90_SCORE_ROWS = 128, SM90_SCORE_CHUNKS = 64;

// out[(g * S + query) * ld + c] = q . mean of chunk c for the queries of head h0 + g of batch
// element b (q's strides sb, sh, ss), the n chunks' parts being [heads, n, SCORE_PARTS * D].
template <typename T, int D>
__device__ __forceinline__ void chunk_scores_sm90(const T* q, long long sb, long long sh, long long ss, int b, int h0,
                                                  int S, const T* parts, int n, int ld, float* out) {
  constexpr int VECS = D / 8;                               // 16-byte vectors in a part's row
  constexpr int PART_BYTES = SM90_SCORE_CHUNKS * D * 2;     // one part's tile of a block
  constexpr int STAGE_BYTES = SCORE_PARTS * PART_BYTES;     // a block's buffer
  extern __shared__ __align__(1024) unsigned char score_tiles[];  // [2][SCORE_PARTS] tiles
  const int g = blockIdx.y, warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
  const T* means = parts + (size_t)g * n * SCORE_PARTS * D;
  auto stage_block = [&](int block) {
    unsigned char* dst = score_tiles + (block & 1) * STAGE_BYTES;
    for (int i = threadIdx.x; i < SCORE_PARTS * SM90_SCORE_CHUNKS * VECS; i += blockDim.x) {
      const int part = i / (SM90_SCORE_CHUNKS * VECS), r = (i / VECS) % SM90_SCORE_CHUNKS, v = i % VECS;
      const int chunk = block * SM90_SCORE_CHUNKS + r;
      const bool valid = chunk < n;
      cp_async16(dst + part * PART_BYTES + tile_off(SM90_SCORE_CHUNKS, r, v),
                 means + ((size_t)(valid ? chunk : 0) * SCORE_PARTS + part) * D + v * VEC, valid);
    }
    cp_async_commit();
  };
  stage_block(0);

  const int row0 = blockIdx.x * SM90_SCORE_ROWS + (threadIdx.x >> 7) * 64;
  uint32_t a[D / 16][4];
  load_a_rows_global<T, D>(a, q + b * sb + (long long)(h0 + g) * sh, ss, nullptr, S, row0);
  const int blocks = (n + SM90_SCORE_CHUNKS - 1) / SM90_SCORE_CHUNKS;
  // Block j's products go to acc[j % 2] and are stored while block j + 1's run.
  float acc[2][SM90_SCORE_CHUNKS / 2];
  auto store = [&](int block, float* c) {
#pragma unroll
    for (int i = 0; i < SM90_SCORE_CHUNKS / 2; i += 2) {
      const int row = row0 + warp * 16 + (lane >> 2) + 8 * ((i >> 1) & 1);
      const int col = block * SM90_SCORE_CHUNKS + fragment_column(i, lane);
      if (row < S && col < ld) {
        *reinterpret_cast<float2*>(out + ((size_t)g * S + row) * ld + col) = make_float2(c[i], c[i + 1]);
      }
    }
  };
  // Block j: its parts landed, its products issued; block j - 1's awaited and its buffer
  // refilled with block j + 1's parts; block j - 1's scores stored.
  auto step = [&](int block, float* cur, float* prev) {
    cp_async_wait<0>();
    fence_async_shared();  // the copies landed through the generic proxy; wgmma reads through the async one
    __syncthreads();
    const unsigned char* tiles = score_tiles + (block & 1) * STAGE_BYTES;
    wg_fence();
#pragma unroll
    for (int part = 0; part < SCORE_PARTS; ++part) {
      mma_rs_kmajor_tile<T, D, SM90_SCORE_CHUNKS>(cur, a, tiles + part * PART_BYTES, part > 0);
    }
    wg_commit();
    wg_wait<1>();
    __syncthreads();  // both warpgroups' products of block - 1 have read its buffer
    if (block + 1 < blocks) stage_block(block + 1);
    if (block > 0) {
      wg_pin<SM90_SCORE_CHUNKS / 2>(prev);
      store(block - 1, prev);
    }
  };
  for (int block = 0; block < blocks; block += 2) {
    step(block, acc[0], acc[1]);
    if (block + 1 < blocks) step(block + 1, acc[1], acc[0]);
  }
  wg_wait<0>();
  auto store_last = [&](float* c) {
    wg_pin<SM90_SCORE_CHUNKS / 2>(c);
    store(blocks - 1, c);
  };
  if (blocks & 1) {
    store_last(acc[0]);
  } else {
    store_last(acc[1]);
  }
}

#define SCORES_SM90(T, NAME, D)                                                                               \
  extern "C" __global__ void __launch_bounds__(256)                                                           \
      vmoba_scores_sm90_##NAME##_d##D(const T* q, long long sb, long long sh, long long ss, int b, int h0,    \
                                      int S, const T* parts, int n, int ld, float* out) {                     \
    chunk_scores_sm90<T, D>(q, sb, sh, ss, b, h0, S, parts, n, ld, out);                                      \
  }
SCORES_SM90(__nv_bfloat16, bf16, 64)
SCORES_SM90(__nv_bfloat16, bf16, 128)
SCORES_SM90(__half, f16, 64)
SCORES_SM90(__half, f16, 128)

// VMoBA's gathered attention for Hopper (sm_90a), chunk-stationary: one CTA per work item
// (batch * head, chunk, first slot, queries) of up to 2,048 of one chunk's (query, chunk) pairs.
// The producer warpgroup copies the chunk's keys and values once (at most NKT tiles of 128 keys
// stay in shared memory), then streams the item's query tiles of 128 gathered rows through a
// ring; two consumer warpgroups of 64 rows run each query tile against the resident keys (the
// forward's steps, fwd_steps_sm90.cuh, taking turns on the tensor cores) and write every pair's
// partial output and log-sum-exp, which vmoba.cu's merge combines. A pair's partial row is its
// slot in its chunk's list, and lists start at multiples of 128 slots, so that a consumer's 64
// rows are one box of the partial rows' tensor map: staged in its own rows of the query tile,
// they go out by bulk tensor stores. attention_fwd_sm90.cu's gathered mode runs CTAs of one 64-
// or 128-query tile that copy the chunk's keys each time and are one or two key tiles long; here
// a key is copied once per item and the query copies overlap the products.
#include "attention_params.cuh"
#include "common.cuh"
#include "fwd_steps_sm90.cuh"
#include "softmax.cuh"
#include "sync_sm90.cuh"
#include "tiles_sm90.cuh"
#include "tma_sm90.cuh"

// Query tiles of 128 rows (two consumers) and key tiles of 128 rows.
constexpr int ITEM_TILE = 128, KEY_TILE = 128;
// Query tiles in flight (beside two key tiles of 128 channels, 225 KiB of shared memory): a
// tile's buffer comes back a tile after its rows were stored (write_pairs).
constexpr int Q_STAGES = 3;
// Named barriers: consumer c's rows are staged for their copy out (BAR_TURN is 2 and 3).
constexpr int BAR_ROWS_STAGED = 5;

// Consumer c's 64 rows of query tile `i`, normalised, out to their pairs' partial outputs and
// log-sum-exps: staged in the consumer's own rows of the query tile's buffer (which only its
// products read, and which they have read), by matrix stores of four 8x8 blocks a warp
// instruction, and in `lse_rows`; then sent by one thread as bulk tensor stores of the map's
// 64-row boxes (rows slot .. slot + 63, those past the tile's real rows in the list's padding)
// and one bulk copy of the log-sum-exps. That thread hands a tile's buffer back once its stores
// have read it, a tile later (waiting then for all but the newest bulk group), so that the
// consumer goes on to its next tile meanwhile; log-sum-exps alternate between two buffers by
// tile for the same reason.
template <typename T, int D>
__device__ __forceinline__ void write_pairs(const AttnParams& p, const TileMap& map, const QueryTile& tile, int c,
                                           int i, const float* o, const float* m, const float* l,
                                           unsigned char* rows, float* lse_rows, uint64_t* q_empty) {
  const int tid = threadIdx.x & 127, warp = tid >> 5, lane = tid & 31;
  const RowTotals t[2] = {row_totals(m[0], l[0]), row_totals(m[1], l[1])};
  // Matrix j of a store: rows + 8 (j & 1) of the warp's 16, 16-byte column chunk 2k + j / 2.
  const int j = lane >> 3, r = c * 64 + warp * 16 + (j & 1) * 8 + (lane & 7);
#pragma unroll
  for (int k = 0; k < D / 16; ++k) {
    uint32_t packed[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int dt = 2 * k + (q >> 1), half = q & 1;
      packed[q] = pack2<T>(o[4 * dt + half * 2] * t[half].inv, o[4 * dt + half * 2 + 1] * t[half].inv);
    }
    stmatrix_x4(rows + tile_off(ITEM_TILE, r, 2 * k + (j >> 1)), packed);
  }
  if ((lane & 3) == 0) {
    lse_rows[warp * 16 + (lane >> 2)] = t[0].lse;
    lse_rows[warp * 16 + (lane >> 2) + 8] = t[1].lse;
  }
  fence_async_shared();  // the staged rows are read by the async proxy
  named_sync(BAR_ROWS_STAGED + c, 128);
  if (tid != 0) return;
  if (c * 64 < tile.nq) {
    const int slot = tile.qs + c * 64;
#pragma unroll
    for (int blk = 0; blk < D / 64; ++blk) {
      tma_store_2d(&map.map, rows + blk * ITEM_TILE * 128 + c * 64 * 128, blk * 64, slot);
    }
    bulk_store(p.lse + slot, lse_rows, 64 * sizeof(float));
    bulk_commit();
    bulk_wait_read<1>();  // the previous tile's stores have read its buffer
  } else {
    bulk_wait_read<0>();
  }
  if (i > 0) mbar_arrive(&q_empty[(i - 1) % Q_STAGES]);
}

// The producer: the chunk's NKT key and value tiles (rows past its `nk` keys zero), then the
// item's query tiles into the ring.
template <typename T, int D, int NKT>
__device__ __forceinline__ void produce_chunk(const AttnParams& p, const QueryTile& item, uint32_t first, int nk,
                                              unsigned char* sQ, unsigned char* sK, unsigned char* sV,
                                              uint64_t* kv_full, uint64_t* q_full, uint64_t* q_empty) {
  constexpr int CH = D / 8, TILE_BYTES = KEY_TILE * D * 2;
  using R = TileRows<KEY_TILE, CH, 128>;
  const T* kbase = reinterpret_cast<const T*>(p.k) + item.b * p.k_strides[0] + item.h * p.k_strides[1];
  const T* vbase = reinterpret_cast<const T*>(p.v) + item.b * p.v_strides[0] + item.h * p.v_strides[1];
  const T* qbase = reinterpret_cast<const T*>(p.q) + item.b * p.q_strides[0] + item.h * p.q_strides[1];
  auto off_k = [](int r, int c) { return tile_off(KEY_TILE, r, c); };
#pragma unroll
  for (int t = 0; t < NKT; ++t) {
    uint32_t tok[R::PER_THREAD];
#pragma unroll
    for (int j = 0; j < R::PER_THREAD; ++j) {
      const uint32_t slot = first + (uint32_t)max(min(t * KEY_TILE + (int)threadIdx.x / CH + j * R::STEP, nk - 1), 0);
      tok[j] = nk == 0 ? 0u : p.k_natural > 0 ? slot : p.k_order[slot];
    }
    copy_kv_tile<T, KEY_TILE, CH, 128>(p, tok, nk - t * KEY_TILE, kbase, vbase, sK + t * TILE_BYTES,
                                       sV + t * TILE_BYTES, off_k);
  }
  mbar_arrive_after_copies(kv_full);
  // Query tiles: this thread's rows' tokens are loaded a tile ahead (before the wait for the
  // ring entry), so that their latency is not paid once per copy.
  using QR = TileRows<ITEM_TILE, CH, 128>;
  const int ch = threadIdx.x % CH, r0 = threadIdx.x / CH;
  uint32_t tok[QR::PER_THREAD];
  auto tokens = [&](int i) {
#pragma unroll
    for (int j = 0; j < QR::PER_THREAD; ++j) {
      const int r = i * ITEM_TILE + r0 + j * QR::STEP;
      tok[j] = r < item.nq ? item.q_ord[item.qs + r] : 0u;
    }
  };
  tokens(0);
  for (int i = 0; i * ITEM_TILE < item.nq; ++i) {
    const int stage = i % Q_STAGES;
    if (i >= Q_STAGES) mbar_wait(&q_empty[stage], ((i / Q_STAGES) & 1) ^ 1);
    unsigned char* dst = sQ + stage * ITEM_TILE * D * 2;
#pragma unroll
    for (int j = 0; j < QR::PER_THREAD; ++j) {
      const int r = r0 + j * QR::STEP;
      cp_async16(dst + tile_off(ITEM_TILE, r, ch), qbase + (long long)tok[j] * p.q_strides[2] + ch * 8,
                 i * ITEM_TILE + r < item.nq);
    }
    mbar_arrive_after_copies(&q_full[stage]);
    if ((i + 1) * ITEM_TILE < item.nq) tokens(i + 1);
  }
  cp_async_wait<0>();
}

// Consumer warpgroup c: its 64 rows of each query tile against the chunk's `nk` keys.
template <typename T, int D>
__device__ __forceinline__ void consume_chunk(const AttnParams& p, const TileMap& map, const QueryTile& item, int c,
                                              int nk, unsigned char* sQ, const unsigned char* sK,
                                              const unsigned char* sV, uint64_t* kv_full, uint64_t* q_full,
                                              uint64_t* q_empty) {
  constexpr int TILE_BYTES = KEY_TILE * D * 2;
  const int warp = (threadIdx.x >> 5) & 3;
  const int key_tiles = (nk + KEY_TILE - 1) / KEY_TILE, query_tiles = (item.nq + ITEM_TILE - 1) / ITEM_TILE;
  __shared__ float wait_sink[8];
  __shared__ __align__(16) float lse_rows[2][2][64];  // [consumer][tile parity]
  mbar_wait(kv_full, 0);
  if (c == 1 && key_tiles > 0) named_arrive(BAR_TURN, 256);  // consumer 0 goes first
  for (int i = 0; i < query_tiles; ++i) {
    const int stage = i % Q_STAGES;
    mbar_wait(&q_full[stage], (i / Q_STAGES) & 1);
    fence_async_shared();  // the copies landed through the generic proxy; wgmma reads through the async one
    unsigned char* rows = sQ + stage * ITEM_TILE * D * 2;
    const QueryRows<D, KEY_TILE> q{rows, {}};
    const bool last = i + 1 == query_tiles;
    QueryTile tile = item;
    tile.qs = item.qs + i * ITEM_TILE;
    tile.nq = min(ITEM_TILE, item.nq - i * ITEM_TILE);
    float o[D / 2];
#pragma unroll
    for (int e = 0; e < D / 2; ++e) o[e] = 0.f;
    float s[KEY_TILE / 2];
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
    uint32_t a[KEY_TILE / 16][4];
    if (key_tiles > 0) {
      turn_begin<2>(c);
      issue_qk<T, D, ITEM_TILE, KEY_TILE>(s, q, sK, c);
      turn_end<2>(c, !(last && key_tiles == 1));
      wg_wait<0>();
      wg_pin<KEY_TILE / 2>(s);
      softmax_tile<KEY_TILE>(s, min(nk, KEY_TILE), p.scale_log2, m, l, alpha);
      pack_a<T, KEY_TILE>(a, s);
      for (int t = 1; t < key_tiles; ++t) {
        turn_begin<2>(c);
        issue_qk<T, D, ITEM_TILE, KEY_TILE>(s, q, sK + t * TILE_BYTES, c);
        issue_pv<T, D, KEY_TILE>(o, a, sV + (t - 1) * TILE_BYTES);
        turn_end<2>(c, !(last && t + 1 == key_tiles));
        wg_wait<1>();
        wg_pin<KEY_TILE / 2>(s);
        softmax_tile<KEY_TILE>(s, min(nk - t * KEY_TILE, KEY_TILE), p.scale_log2, m, l, alpha);
        wg_wait_after<0>(l[0] + l[1], &wait_sink[warp + 4 * c]);  // the softmax overlaps O += P V
        wg_pin<D / 2>(o);
        wg_keep(a);
        rescale<D>(o, alpha);
        pack_a<T, KEY_TILE>(a, s);
      }
      issue_pv<T, D, KEY_TILE>(o, a, sV + (key_tiles - 1) * TILE_BYTES);
      wg_wait<0>();
      wg_pin<D / 2>(o);
      wg_keep(a);
    } else {
      // The turns order a consumer's warps from tile to tile; without keys this barrier keeps
      // lse_rows from being rewritten while its storing thread may still wait on their reads.
      named_sync(BAR_ROWS_STAGED + c, 128);
    }
    write_pairs<T, D>(p, map, tile, c, i, o, m, l, rows, lse_rows[c][i & 1], q_empty);
  }
  if ((threadIdx.x & 127) == 0) bulk_wait_read<0>();  // shared memory outlives the last stores' reads
}

template <typename T, int D, int NKT>
__device__ __forceinline__ void vmoba_chunk_sm90(const AttnParams& p, const TileMap& map) {
  constexpr int Q_BYTES = ITEM_TILE * D * 2, KV_BYTES = NKT * KEY_TILE * D * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ uint64_t kv_full, q_full[Q_STAGES], q_empty[Q_STAGES];
  unsigned char* sQ = align_1024(smem_raw);
  unsigned char* sK = sQ + Q_STAGES * Q_BYTES;
  unsigned char* sV = sK + KV_BYTES;
  if (threadIdx.x == 0) {
    mbar_init(&kv_full, 128);  // every producer thread once its copies land
    for (int i = 0; i < Q_STAGES; ++i) {
      mbar_init(&q_full[i], 128);
      mbar_init(&q_empty[i], 2);  // each consumer's storing thread
    }
  }
  __syncthreads();
  const QueryTile item = query_tile(p);
  if (item.nq == 0) return;  // a spare entry of the item list
  const uint32_t chunk = p.tiles[blockIdx.x].y, first = p.k_starts[chunk];
  const int nk = (int)(p.k_starts[chunk + 1] - first);
  using Regs = RegisterSplit<2>;
  if (threadIdx.x < 128) {
    regs_shrink<Regs::PRODUCER>();
    produce_chunk<T, D, NKT>(p, item, first, nk, sQ, sK, sV, &kv_full, q_full, q_empty);
  } else {
    regs_grow<Regs::CONSUMER>();
    consume_chunk<T, D>(p, map, item, (threadIdx.x >> 7) - 1, nk, sQ, sK, sV, &kv_full, q_full, q_empty);
  }
}

// NKT key tiles (chunks of at most 128 * NKT keys); one CTA of three warpgroups per SM.
#define INSTANTIATE_CHUNK(T, NAME, D, NKT)                                                              \
  extern "C" __global__ void __launch_bounds__(384, 1) vmoba_chunk_sm90_##NAME##_d##D##_nkt##NKT(      \
      const __grid_constant__ Sm90Args<AttnParams, TileMap> args) {                                    \
    vmoba_chunk_sm90<T, D, NKT>(args.p, args.maps);                                                     \
  }
#define INSTANTIATE_CHUNK_ALL(T, NAME) \
  INSTANTIATE_CHUNK(T, NAME, 64, 1)    \
  INSTANTIATE_CHUNK(T, NAME, 64, 2)    \
  INSTANTIATE_CHUNK(T, NAME, 128, 1)   \
  INSTANTIATE_CHUNK(T, NAME, 128, 2)
INSTANTIATE_CHUNK_ALL(__nv_bfloat16, bf16)
INSTANTIATE_CHUNK_ALL(__half, f16)

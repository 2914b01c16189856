// Block-sparse flash attention, forward, for Hopper (sm_90a): the plan walk of
// attention_params.cuh with warpgroup MMAs (wgmma) that read K and V (and Q, or Q from registers)
// straight from 128-byte-swizzled shared memory. One CTA per (batch*head, query block of up to 64*WG rows),
// warp-specialised: warpgroup 0 produces, copying the key stream's tiles of BN rows (which span
// key blocks where they are small or partial) into a ring of STAGES K/V buffers and signalling
// each through an mbarrier; it hands most of its registers to the WG consumer warpgroups, each of
// which owns 64 query rows. A consumer overlaps its tensor-core work with its softmax: tile j's
// S = Q K^T (SS wgmma, both K-major; RS from Q in registers where one consumer takes 64-key
// tiles) is issued together with tile j-1's O += P V (RS wgmma, P from registers, V read
// MN-major from the same tile layout as K), and the softmax of S runs while the P V product is
// still on the tensor cores. Two consumers also take turns issuing (named barriers), so that
// one's softmax runs while the other's products do. Where the key order is the identity, the
// producer copies whole runs of keys by TMA (tma_sm90.cuh).
#include "attention_params.cuh"
#include "common.cuh"
#include "fwd_steps_sm90.cuh"
#include "softmax.cuh"
#include "sync_sm90.cuh"
#include "tiles_sm90.cuh"

// Consumer warpgroup c: its 64 query rows against every tile of the key stream.
template <typename T, int D, int WG, int BN, int STAGES>
__device__ __forceinline__ void consume(const AttnParams& p, const QueryTile& qt, int c, unsigned char* sQ,
                                        const unsigned char* sK, const unsigned char* sV, const int* tile_rows,
                                        uint64_t* full, uint64_t* empty) {
  constexpr int BM = 64 * WG, CH = D / 8, KV_BYTES = BN * D * 2;
  const int tid = threadIdx.x - 128, warp = (tid >> 5) & 3, lane = tid & 31;
  const T* qbase = reinterpret_cast<const T*>(p.q) + qt.b * p.q_strides[0] + qt.h * p.q_strides[1];
  QueryRows<D, BN> q{sQ, {}};
  if constexpr (QueryRows<D, BN>::IN_REGS) {
    load_a_rows_global<T, D>(q.frag, qbase, p.q_strides[2], qt.q_ord + qt.qs, qt.nq, c * 64);
  } else {
    auto off_q = [](int r, int ch) { return tile_off(BM, r, ch); };
    load_row_tile<T, BM, CH, 128 * WG>(p.q_strides[2], qt.q_ord, qt.qs, qt.nq, qbase, sQ, off_q, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_async_shared();
    named_sync(BAR_Q_READY, 128 * WG);
  }

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float s[BN / 2];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];
  __shared__ float wait_sink[4 * WG];
  uint32_t a[BN / 16][4];

  if (qt.keys.item < qt.keys.end) {
    if (WG == 2 && c == 1) named_arrive(BAR_TURN, 256);  // consumer 0 goes first
    // Tile 0: S only (O is still zero). After each wait, a proxy fence: the copies landed
    // through the generic proxy, and wgmma reads through the async one.
    mbar_wait(&full[0], 0);
    fence_async_shared();
    int rows = tile_rows[0];
    bool more = rows > 0;
    turn_begin<WG>(c);
    issue_qk<T, D, BM, BN>(s, q, sK, c);
    turn_end<WG>(c, more);
    wg_wait<0>();
    wg_pin<BN / 2>(s);
    softmax_tile<BN>(s, abs(rows), p.scale_log2, m, l, alpha);
    pack_a<T, BN>(a, s);
    int j = 1;
    for (; more; ++j) {
      const int stage = j % STAGES, prev = (j - 1) % STAGES;
      mbar_wait(&full[stage], (j / STAGES) & 1);
      fence_async_shared();
      rows = tile_rows[stage];
      more = rows > 0;
      turn_begin<WG>(c);
      issue_qk<T, D, BM, BN>(s, q, sK + stage * KV_BYTES, c);
      issue_pv<T, D, BN>(o, a, sV + prev * KV_BYTES);
      turn_end<WG>(c, more);
      wg_wait<1>();
      wg_pin<BN / 2>(s);
      softmax_tile<BN>(s, abs(rows), p.scale_log2, m, l, alpha);
      wg_wait_after<0>(l[0] + l[1], &wait_sink[warp + 4 * c]);  // the softmax overlaps O += P V
      wg_pin<D / 2>(o);
      wg_keep(a);
      if (lane == 0) mbar_arrive(&empty[prev]);
      rescale<D>(o, alpha);
      pack_a<T, BN>(a, s);
    }
    issue_pv<T, D, BN>(o, a, sV + ((j - 1) % STAGES) * KV_BYTES);
    wg_wait<0>();
    wg_pin<D / 2>(o);
    wg_keep(a);
  }

  write_rows<T, D>(p, qt, c, o, m, l);
}

template <typename T, int D, int WG, int BN, int STAGES>
__device__ __forceinline__ void bsattn_fwd_sm90(const Sm90Args<AttnParams, KvMaps>& args) {
  const AttnParams& p = args.p;
  constexpr int BM = 64 * WG, Q_BYTES = QueryRows<D, BN>::IN_REGS ? 0 : BM * D * 2, KV_BYTES = BN * D * 2;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ uint64_t full[STAGES], empty[STAGES];
  __shared__ int tile_rows[STAGES];
  unsigned char* smem = align_1024(smem_raw);
  unsigned char* sQ = Q_BYTES > 0 ? smem : nullptr;
  unsigned char* sK = smem + Q_BYTES;          // STAGES buffers
  unsigned char* sV = sK + STAGES * KV_BYTES;  // STAGES buffers
  if (threadIdx.x == 0) {
    for (int i = 0; i < STAGES; ++i) {
      mbar_init(&full[i], 129);     // every producer thread once its copies land, and the row count
      mbar_init(&empty[i], 4 * WG);  // every consumer warp
    }
  }
  __syncthreads();
  const QueryTile qt = query_tile(p);
  if (qt.nq == 0) return;  // a spare work tile of the gathered mode
  using Regs = RegisterSplit<WG>;
  if (threadIdx.x < 128) {
    regs_shrink<Regs::PRODUCER>();
    const uint32_t* k_ord = p.k_order + (p.k_per_head ? (size_t)qt.h * p.sk : 0);
    const T* kbase = reinterpret_cast<const T*>(p.k) + qt.b * p.k_strides[0] + qt.h * p.k_strides[1];
    const T* vbase = reinterpret_cast<const T*>(p.v) + qt.b * p.v_strides[0] + qt.h * p.v_strides[1];
    // The 128-key kernel copies runs of keys by TMA (dense and block-sparse) and walks the plan
    // (no shared memory left to stage its stream); the 64-key one, whose keys are mostly
    // permuted (VSA's cubes), stages its stream and copies chunk by chunk.
    StagedStream<BN>* staged = nullptr;
    if constexpr (BN == 64) staged = staged_storage<BN>();
    produce_tiles<T, D, BN, STAGES, BN == 128>(p, qt.keys, k_ord, kbase, vbase, sK, sV, tile_rows, full, empty,
                                               [](int, const auto&, int) {}, KvTma{&args.maps, qt.b, qt.h}, staged);
  } else {
    regs_grow<Regs::CONSUMER>();
    consume<T, D, WG, BN, STAGES>(p, qt, (threadIdx.x >> 7) - 1, sQ, sK, sV, tile_rows, full, empty);
  }
}

// WG consumer warpgroups plus the producer; one CTA per SM with two consumers, two with one.
#define INSTANTIATE_SM90(T, NAME, D, WG, BN, STAGES)                                         \
  extern "C" __global__ void __launch_bounds__((WG + 1) * 128, 3 - WG)                       \
      bsattn_fwd_sm90_##NAME##_d##D##_wg##WG##_bn##BN##_st##STAGES(                         \
          const __grid_constant__ Sm90Args<AttnParams, KvMaps> args) {                       \
    bsattn_fwd_sm90<T, D, WG, BN, STAGES>(args);                                             \
  }
// Query tiles of 64 rows (one consumer, in registers) with 64-key tiles, or 128 rows (two
// consumers, in shared memory) with 128-key tiles; the ring holds three K/V tiles.
#define INSTANTIATE_SM90_ALL(T, NAME)        \
  INSTANTIATE_SM90(T, NAME, 64, 1, 64, 3)    \
  INSTANTIATE_SM90(T, NAME, 128, 1, 64, 3)   \
  INSTANTIATE_SM90(T, NAME, 64, 2, 128, 3)   \
  INSTANTIATE_SM90(T, NAME, 128, 2, 128, 3)
INSTANTIATE_SM90_ALL(__nv_bfloat16, bf16)
INSTANTIATE_SM90_ALL(__half, f16)

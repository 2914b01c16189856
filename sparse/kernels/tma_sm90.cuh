// Tensor-memory-accelerator (TMA) copies of key tiles for the Hopper forward: where the key
// order is the identity, a tile of contiguous tokens is two bulk tensor copies per tensor (one
// per 64-channel column block), issued by one producer thread and counted by the tile's
// mbarrier in bytes, instead of a cp.async per 16-byte chunk from every producer thread. The
// 128-byte swizzle of the copies is the layout `tile_off` describes. Also the bulk operations
// by which kernels send staged rows out of shared memory: the one-pass backward adds its dq
// rows (a tile of contiguous query tokens by tensor reductions through a map of the dq sum,
// other tiles row by row), and VMoBA's chunk-stationary kernel stores its partial output rows
// by tensor stores through a map of them.
#pragma once
#include <cuda.h>
#include <stdint.h>

#include "sync_sm90.cuh"

// K and V as 4-d tensor maps (channels, then the three outer dims ordered by stride), boxes of
// 64 channels x BN tokens; `role[i]` says what map dim i + 1 is (0 batch, 1 head, 2 token).
// `enabled` is 0 where the maps are not set (a permuted key order, other dtypes, strides TMA
// cannot take).
struct KvMaps {
  CUtensorMap k, v;
  int role[3];
  int enabled;
};
static_assert(sizeof(KvMaps) == 384 && alignof(KvMaps) == 128, "KvMaps layout (sparse/src/cuda.rs)");

// The one parameter of a kernel that reads tensor maps: its parameter struct and its maps
// (Sm90Args of sparse/src/tma.rs): the forward's plan walk and key tiles' maps, the one-pass
// backward's passes and dq sum, VMoBA's gathered mode and partial rows.
template <typename P, typename M>
struct Sm90Args {
  P p;
  M maps;
};

// Copies the box at (c0, c1, c2, c3) of `map` to `dst`, completing its bytes on `bar`.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(shared_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(shared_addr(bar))
      : "memory");
}

// Where a CTA's key tiles come from by TMA: the maps, and the batch and head of its keys.
struct KvTma {
  const KvMaps* maps;  // null: no TMA (the backward's producers)
  int b, h;

  // Issues the copies of K and V rows [token, token + BN) (rows past the tensor's end read as
  // zeros) into tiles of BN rows, D / 64 column blocks each, and expects their bytes on `bar`
  // (this thread's arrival).
  template <int D, int BN>
  __device__ __forceinline__ void load(int token, unsigned char* dk, unsigned char* dv, uint64_t* bar) const {
    int c[3];
#pragma unroll
    for (int i = 0; i < 3; ++i) c[i] = maps->role[i] == 0 ? b : maps->role[i] == 1 ? h : token;
    mbar_arrive_expect_tx(bar, 2 * BN * D * 2);
#pragma unroll
    for (int blk = 0; blk < D / 64; ++blk) {
      tma_load_4d(dk + blk * BN * 128, &maps->k, blk * 64, c[0], c[1], c[2], bar);
      tma_load_4d(dv + blk * BN * 128, &maps->v, blk * 64, c[0], c[1], c[2], bar);
    }
  }
};

// Adds `bytes` (a multiple of 16) of f32 values at `src` (shared memory) into `dst` (global, 16-byte
// aligned) elementwise, asynchronously, as one bulk reduction in this thread's current bulk group.
__device__ __forceinline__ void bulk_add_f32(float* dst, const float* src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(shared_addr(src)), "r"(bytes)
               : "memory");
}
// Closes this thread's current bulk group.
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's bulk groups still read their sources (`bulk_wait_read`)
// or are incomplete (`bulk_wait`).
template <int N> __device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N> __device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

// A tensor map with the 128-byte swizzle (boxes in the layout `tile_off` describes) and
// whether it is set: the one-pass backward's f32 dq sum [B * H, S, 128] (channels, tokens,
// batch x head; boxes of 32 channels x 64 tokens), where a map that could not be encoded sends
// rows one by one; VMoBA's partial output rows [slots, D] (boxes of 64 channels x 64 rows).
struct TileMap {
  CUtensorMap map;
  int enabled;
};
static_assert(sizeof(TileMap) == 256 && alignof(TileMap) == 128, "TileMap layout (sparse/src/tma.rs)");

// Adds the box at (c0, c1, c2) of `map` from `src` (shared memory, the map's swizzled box
// layout) into global memory, as one bulk tensor reduction in this thread's current bulk
// group; elements past the tensor's bounds are skipped.
__device__ __forceinline__ void tma_add_3d(const CUtensorMap* map, const void* src, int c0, int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(shared_addr(src))
      : "memory");
}

// Stores the box at (c0, c1) of `map` from `src` (shared memory, the map's swizzled box layout)
// as one bulk tensor store in this thread's current bulk group; rows past the tensor's bounds
// are skipped.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, const void* src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(shared_addr(src))
               : "memory");
}

// Copies `bytes` (a multiple of 16) from `src` (shared memory, 16-byte aligned) to `dst` (global,
// 16-byte aligned) as one bulk copy in this thread's current bulk group.
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(shared_addr(src)),
               "r"(bytes)
               : "memory");
}

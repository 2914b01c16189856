// The transpose of uniform block lists on the GPU, for the backward's dk/dv pass: from
// `indices` [groups * nq, k] (row (g, qb) lists k distinct key blocks) to a CSR over (g, kb)
// listing the query blocks qb that attend to kb, in ascending qb order (what the host's
// BlockMask::transpose makes, so the result is deterministic). Query rows are cut into chunks:
// 1. chunk_counts: per (g, chunk, kb), how many of the chunk's rows list kb;
// 2. chunk_bases: one thread per list (g, kb): each count becomes the chunk's offset inside
//    the list, and the list's size is kept in `offsets`;
// 3. list_offsets: the sizes scanned into the CSR offsets (one CTA);
// 4. chunk_fill: one warp per chunk walks its rows in order and places each entry.
// Chunks are short (the host picks their rows), so that many warps fill at once.
#include <stdint.h>

struct ListShape {
  int groups, nq, k, nk;  // lists (g, qb) of k key blocks out of nk
  int chunk_rows, chunks;  // query rows per chunk, chunks per group
};
#include "abi/ListShape.h"  // checks the layout against sparse/src/kernel_params.rs

extern "C" __global__ void chunk_counts(const uint32_t* indices, ListShape s, uint32_t* counts) {
  const int c = blockIdx.x, g = blockIdx.y;
  const int first = c * s.chunk_rows, rows = min(s.chunk_rows, s.nq - first);
  const uint32_t* at = indices + ((size_t)g * s.nq + first) * s.k;
  uint32_t* mine = counts + ((size_t)g * s.chunks + c) * s.nk;
  for (int e = threadIdx.x; e < rows * s.k; e += blockDim.x) atomicAdd(&mine[at[e]], 1u);
}

// One thread per list (g, kb): an exclusive scan of its counts over chunks (in place); the
// list's size goes to offsets[g * nk + kb].
extern "C" __global__ void chunk_bases(uint32_t* counts, ListShape s, uint32_t* offsets) {
  const int l = blockIdx.x * blockDim.x + threadIdx.x;
  if (l >= s.groups * s.nk) return;
  const int g = l / s.nk, kb = l % s.nk;
  uint32_t* at = counts + (size_t)g * s.chunks * s.nk + kb;
  uint32_t run = 0;
  for (int c = 0; c < s.chunks; ++c, at += s.nk) {
    const uint32_t n = *at;
    *at = run;
    run += n;
  }
  offsets[l] = run;
}

// One CTA of 1024 threads: the lists' sizes (in offsets, (g, kb) order) scanned in place into
// the CSR offsets [groups * nk + 1].
extern "C" __global__ void __launch_bounds__(1024) list_offsets(uint32_t* offsets, ListShape s) {
  __shared__ uint32_t partial[1024];
  const int lists = s.groups * s.nk, t = threadIdx.x;
  const int per = (lists + blockDim.x - 1) / blockDim.x, begin = min(t * per, lists), end = min(begin + per, lists);
  uint32_t mine = 0;
  for (int l = begin; l < end; ++l) mine += offsets[l];
  partial[t] = mine;
  __syncthreads();
  for (int step = 1; step < (int)blockDim.x; step <<= 1) {  // inclusive scan of the partials
    const uint32_t add = t >= step ? partial[t - step] : 0;
    __syncthreads();
    partial[t] += add;
    __syncthreads();
  }
  uint32_t base = partial[t] - mine;
  for (int l = begin; l < end; ++l) {
    const uint32_t size = offsets[l];
    offsets[l] = base;
    base += size;
  }
  if (t == blockDim.x - 1) offsets[lists] = partial[t];
}

// One warp per (chunk, g): rows in order, each row's entries by the lanes (a row's key blocks
// are distinct, so no two lanes share a list); `bases` (the chunk offsets) count up as entries
// land.
extern "C" __global__ void chunk_fill(const uint32_t* indices, ListShape s, uint32_t* bases, const uint32_t* offsets,
                                      uint32_t* out) {
  const int c = blockIdx.x, g = blockIdx.y, lane = threadIdx.x;
  const int first = c * s.chunk_rows, rows = min(s.chunk_rows, s.nq - first);
  uint32_t* mine = bases + ((size_t)g * s.chunks + c) * s.nk;
  for (int r = 0; r < rows; ++r) {
    const uint32_t* row = indices + ((size_t)g * s.nq + first + r) * s.k;
    for (int j = lane; j < s.k; j += 32) {
      const uint32_t kb = row[j];
      out[offsets[(size_t)g * s.nk + kb] + mine[kb]] = first + r;
      mine[kb] += 1;
    }
    __syncwarp();
  }
}

// Synchronisation for the warp-specialised Hopper kernel: shared-memory barriers (mbarrier)
// between the producer warpgroup and the consumers, named barriers between consumer
// warpgroups, and register reallocation between warpgroups (see the PTX ISA for each).
#pragma once
#include <stdint.h>

__device__ __forceinline__ uint32_t shared_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The first 1024-byte-aligned byte of dynamic shared memory at or after `raw` (the 128-byte
// swizzle's alignment). An offset from `raw`, not an integer cast back to a pointer: the
// compiler keeps knowing the result is shared memory, so that accesses through it are
// shared-memory instructions rather than generic ones.
__device__ __forceinline__ unsigned char* align_1024(unsigned char* raw) {
  return raw + ((1024u - (shared_addr(raw) & 1023u)) & 1023u);
}

// Sets up a barrier whose phases complete after `count` arrivals each.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_addr(bar)), "r"(count) : "memory");
}

// Blocks until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(shared_addr(bar)),
      "r"(parity)
      : "memory");
}

// One arrival (release semantics).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_addr(bar)) : "memory");
}

// One arrival, made once all of this thread's earlier cp.async copies have landed (the barrier's
// count includes it: "noinc").
__device__ __forceinline__ void mbar_arrive_after_copies(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_addr(bar)) : "memory");
}

// Makes one arrival on `bar` and raises the bytes its phase waits for by `bytes` (a TMA
// copy's completion counts them down).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_addr(bar)), "r"(bytes)
               : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads: wait, or only arrive.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Named barrier `id` that also returns whether `pred` holds on every one of the `threads`.
__device__ __forceinline__ bool named_sync_all(int id, int threads, bool pred) {
  uint32_t all;
  asm volatile(
      "{\n.reg .pred p, q;\n"
      "setp.ne.u32 p, %3, 0;\n"
      "bar.red.and.pred q, %1, %2, p;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(all)
      : "r"(id), "r"(threads), "r"((uint32_t)pred)
      : "memory");
  return all != 0;
}

// Sets this warpgroup's per-thread register count to N (a multiple of 8 in 24..256); all
// threads of the warpgroup execute it.
template <int N> __device__ __forceinline__ void regs_shrink() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void regs_grow() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

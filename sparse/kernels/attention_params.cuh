// Launch parameters shared by the block-sparse attention forward kernels.
#pragma once
#include <stdint.h>

struct AttnParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;           // [B, S, H, D], contiguous
  float* lse;          // [B * H, S] (natural log), or null
  long long q_sb, q_sh, q_ss;  // element strides of q over batch, head, token
  long long k_sb, k_sh, k_ss;
  long long v_sb, v_sh, v_ss;
  const uint32_t* q_order;   // slot -> token, [q_orders * S]
  const uint32_t* q_starts;  // query block boundaries in slots, [nqb + 1]
  const uint32_t* k_order;   // slot -> key token, [k_orders * SK]
  const uint32_t* k_starts;
  const uint32_t* offsets;   // CSR over (b * H + h) * nqb + qb
  const uint32_t* indices;   // key blocks
  int B, H, S, SK;           // S query tokens, SK key tokens
  int q_per_head, k_per_head;  // 1 when orders differ per head
  int nqb;
  int uniform_k;     // > 0: every list has this length and `offsets` is unused
  int all_keys;      // > 0: every query block attends to all `all_keys` key blocks
  float scale_log2;  // softmax scale * log2(e)
};

// Position in the sequence of 64-key tiles of a query block's key-block list.
struct TileCursor {
  uint32_t item, end;  // index into `indices`
  uint32_t offset;     // slot offset inside the current key block
};

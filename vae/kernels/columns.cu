// Training's flat-shift columns (see src/columns.rs) as one gather, and its adjoint as one
// gather-sum: channels-first frames [b, l, c, P] (P padded pixels per frame, rows of `row`) and
// columns [b * frames_out, taps * k * k * c, len] with
//   columns[b', fo, ((tap * k + ky) * k + kx) * c + ch, j] = frames[b', fo * stride + tap, ch,
//                                                                   start + ky * row + kx + j].
#include "vdit/convert.cuh"

struct ColumnParams {
  const void* input;   // the frames (gather) or the columns (adjoint)
  void* output;        // `total` elements, each written once
  long long total;
  long long pixels;    // P
  long long start;
  long long len;
  int frames;          // l
  int channels;        // c
  int taps;
  int kernel;          // k
  int row;
  int stride;
  int frames_out;
};
#include "abi/ColumnParams.h"  // checks the layout against vae/src/kernel_params.rs

// One thread per column element; reads and writes both run along j.
template <typename T>
__device__ __forceinline__ void shift_columns(const ColumnParams& p) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.total) return;
  const int c = p.channels, k = p.kernel;
  const long long rows = (long long)p.taps * k * k * c;
  const long long j = i % p.len;
  const long long r = (i / p.len) % rows;
  const long long nf = i / (p.len * rows);
  const int ch = (int)(r % c);
  const int offset = (int)(r / c);  // (tap * k + ky) * k + kx
  const int kx = offset % k, ky = (offset / k) % k, tap = offset / (k * k);
  const long long frame = (nf / p.frames_out) * p.frames + (nf % p.frames_out) * p.stride + tap;
  const T* frames = static_cast<const T*>(p.input);
  static_cast<T*>(p.output)[i] = frames[(frame * c + ch) * p.pixels + p.start + (long long)ky * p.row + kx + j];
}

// One thread per frame element: the sum of every column entry that copied it (zero where none
// did), accumulated in f32.
template <typename T>
__device__ __forceinline__ void shift_columns_adjoint(const ColumnParams& p) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.total) return;
  const int c = p.channels, k = p.kernel;
  const long long rows = (long long)p.taps * k * k * c;
  const long long q = i % p.pixels;
  const int ch = (int)((i / p.pixels) % c);
  const int t = (int)((i / (p.pixels * c)) % p.frames);
  const long long b = i / (p.pixels * c * p.frames);
  const T* columns = static_cast<const T*>(p.input);
  float sum = 0.f;
  for (int tap = 0; tap < p.taps; ++tap) {
    const int shifted = t - tap;
    if (shifted < 0 || shifted % p.stride != 0) continue;
    const int fo = shifted / p.stride;
    if (fo >= p.frames_out) continue;
    const T* base = columns + (b * p.frames_out + fo) * rows * p.len;
    for (int ky = 0; ky < k; ++ky)
      for (int kx = 0; kx < k; ++kx) {
        const long long j = q - p.start - (long long)ky * p.row - kx;
        if (j < 0 || j >= p.len) continue;
        const long long r = ((long long)(tap * k + ky) * k + kx) * c + ch;
        sum += to_f32(base[r * p.len + j]);
      }
  }
  static_cast<T*>(p.output)[i] = from_f32<T>(sum);
}

#define COLUMN_KERNELS(T, NAME)                                                                             \
  extern "C" __global__ void __launch_bounds__(256) shift_columns_##NAME(const ColumnParams p) {            \
    shift_columns<T>(p);                                                                                    \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(256) shift_columns_adjoint_##NAME(const ColumnParams p) {    \
    shift_columns_adjoint<T>(p);                                                                            \
  }
COLUMN_KERNELS(__nv_bfloat16, bf16)
COLUMN_KERNELS(__half, f16)
COLUMN_KERNELS(float, f32)

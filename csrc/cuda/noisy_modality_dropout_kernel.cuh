// Raw CUDA kernels of noisy_modality_dropout (semantics: csrc/ops.cpp,
// mmfast/ops/reference.py::noisy_modality_dropout). No torch: launched from
// csrc/cuda/noisy_modality_dropout.cu. The random streams come from the shared
// csrc/common/philox.h, so keep and sigma_used equal the reference bit for bit and y equals it
// up to float32 rounding of log and the hardware cos / sin (abs error < 2^-21.4 times the
// Box-Muller radius, as in the Triton kernel).
//
// Two kernels: per-sample draws (keep, sigma_used: B threads' worth), then the elementwise
// y = keep ? x + sigma n : fill over the flattened x, where element e's normal is lane e % 4 of
// Philox block e / 4. A thread owns whole chunks of CH = max(4, 16 bytes of T) elements, i.e.
// whole noise blocks read and written with 16-byte vectors (when x and y are 16-byte aligned;
// the last partial chunk and misaligned tensors use scalar accesses). The chunk's row is
// tracked incrementally (no 64-bit division per chunk), keep / sigma_used are loaded once per
// row a chunk touches, and a chunk of dropped samples neither reads x nor draws noise.
#pragma once

#if defined(__USE_FAST_MATH__)
#error "noisy_modality_dropout must not be built with --use_fast_math: it changes logf"
#endif

#include "common/philox.h"
#include "cuda_utils.cuh"

namespace mmfast {
namespace cuda {

// The stream offset: a 0-d int64 tensor on the device (BRIEF contract 1), read by the kernels
// themselves, so no host sync and a captured CUDA graph replays with the tensor's new value.
// Its two's-complement bits, as the CPU kernel.
MMFAST_DEVICE uint64_t load_offset(const int64_t* offset) {
  return static_cast<uint64_t>(*offset);
}

// keep_b = u0_b >= p_drop_b; sigma_used_b = sigma_b (or sigma_0 when shared), or with levels
// sigma[min(floor(u1_b K), K - 1)], u1_b K rounded to float32 as the reference does.
// p_drop and sigma with one element are shared by every row. A sample whose p_drop is outside
// [0, 1] (or NaN) or whose sigma (the level drawn) is NaN, infinite or negative is poisoned:
// keep = false, sigma_used = NaN, and the element kernel writes NaN (contract 2).
__global__ void noise_per_sample_kernel(const float* __restrict__ p_drop, int64_t p_numel,
                                        const float* __restrict__ sigma, int64_t sigma_numel,
                                        bool sigma_levels, uint64_t seed,
                                        const int64_t* __restrict__ offset_ptr, int64_t B,
                                        bool* __restrict__ keep,
                                        float* __restrict__ sigma_used) {
  const uint64_t offset = load_offset(offset_ptr);
  for (int64_t b = global_thread_index(); b < B; b += global_thread_count()) {
    const Philox4 r = philox_sample(static_cast<uint64_t>(b), offset, seed);
    const float p = p_drop[p_numel == 1 ? 0 : b];
    float s;
    if (sigma_levels) {
      const float scaled = __fmul_rn(philox_uniform(r.v[1]), static_cast<float>(sigma_numel));
      const int64_t level = static_cast<int64_t>(scaled);
      s = sigma[level < sigma_numel - 1 ? level : sigma_numel - 1];
    } else {
      s = sigma[sigma_numel == 1 ? 0 : b];
    }
    const bool valid = p >= 0.0f && p <= 1.0f && is_valid_scale(s);
    keep[b] = valid && philox_uniform(r.v[0]) >= p;
    sigma_used[b] = valid ? s : NAN;
  }
}

template <typename T>
__host__ __device__ constexpr int noise_chunk_elems() {
  return vector_width<T>() > 4 ? vector_width<T>() : 4;
}

// x, y: numel elements, rows of row_elems; keep / sigma_used from noise_per_sample_kernel.
// Noise blocks whose elements all belong to dropped rows draw nothing.
template <typename T>
__global__ void noisy_modality_dropout_kernel(const T* __restrict__ x,
                                              const bool* __restrict__ keep,
                                              const float* __restrict__ sigma_used,
                                              uint64_t seed,
                                              const int64_t* __restrict__ offset_ptr,
                                              opmath_t<T> fill,
                                              int64_t numel, int64_t row_elems, bool vectorized,
                                              T* __restrict__ y) {
  using A = opmath_t<T>;
  constexpr int kVec = vector_width<T>();
  constexpr int kChunk = noise_chunk_elems<T>();
  static_assert(kChunk % 4 == 0 && kChunk % kVec == 0, "a chunk holds whole blocks and vectors");
  const uint64_t offset = load_offset(offset_ptr);
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  // The row of this thread's chunk start, tracked incrementally: two 64-bit divisions per
  // thread, none per chunk. (row, rem): the chunk starts at element rem of row `row`.
  const int64_t first = global_thread_index();
  const int64_t stride = global_thread_count() * kChunk;
  const int64_t step_rows = stride / row_elems;
  const int64_t step_rem = stride - step_rows * row_elems;
  int64_t row = first * kChunk / row_elems;
  int64_t rem = first * kChunk - row * row_elems;
  for (int64_t chunk = first; chunk < chunks; chunk += global_thread_count()) {
    const int64_t base = chunk * kChunk;  // a multiple of 4: noise block base / 4
    const int count = numel - base < kChunk ? static_cast<int>(numel - base) : kChunk;
    const bool full_vectors = vectorized && count == kChunk;

    // keep / sigma_used: loaded once per row the chunk touches, not per element.
    bool kept[kChunk];
    float sig[kChunk];
    bool any_kept = false;
    {
      int64_t r = row;
      int64_t left = row_elems - rem;  // elements of row r from the chunk start on
      bool k = keep[r];
      float sg = sigma_used[r];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        kept[i] = false;
        sig[i] = 0.0f;
        if (i < count) {
          while (i >= left) {  // rows can be shorter than a chunk
            ++r;
            left += row_elems;
            k = keep[r];
            sg = sigma_used[r];
          }
          kept[i] = k;
          sig[i] = sg;
          any_kept = any_kept || k;
        }
      }
    }
    // x is read only when some element of the chunk is kept (whole vectors when aligned).
    A xv[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) xv[i] = A(0);
    if (any_kept) {
#pragma unroll
      for (int v = 0; v < kChunk / kVec; ++v) {
        load_opmath<T, kVec>(x + base + v * kVec, full_vectors, count - v * kVec, xv + v * kVec);
      }
    }
    A out[kChunk];
#pragma unroll
    for (int q = 0; q < kChunk / 4; ++q) {
      const bool block_kept =
          kept[q * 4] || kept[q * 4 + 1] || kept[q * 4 + 2] || kept[q * 4 + 3];
      float normal[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (block_kept) philox_normal4(static_cast<uint64_t>(base / 4 + q), offset, seed, normal);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = q * 4 + j;
        // sigma * n rounded to float32 first (no fma contraction), then added in opmath.
        // Dropped: fill, or NaN for a poisoned sample (sigma_used NaN).
        const A dropped = sig[i] != sig[i] ? A(NAN) : fill;
        out[i] = kept[i] ? xv[i] + static_cast<A>(__fmul_rn(sig[i], normal[j])) : dropped;
      }
    }
#pragma unroll
    for (int v = 0; v < kChunk / kVec; ++v) {
      store_opmath<T, kVec>(y + base + v * kVec, full_vectors, count - v * kVec, out + v * kVec);
    }
    row += step_rows;
    rem += step_rem;
    if (rem >= row_elems) {
      rem -= row_elems;
      ++row;
    }
  }
}

}  // namespace cuda
}  // namespace mmfast

#define MMFAST_NOISY_MODALITY_DROPOUT_KERNEL_LIST(T)          \
  {                                                           \
    MMFAST_KERNEL_ADDR(noise_per_sample_kernel),              \
        MMFAST_KERNEL_ADDR(noisy_modality_dropout_kernel<T>)  \
  }

// Philox4x32-10 counter-based RNG, uint32 -> uniform and Box-Muller, shared by the CPU and CUDA
// kernels of noisy_modality_dropout. Dependency-free (no torch, no curand): the CUDA kernel
// headers that include it compile with plain nvcc. The stream layout is defined in
// mmfast/ops/reference.py (philox_noise_counters / philox_sample_counters) and matches
// triton.language.philox, so every backend draws the same numbers for the same (seed, offset).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MMFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MMFAST_HOST_DEVICE inline
#endif

namespace mmfast {

struct Philox4 {
  uint32_t v[4];
};

MMFAST_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// key = (seed lo, seed hi); counter = (c0, c1, c2, c3).
MMFAST_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

constexpr uint32_t kSampleStreamBit = 0x80000000u;

// Element-noise stream: block i (= element index / 4), offset.
MMFAST_HOST_DEVICE Philox4 philox_noise_block(uint64_t block, uint64_t offset, uint64_t seed) {
  return philox4x32_10(static_cast<uint32_t>(block),
                       static_cast<uint32_t>(block >> 32) & 0x7FFFFFFFu,
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), seed);
}

// Per-sample stream (v[0]: keep draw, v[1]: sigma-level draw) for row b.
MMFAST_HOST_DEVICE Philox4 philox_sample(uint64_t row, uint64_t offset, uint64_t seed) {
  return philox4x32_10(static_cast<uint32_t>(row),
                       (static_cast<uint32_t>(row >> 32) & 0x7FFFFFFFu) | kSampleStreamBit,
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), seed);
}

// uint32 -> (0, 1): (r >> 8) * 2^-24 + 2^-25, exact in float32 (the product is exact, so an
// fma and a separate multiply-add round identically).
MMFAST_HOST_DEVICE float philox_uniform(uint32_t r) {
  return static_cast<float>(r >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
}

// Box-Muller on one lane pair: n0 = sqrt(-2 ln u0) cos(2 pi u1), n1 = ... sin(2 pi u1).
// On a GPU, cos / sin are the hardware approximations (__cosf / __sinf: one MUFU op each, abs
// error < 2^-21.4 on [-pi, pi]) of theta taken in [-pi, pi), as the Triton kernel does: the
// precise versions (range reduction, polynomial, a large-argument fallback) cost tens of
// instructions per pair in a kernel that must run at memory speed. log stays precise (the
// approximate one loses relative accuracy for u0 near 1). The CPU keeps libm's cosf / sinf.
MMFAST_HOST_DEVICE void box_muller(float u0, float u1, float* n0, float* n1) {
  const float radius = sqrtf(-2.0f * logf(u0));
#if defined(__CUDA_ARCH__)
  const float theta = 6.28318530717958647692f * (u1 >= 0.5f ? u1 - 1.0f : u1);  // u1 - 1 exact
  *n0 = radius * __cosf(theta);
  *n1 = radius * __sinf(theta);
#else
  const float theta = 6.28318530717958647692f * u1;
  *n0 = radius * cosf(theta);
  *n1 = radius * sinf(theta);
#endif
}

// The four N(0, 1) draws of noise block `block` (elements 4*block .. 4*block+3).
MMFAST_HOST_DEVICE void philox_normal4(uint64_t block, uint64_t offset, uint64_t seed,
                                       float out[4]) {
  const Philox4 r = philox_noise_block(block, offset, seed);
  box_muller(philox_uniform(r.v[0]), philox_uniform(r.v[1]), &out[0], &out[1]);
  box_muller(philox_uniform(r.v[2]), philox_uniform(r.v[3]), &out[2], &out[3]);
}

}  // namespace mmfast

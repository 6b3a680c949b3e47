// Device helpers shared by the raw CUDA kernels in csrc/cuda/*_kernel.cuh: dtype traits
// (storage type -> opmath type and explicit conversions), 16-byte vector load/store, grid-stride
// indexing in 64 bits, lane-group reductions and NaN-aware arg-min/arg-max.
//
// No torch header here: the kernel headers compile with plain `nvcc -c -arch=sm_90` in CI
// (tests/cuda/test_nvcc_compile.py). Conversions are explicit intrinsics because torch's build
// passes -D__CUDA_NO_HALF_CONVERSIONS__ / -D__CUDA_NO_BFLOAT16_CONVERSIONS__ to nvcc.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#define MMFAST_DEVICE __device__ __forceinline__

// Each <op>_kernel.cuh defines MMFAST_<OP>_KERNEL_LIST(T): a braced list of the addresses of
// every kernel its launcher can pick for storage type T, expanded inside namespace
// mmfast::cuda. Referencing a kernel instantiates it, so tests/cuda/test_nvcc_compile.py
// compiles each header for float, double, __half and __nv_bfloat16 with plain nvcc.
#define MMFAST_KERNEL_ADDR(...) reinterpret_cast<const void*>(&__VA_ARGS__)

// __launch_bounds__ in CUDA compilation only (the host emulation of tests/cuda builds the kernel
// headers as plain C++).
#if defined(__CUDACC__)
#define MMFAST_LAUNCH_BOUNDS(threads, min_blocks) __launch_bounds__(threads, min_blocks)
#else
#define MMFAST_LAUNCH_BOUNDS(threads, min_blocks)
#endif

namespace mmfast {
namespace cuda {

// DESIGN.md: M in 1..8. Kernels keep per-modality state in fixed-size register arrays.
constexpr int kMaxModalities = 8;
constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kVectorBytes = 16;

// ------------------------------------------------------------------------------ dtype traits
// opmath: float64 for double, float32 for float / half / bfloat16 (csrc/ops.cpp conventions).
template <typename T>
struct ScalarTraits;

template <>
struct ScalarTraits<float> {
  using opmath = float;
  static MMFAST_DEVICE float to_opmath(float v) { return v; }
  static MMFAST_DEVICE float from_opmath(float v) { return v; }
};

template <>
struct ScalarTraits<double> {
  using opmath = double;
  static MMFAST_DEVICE double to_opmath(double v) { return v; }
  static MMFAST_DEVICE double from_opmath(double v) { return v; }
};

template <>
struct ScalarTraits<__half> {
  using opmath = float;
  static MMFAST_DEVICE float to_opmath(__half v) { return __half2float(v); }
  static MMFAST_DEVICE __half from_opmath(float v) { return __float2half_rn(v); }
};

template <>
struct ScalarTraits<__nv_bfloat16> {
  using opmath = float;
  static MMFAST_DEVICE float to_opmath(__nv_bfloat16 v) { return __bfloat162float(v); }
  static MMFAST_DEVICE __nv_bfloat16 from_opmath(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
using opmath_t = typename ScalarTraits<T>::opmath;

template <typename T>
MMFAST_DEVICE opmath_t<T> to_opmath(T v) {
  return ScalarTraits<T>::to_opmath(v);
}

template <typename T>
MMFAST_DEVICE T from_opmath(opmath_t<T> v) {
  return ScalarTraits<T>::from_opmath(v);
}

template <typename A>
MMFAST_DEVICE A positive_infinity() {
  return static_cast<A>(INFINITY);
}

// Neither NaN nor +-inf (no <cmath> isfinite in device code under every toolchain).
template <typename A>
MMFAST_DEVICE bool is_finite_value(A v) {
  return v - v == A(0);
}

// A weight / Lipschitz value / sigma the kernels may use (BRIEF contract 2): finite, >= 0.
template <typename A>
MMFAST_DEVICE bool is_valid_scale(A v) {
  return is_finite_value(v) && v >= A(0);
}

// Explicit float / double overloads (no reliance on <cmath> overload resolution in device code).
MMFAST_DEVICE float opmath_sqrt(float v) { return sqrtf(v); }
MMFAST_DEVICE double opmath_sqrt(double v) { return sqrt(v); }
MMFAST_DEVICE float opmath_pow(float a, float b) { return powf(a, b); }
MMFAST_DEVICE double opmath_pow(double a, double b) { return pow(a, b); }

// --------------------------------------------------------------------------- vector access
// Elements per 16-byte vector: 4 float, 8 half / bfloat16, 2 double.
template <typename T>
__host__ __device__ constexpr int vector_width() {
  return kVectorBytes / static_cast<int>(sizeof(T));
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vector {
  T val[N];
};

// Callers guarantee `p` is aligned to sizeof(T) * N (see is_aligned).
template <typename T, int N>
MMFAST_DEVICE Vector<T, N> load_vector(const T* p) {
  return *reinterpret_cast<const Vector<T, N>*>(p);
}

template <typename T, int N>
MMFAST_DEVICE void store_vector(T* p, const Vector<T, N>& v) {
  *reinterpret_cast<Vector<T, N>*>(p) = v;
}

// Loads N consecutive elements into opmath registers: one vector load when `vectorized`,
// else N scalar loads of which only the first `count` are read (tails, misaligned tensors).
template <typename T, int N>
MMFAST_DEVICE void load_opmath(const T* p, bool vectorized, int count, opmath_t<T> out[N]) {
  if (vectorized) {
    const Vector<T, N> v = load_vector<T, N>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_opmath(v.val[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = i < count ? to_opmath(p[i]) : opmath_t<T>(0);
  }
}

template <typename T, int N>
MMFAST_DEVICE void store_opmath(T* p, bool vectorized, int count, const opmath_t<T> in[N]) {
  if (vectorized) {
    Vector<T, N> v;
#pragma unroll
    for (int i = 0; i < N; ++i) v.val[i] = from_opmath<T>(in[i]);
    store_vector<T, N>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i < count) p[i] = from_opmath<T>(in[i]);
    }
  }
}

__host__ __device__ __forceinline__ bool is_aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// ------------------------------------------------------------------------ grid-stride loops
// 64-bit indices throughout: tensors here routinely exceed 2^31 elements.
MMFAST_DEVICE int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

MMFAST_DEVICE int64_t global_thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Rows are owned by aligned groups of `lanes` (a power of two <= 32) threads of one warp, so a
// warp holds 32 / lanes rows at a time. Kernels that shuffle across a group run their row loop
// uniformly across the warp with warp_active (every lane runs the same iterations; `row < rows`
// says whether its own row exists), which keeps the full-warp shuffles of group_sum and the
// group reductions legal; kernels without shuffles may simply loop while row < rows.
struct LaneGroup {
  int lanes;          // threads per row
  int lane;           // this thread's index inside its group
  int group_in_warp;  // this group's index inside its warp
  int64_t first_row;  // the row of this thread's group in the first iteration
  int64_t row_step;   // rows advanced per iteration by the whole grid

  MMFAST_DEVICE static LaneGroup make(int lanes) {
    const int64_t warp = global_thread_index() / kWarpSize;
    const int64_t warps = global_thread_count() / kWarpSize;
    const int rows_per_warp = kWarpSize / lanes;
    const int lane_in_warp = static_cast<int>(threadIdx.x % kWarpSize);
    const int group = lane_in_warp / lanes;
    return LaneGroup{lanes, lane_in_warp % lanes, group, warp * rows_per_warp + group,
                     warps * rows_per_warp};
  }

  // Loop condition shared by the whole warp: true while the warp's first group has a row.
  // Usage: for (row = g.first_row; g.warp_active(row, rows); row += g.row_step) { active =
  // row < rows; ... }
  MMFAST_DEVICE bool warp_active(int64_t row, int64_t rows) const {
    return row - group_in_warp < rows;
  }
};

// Sum over an aligned group of `lanes` threads (power of two <= 32); every lane of the warp
// must call it, and every lane of a group gets the group's sum.
template <typename A>
MMFAST_DEVICE A group_sum(A v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullWarpMask, v, offset);
  }
  return v;
}

// ------------------------------------------------------------- arg-min / arg-max semantics
// torch.argmax / argmin: NaN counts as the extreme (the first NaN wins); ties keep the lowest
// index. Scanning indices in increasing order with these predicates reproduces that.
template <typename A>
MMFAST_DEVICE bool beats_max(A v, A best) {
  return v > best || (v != v && best == best);
}

template <typename A>
MMFAST_DEVICE bool beats_min(A v, A best) {
  return v < best || (v != v && best == best);
}

// Should candidate (key_b, idx_b) replace (key_a, idx_a)? idx < 0 means "no candidate". Used to
// merge per-lane winners whose index sets interleave, hence the explicit index tie-break.
template <bool kMax, typename A>
MMFAST_DEVICE bool candidate_wins(A key_a, int64_t idx_a, A key_b, int64_t idx_b) {
  if (idx_b < 0) return false;
  if (idx_a < 0) return true;
  const bool b_beats = kMax ? beats_max(key_b, key_a) : beats_min(key_b, key_a);
  const bool a_beats = kMax ? beats_max(key_a, key_b) : beats_min(key_a, key_b);
  if (b_beats) return true;
  if (a_beats) return false;
  return idx_b < idx_a;  // equal keys, or both NaN
}

// ------------------------------------------------------------------------------- host side
__host__ inline int next_power_of_two_at_most_32(int64_t n) {
  int lanes = 1;
  while (lanes < kWarpSize && lanes < n) lanes *= 2;
  return lanes;
}

__host__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads per row for a row of `units` work units (vectors or classes), one unit per lane per
// step: the widest power of two <= 32 whose steps leave at most 5 % of the lanes idle (10 -> 2,
// 25 -> 2, 250 -> 32; a power of two is its own width), as mmfast/kernels/_common.py's
// snug_width does for Triton blocks. Rounding 10 units up to 16 lanes idles 37.5 % of them.
inline int snug_lanes(int64_t units) {
  int lanes = next_power_of_two_at_most_32(units);
  while (lanes > 1 && ceil_div(units, lanes) * lanes - units > units / 20.0) lanes /= 2;
  return lanes;
}

}  // namespace cuda
}  // namespace mmfast

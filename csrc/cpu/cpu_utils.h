// Helpers shared by the CPU kernels in csrc/cpu/: dtype dispatch, opmath conversion of
// contiguous runs, a batch-parallel loop whose grain keeps small inputs on one thread, cheap
// boundary checks, and the torch.argmax/argmin comparison rules (first index, NaN wins).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace mmfast::cpu {

// The four input dtypes of every op (DESIGN.md): float16, bfloat16, float32, float64.
#define MMFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Scalar work (multiply-adds) below which a chunk of rows stays on one thread: spawning
// threads for less costs more than it saves.
constexpr int64_t kGrainWork = 32768;

// Elements of a row converted to opmath at a time: the conversion buffer stays in L1.
constexpr int64_t kChunk = 512;

// at::parallel_for over rows [0, rows) where one row costs about `work_per_row` scalar ops;
// the grain is chosen so each thread gets at least kGrainWork of work.
template <typename F>
inline void parallel_rows(int64_t rows, int64_t work_per_row, const F& fn) {
  if (rows <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_row));
  at::parallel_for(0, rows, grain, fn);
}

// Pointer to `n` opmath values of `src`: `src` itself when scalar_t is already opmath,
// else `buf` after a (vectorised) conversion. Lets one inner loop serve every dtype.
template <typename scalar_t, typename opmath_t>
inline const opmath_t* as_opmath(const scalar_t* src, opmath_t* buf, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    return src;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

// Writes `n` opmath values to `dst` (rounding to scalar_t when it is a reduced dtype).
template <typename opmath_t, typename scalar_t>
inline void store_from_opmath(const opmath_t* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// Data pointer of an optional tensor, nullptr when absent.
template <typename T>
inline const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr<T>() : nullptr;
}

// Kernel-boundary checks (the Python wrappers do the user-facing validation).
inline void check_input(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(dim < 0 || t.dim() == dim, name, " must have ", dim, " dims, got ", t.dim());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, name, " must be ", want, ", got ", t.scalar_type());
}

inline void check_optional(const std::optional<at::Tensor>& t, const char* name,
                           at::IntArrayRef shape, at::ScalarType dtype) {
  if (!t.has_value() || !t->defined()) return;
  check_input(*t, name, static_cast<int64_t>(shape.size()));
  TORCH_CHECK(t->sizes() == shape, name, " must have shape ", shape, ", got ", t->sizes());
  check_dtype(*t, name, dtype);
}

// torch.argmax / argmin order: the first NaN wins, else the first strict improvement.
template <typename T>
inline bool beats_for_argmax(T candidate, T best) {
  return !std::isnan(best) && (std::isnan(candidate) || candidate > best);
}

template <typename T>
inline bool beats_for_argmin(T candidate, T best) {
  return !std::isnan(best) && (std::isnan(candidate) || candidate < best);
}

// w_m = weight_bm * mask_bm (weight null -> 1) for one row, as the reference computes it
// (a masked-out NaN weight stays NaN); returns denom = sum_m w_m in order m = 0..M-1.
template <typename opmath_t>
inline opmath_t row_weights(const bool* mask_row, const opmath_t* weight_row, int64_t M,
                            opmath_t* w) {
  opmath_t denom = 0;
  for (int64_t m = 0; m < M; ++m) {
    const opmath_t present = mask_row == nullptr || mask_row[m] ? 1 : 0;
    w[m] = weight_row == nullptr ? present : weight_row[m] * present;
    denom += w[m];
  }
  return denom;
}

// sum_i a_i b_i with vector accumulators (the compiler may not reassociate a scalar sum).
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Per-row scratch sized by the modality count, allocated once per parallel chunk.
// (c10::SmallVector(size) trips GCC 12's -Wmaybe-uninitialized.)
template <typename T>
using ModalityArray = std::vector<T>;

}  // namespace mmfast::cpu

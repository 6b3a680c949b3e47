// Helpers shared by the CPU kernels in csrc/cpu/kernels/: dtype dispatch, opmath conversion of
// contiguous runs, a batch-parallel loop whose grain keeps small inputs on one thread, cheap
// boundary checks, the value checks of the kernels' own pass (BRIEF contract 2), output
// buffers advised onto huge pages, and the torch.argmax/argmin comparison rules.
//
// Included only by the per-ISA translation units: everything here lives in
// mmfast::cpu::CPU_CAPABILITY (DEFAULT, AVX2 or AVX512), so the copies compiled with different
// -m flags never meet at link time (an inline function shared by name would let the linker
// keep an AVX-512 copy for the default path).
#pragma once

#ifndef CPU_CAPABILITY
#error "csrc/cpu/kernels/*.cpp are compiled per ISA with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace mmfast::cpu::CPU_CAPABILITY {

// The four input dtypes of every op (DESIGN.md): float16, bfloat16, float32, float64.
#define MMFAST_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Scalar work (multiply-adds, about a millisecond on one core) below which a job stays on one
// thread. Every training shape (B <= 1024, M <= 3, D = 512, C <= 309) is below it: splitting
// such a job saves at most a few hundred microseconds on an idle machine, while on a loaded
// one the OpenMP team waits for a descheduled thread (the issue measured 0.03-0.09x of eager
// for 32768). The >= 64 MB benchmark shapes are 4-16x above it and use every thread.
constexpr int64_t kGrainWork = int64_t(1) << 22;

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

// Output buffers of at least this size are advised onto transparent huge pages.
constexpr size_t kHugePageAdviceBytes = size_t(4) << 20;

// A fresh output is written once, and its first touch (a page fault and a zeroed 4 KiB page
// per 4 KiB) costs as much as the kernel itself for a large buffer (benchmarks/README.md:
// ~17 ms of a 64 MB grad_x). madvise(MADV_HUGEPAGE) on the buffer's whole 2 MiB pages lets the
// kernel fault it in 512x fewer faults where THP is in "madvise" mode; torch's allocator does
// the same process-wide under THP_MEM_ALLOC_ENABLE=1, this does it for our outputs only.
inline void advise_huge_pages(void* data, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (nbytes < kHugePageAdviceBytes) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + nbytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

// at::empty for a kernel output that the kernel writes in full (see advise_huge_pages).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// Raises c10::ValueError (Python ValueError) in the format of the Python wrappers:
// "<op>: argument '<name>' expected <what>, got <value>".
template <typename T>
[[noreturn]] C10_NOINLINE void value_error(const char* op, const char* name, const char* what,
                                           const T& got) {
  TORCH_CHECK_VALUE(false, op, ": argument '", name, "' expected ", what, ", got ", got);
  __builtin_unreachable();
}

// Finite and >= 0 (false for NaN, +-inf and negatives).
template <typename T>
inline bool finite_nonnegative(T v) {
  return v >= T(0) && v <= std::numeric_limits<T>::max();
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

// torch.argmax of v[0, n), n >= 1: (value, index) of the first NaN when there is one, else of
// the first maximum. Vector passes only: the maximum (at::vec::maximum propagates NaN), then
// the first vector holding it (one compare and mask per vector, no branch per element).
template <typename T>
inline std::pair<T, int64_t> first_argmax(const T* v, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  static_assert(V < 32, "lane masks are int");
  T top = v[0];
  int64_t i = 0;
  if (n >= V) {
    Vec acc = Vec::loadu(v);
    for (i = V; i + V <= n; i += V) acc = at::vec::maximum(acc, Vec::loadu(v + i));
    top = at::vec::vec_reduce_all<T>(
        [](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }, acc);
  }
  for (; i < n; ++i) top = beats_for_argmax(v[i], top) ? v[i] : top;
  int64_t at = 0;
  if (std::isnan(top)) {
    while (!std::isnan(v[at])) ++at;
    return {top, at};
  }
  const Vec wanted(top);
  constexpr int kAllLanes = (1 << V) - 1;
  for (; at + V <= n; at += V) {
    const int differ = (Vec::loadu(v + at) == wanted).zero_mask();  // bit set: lane != top
    if (differ != kAllLanes) return {top, at + __builtin_ctz(~differ & kAllLanes)};
  }
  while (v[at] != top) ++at;
  return {top, at};
}

// w_m = mask_bm ? weight_bm : 0 (weight null -> 1) for one row; returns denom = sum_m w_m in
// order m = 0..M-1. Every weight of the row is checked (finite, >= 0; the value check of
// BRIEF contract 2, inside the kernel's own pass), present or not, as the Python check does.
template <typename opmath_t>
inline opmath_t row_weights(const char* op, const bool* mask_row, const opmath_t* weight_row,
                            int64_t M, opmath_t* w) {
  opmath_t denom = 0;
  for (int64_t m = 0; m < M; ++m) {
    const bool present = mask_row == nullptr || mask_row[m];
    if (weight_row == nullptr) {
      w[m] = present ? opmath_t(1) : opmath_t(0);
    } else {
      const opmath_t v = weight_row[m];
      if (!finite_nonnegative(v)) value_error(op, "weight", "finite non-negative values", v);
      w[m] = present ? v : opmath_t(0);
    }
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
  __at_align__ T lanes[Vec::size()];
  acc.store(lanes);
  T sum = 0;
  for (int64_t j = 0; j < Vec::size(); ++j) sum += lanes[j];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Per-row scratch sized by the modality count, allocated once per parallel chunk.
// (c10::SmallVector(size) trips GCC 12's -Wmaybe-uninitialized.)
template <typename T>
using ModalityArray = std::vector<T>;

}  // namespace mmfast::cpu::CPU_CAPABILITY

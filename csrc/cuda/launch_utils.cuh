// Torch-facing helpers shared by the CUDA launchers csrc/cuda/<op>.cu: cheap input checks,
// dtype dispatch onto the CUDA storage types the raw kernels are templated on, grid sizing.
// Only light c10 / ATen headers (no ATen/cuda: it pulls cuBLAS / cuSPARSE headers).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>

#include "cuda_utils.cuh"

namespace mmfast {
namespace cuda {

constexpr int kThreadsPerBlock = 256;

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (the Python wrapper guarantees it)");
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must have dtype ", expected, ", got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ",
              t.device());
}

// Contiguous CUDA tensor of the given dtype and shape on `ref`'s device.
inline void check_arg(const at::Tensor& t, const char* name, at::ScalarType dtype,
                      at::IntArrayRef shape, const at::Tensor& ref) {
  check_cuda_tensor(t, name);
  check_same_device(t, name, ref);
  check_dtype(t, name, dtype);
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

inline at::ScalarType opmath_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Calls fn(T{}) with T the CUDA storage type of `dtype` (float, double, __half, __nv_bfloat16;
// at::Half / at::BFloat16 share their bit layout).
template <typename Fn>
void dispatch_float_type(at::ScalarType dtype, const char* name, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kDouble:
      fn(double{});
      break;
    case at::kHalf:
      fn(__half{});
      break;
    case at::kBFloat16:
      fn(__nv_bfloat16{});
      break;
    default:
      TORCH_CHECK(false, name, ": expected float16, bfloat16, float32 or float64, got ", dtype);
  }
}

template <typename T>
const T* const_ptr(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* mutable_ptr(at::Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

inline bool is_present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Null for an absent optional tensor.
template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return is_present(t) ? const_ptr<T>(*t) : nullptr;
}

// Resident blocks of `kernel` per SM at kThreadsPerBlock threads and `smem` dynamic shared
// bytes, times the SM count: one full wave of a grid-stride kernel. Queried once per
// (kernel, device, smem) with cudaOccupancyMaxActiveBlocksPerMultiprocessor (registers and
// shared memory decide it: e.g. 3 blocks / SM for the fp32 masked_fusion forward, 2 for the
// backward with grad_weight, where a fixed 8 left partial waves) and cached; a host query,
// no stream work, so it is legal inside CUDA-graph capture.
inline int64_t resident_blocks(const void* kernel, size_t smem) {
  static std::mutex lock;
  static std::map<std::tuple<const void*, int, size_t>, int64_t> cache;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(kernel, device, smem);
  const std::lock_guard<std::mutex> guard(lock);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  int per_sm = 0;
  int sms = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                               kThreadsPerBlock, smem));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks = std::max<int64_t>(1, static_cast<int64_t>(per_sm) * sms);
  cache.emplace(key, blocks);
  return blocks;
}

// Blocks for a grid-stride kernel over `items` units of `per_block` units each: no more than
// needed, no more than one resident wave of `kernel`, and within the grid.x limit.
template <typename Kernel>
unsigned grid_blocks(Kernel kernel, int64_t items, int64_t per_block, size_t smem = 0) {
  const int64_t needed = std::max<int64_t>(1, ceil_div(items, per_block));
  const int64_t cap = resident_blocks(reinterpret_cast<const void*>(kernel), smem);
  return static_cast<unsigned>(std::min<int64_t>(needed, std::min<int64_t>(cap, INT32_MAX)));
}

// Rows per 256-thread block when `lanes` threads own a row.
inline int64_t rows_per_block(int lanes) { return kThreadsPerBlock / lanes; }

// 16-byte vectors when a row of `row_elems` elements keeps every row start aligned.
template <typename T>
bool rows_vectorizable(int64_t row_elems, std::initializer_list<const void*> ptrs) {
  constexpr int vec = vector_width<T>();
  if (vec <= 1 || row_elems % vec != 0) return false;
  return std::all_of(ptrs.begin(), ptrs.end(),
                     [](const void* p) { return p == nullptr || is_aligned(p, kVectorBytes); });
}

}  // namespace cuda
}  // namespace mmfast

// CUDA launchers of subset_logits and subset_accuracy (schemas: csrc/ops.cpp; kernels:
// subset_ops_kernel.cuh). Cheap checks only (device, dtype, shape).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "launch_utils.cuh"
#include "subset_ops_kernel.cuh"

namespace mmfast {
namespace cuda {
namespace {

// subset_accuracy: shared memory for the staged z tile (the rest of the layout is small), and
// the most subsets one launch handles (more are done in slices, re-reading z).
constexpr int64_t kTileBytes = 32 * 1024;
constexpr int64_t kMaxSubsetsPerLaunch = 512;

struct SubsetShape {
  int64_t B;
  int64_t M;
  int64_t C;
  int64_t S;
};

SubsetShape check_subset_inputs(const at::Tensor& z, const at::Tensor& subsets,
                                const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& present) {
  check_cuda_tensor(z, "z");
  TORCH_CHECK(z.dim() == 3, "z must be (B, M, C), got shape ", z.sizes());
  const int64_t B = z.size(0), M = z.size(1), C = z.size(2);
  TORCH_CHECK(M >= 1 && M <= kMaxModalities, "z must have 1..", kMaxModalities,
              " modalities, got M = ", M);
  check_cuda_tensor(subsets, "subsets");
  check_same_device(subsets, "subsets", z);
  check_dtype(subsets, "subsets", at::kBool);
  TORCH_CHECK(subsets.dim() == 2 && subsets.size(1) == M, "subsets must have shape (S, ", M,
              "), got ", subsets.sizes());
  if (is_present(weight)) {
    check_arg(*weight, "weight", opmath_scalar_type(z.scalar_type()), {B, M}, z);
  }
  if (is_present(present)) check_arg(*present, "present", at::kBool, {B, M}, z);
  return {B, M, C, subsets.size(0)};
}

at::Tensor subset_logits_cuda(const at::Tensor& z, const at::Tensor& subsets,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& present) {
  const SubsetShape s = check_subset_inputs(z, subsets, weight, present);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor scores = at::empty({s.S, s.B, s.C}, z.options());
  if (scores.numel() == 0) return scores;
  dispatch_float_type(z.scalar_type(), "subset_logits", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const T* zp = const_ptr<T>(z);
    T* out = mutable_ptr<T>(scores);
    const bool vectorized = rows_vectorizable<T>(s.C, {zp, out});
    const int vec = vectorized ? vector_width<T>() : 1;
    const int lanes = next_power_of_two_at_most_32(ceil_div(s.C, vec));
    auto kernel = vectorized ? subset_logits_kernel<T, vector_width<T>()>
                             : subset_logits_kernel<T, 1>;
    const unsigned blocks = grid_blocks(kernel, s.S * s.B, rows_per_block(lanes));
    kernel<<<blocks, kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        zp, const_ptr<bool>(subsets), optional_ptr<A>(weight), optional_ptr<bool>(present), s.B,
        static_cast<int>(s.M), s.C, s.S, lanes, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return scores;
}

// R rows per tile so that the R x S (row, subset) pairs cover the block's threads, and as
// many classes per staged chunk as fit kTileBytes.
template <typename A>
SubsetAccuracyLayout<A> accuracy_layout(int64_t M, int64_t C, int64_t S) {
  const int64_t rows = std::clamp<int64_t>(ceil_div(kThreadsPerBlock, S), 1, 32);
  const int64_t classes = std::clamp<int64_t>(
      kTileBytes / static_cast<int64_t>(sizeof(A)) / (rows * M), 1, std::max<int64_t>(C, 1));
  return {static_cast<int>(rows), static_cast<int>(classes), static_cast<int>(M),
          static_cast<int>(S)};
}

// M <= kCodeModalities: subset_accuracy_codes_kernel, one launch for any S (the per-code
// argmax; see subset_ops_kernel.cuh). Lanes per row from snug_lanes over the row's vectors.
template <typename T>
void launch_accuracy_by_codes(const at::Tensor& z, const at::Tensor& target,
                              const at::Tensor& subsets, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& present, const SubsetShape& s,
                              at::Tensor& correct) {
  using A = opmath_t<T>;
  const T* zp = const_ptr<T>(z);
  const bool vectorized = rows_vectorizable<T>(s.C, {zp});
  const int lanes = snug_lanes(ceil_div(s.C, vectorized ? vector_width<T>() : 1));
  auto kernel = vectorized ? subset_accuracy_codes_kernel<T, vector_width<T>()>
                           : subset_accuracy_codes_kernel<T, 1>;
  const unsigned blocks =
      grid_blocks(kernel, s.B, rows_per_block(lanes), kCodeAccuracySmemBytes);
  kernel<<<blocks, kThreadsPerBlock, kCodeAccuracySmemBytes,
           c10::cuda::getCurrentCUDAStream()>>>(
      zp, const_ptr<int64_t>(target), const_ptr<bool>(subsets), optional_ptr<A>(weight),
      optional_ptr<bool>(present), s.B, static_cast<int>(s.M), s.C, s.S, lanes,
      reinterpret_cast<unsigned long long*>(mutable_ptr<int64_t>(correct)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// M > kCodeModalities: subset_accuracy_kernel over slices of at most kMaxSubsetsPerLaunch
// subsets (each slice re-reads z).
template <typename T>
void launch_accuracy_by_pairs(const at::Tensor& z, const at::Tensor& target,
                              const at::Tensor& subsets, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& present, const SubsetShape& s,
                              at::Tensor& correct) {
  using A = opmath_t<T>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t first = 0; first < s.S; first += kMaxSubsetsPerLaunch) {
    const int64_t count = std::min(kMaxSubsetsPerLaunch, s.S - first);
    const SubsetAccuracyLayout<A> layout = accuracy_layout<A>(s.M, s.C, count);
    TORCH_CHECK(layout.total_bytes() <= 48 * 1024, "subset_accuracy: shared memory layout of ",
                layout.total_bytes(), " bytes exceeds the 48 KiB default");
    const auto smem = static_cast<size_t>(layout.total_bytes());
    const unsigned blocks = grid_blocks(subset_accuracy_kernel<T>, s.B, layout.tile_rows, smem);
    subset_accuracy_kernel<T><<<blocks, kThreadsPerBlock, smem, stream>>>(
        const_ptr<T>(z), const_ptr<int64_t>(target), const_ptr<bool>(subsets) + first * s.M,
        optional_ptr<A>(weight), optional_ptr<bool>(present), s.B, s.C, layout,
        reinterpret_cast<unsigned long long*>(mutable_ptr<int64_t>(correct)) + first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor subset_accuracy_cuda(const at::Tensor& z, const at::Tensor& target,
                                const at::Tensor& subsets, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& present) {
  const SubsetShape s = check_subset_inputs(z, subsets, weight, present);
  check_arg(target, "target", at::kLong, {s.B}, z);
  TORCH_CHECK(s.B == 0 || s.C >= 1, "subset_accuracy needs at least one class, got C = 0");
  TORCH_CHECK(s.C <= INT32_MAX, "subset_accuracy supports C < 2^31, got C = ", s.C);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor correct = at::zeros({s.S}, z.options().dtype(at::kLong));
  if (s.B == 0 || s.S == 0) return correct;
  dispatch_float_type(z.scalar_type(), "subset_accuracy", [&](auto tag) {
    using T = decltype(tag);
    if (s.M <= kCodeModalities) {
      launch_accuracy_by_codes<T>(z, target, subsets, weight, present, s, correct);
    } else {
      launch_accuracy_by_pairs<T>(z, target, subsets, weight, present, s, correct);
    }
  });
  return correct;
}

}  // namespace
}  // namespace cuda
}  // namespace mmfast

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("subset_logits", &mmfast::cuda::subset_logits_cuda);
  m.impl("subset_accuracy", &mmfast::cuda::subset_accuracy_cuda);
}

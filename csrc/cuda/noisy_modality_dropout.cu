// CUDA launcher of noisy_modality_dropout (schema: csrc/ops.cpp; kernels:
// noisy_modality_dropout_kernel.cuh). Must not be compiled with --use_fast_math (the kernel
// header refuses): the noise must follow the reference's logf / cosf / sinf.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "launch_utils.cuh"
#include "noisy_modality_dropout_kernel.cuh"

namespace mmfast {
namespace cuda {
namespace {

void check_noise_inputs(const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma,
                        bool sigma_levels) {
  check_cuda_tensor(x, "x");
  TORCH_CHECK(x.dim() >= 1, "x must have a batch dimension, got a 0-dim tensor");
  const int64_t B = x.size(0);
  check_cuda_tensor(p_drop, "p_drop");
  check_same_device(p_drop, "p_drop", x);
  check_dtype(p_drop, "p_drop", at::kFloat);
  TORCH_CHECK(p_drop.dim() <= 1 && (p_drop.numel() == B || p_drop.numel() == 1),
              "p_drop must have shape (", B, ") or one element, got ", p_drop.sizes());
  check_cuda_tensor(sigma, "sigma");
  check_same_device(sigma, "sigma", x);
  check_dtype(sigma, "sigma", at::kFloat);
  if (sigma_levels) {
    TORCH_CHECK(sigma.dim() == 1 && sigma.numel() >= 1,
                "sigma levels must be a non-empty (K,) tensor, got ", sigma.sizes());
  } else {
    TORCH_CHECK(sigma.dim() <= 1 && (sigma.numel() == B || sigma.numel() == 1),
                "sigma must have shape (", B, ") or one element, got ", sigma.sizes());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_modality_dropout_cuda(
    const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma, bool sigma_levels,
    int64_t seed, const at::Tensor& offset, double fill) {
  check_noise_inputs(x, p_drop, sigma, sigma_levels);
  // BRIEF contract 1: a 0-d int64 tensor on x's device, read by the kernels (no host sync).
  check_cuda_tensor(offset, "offset");
  check_same_device(offset, "offset", x);
  check_dtype(offset, "offset", at::kLong);
  TORCH_CHECK(offset.dim() == 0, "noisy_modality_dropout: argument 'offset' expected a 0-d "
              "tensor, got shape ", offset.sizes());
  const int64_t B = x.size(0), numel = x.numel();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor keep = at::empty({B}, x.options().dtype(at::kBool));
  at::Tensor sigma_used = at::empty({B}, x.options().dtype(at::kFloat));
  if (B == 0) return {y, keep, sigma_used};
  // Python ints arrive as int64; the streams use their two's-complement bits (as the CPU kernel).
  const auto useed = static_cast<uint64_t>(seed);
  const int64_t* offset_ptr = const_ptr<int64_t>(offset);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  noise_per_sample_kernel<<<grid_blocks(noise_per_sample_kernel, B, kThreadsPerBlock),
                            kThreadsPerBlock, 0, stream>>>(
      const_ptr<float>(p_drop), p_drop.numel(), const_ptr<float>(sigma), sigma.numel(),
      sigma_levels, useed, offset_ptr, B, mutable_ptr<bool>(keep), mutable_ptr<float>(sigma_used));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (numel == 0) return {y, keep, sigma_used};
  dispatch_float_type(x.scalar_type(), "noisy_modality_dropout", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const T* xp = const_ptr<T>(x);
    T* yp = mutable_ptr<T>(y);
    const bool vectorized = is_aligned(xp, kVectorBytes) && is_aligned(yp, kVectorBytes);
    const int64_t chunks = ceil_div(numel, noise_chunk_elems<T>());
    noisy_modality_dropout_kernel<T>
        <<<grid_blocks(noisy_modality_dropout_kernel<T>, chunks, kThreadsPerBlock),
           kThreadsPerBlock, 0, stream>>>(
            xp, const_ptr<bool>(keep), const_ptr<float>(sigma_used), useed, offset_ptr,
            static_cast<A>(fill), numel, numel / B, vectorized, yp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, keep, sigma_used};
}

}  // namespace
}  // namespace cuda
}  // namespace mmfast

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("noisy_modality_dropout", &mmfast::cuda::noisy_modality_dropout_cuda);
}

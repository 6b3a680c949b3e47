// CUDA launchers of masked_fusion and _masked_fusion_backward (schemas: csrc/ops.cpp; kernels:
// masked_fusion_kernel.cuh). Inputs follow the kernel-boundary conventions of csrc/ops.cpp;
// the checks here are cheap (device, dtype, shape), not a re-validation of values.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "launch_utils.cuh"
#include "masked_fusion_kernel.cuh"

namespace mmfast {
namespace cuda {
namespace {

struct FusionShape {
  int64_t B;
  int64_t M;
  int64_t D;
};

FusionShape check_fusion_inputs(const at::Tensor& x, const at::Tensor& mask,
                                const std::optional<at::Tensor>& weight) {
  check_cuda_tensor(x, "x");
  TORCH_CHECK(x.dim() == 3, "x must be (B, M, D), got shape ", x.sizes());
  const FusionShape s{x.size(0), x.size(1), x.size(2)};
  TORCH_CHECK(s.M >= 1 && s.M <= kMaxModalities, "x must have 1..", kMaxModalities,
              " modalities, got M = ", s.M);
  check_arg(mask, "mask", at::kBool, {s.B, s.M}, x);
  if (is_present(weight)) {
    check_arg(*weight, "weight", opmath_scalar_type(x.scalar_type()), {s.B, s.M}, x);
  }
  return s;
}

// Threads per row: enough to cover a row's vectors once, at most a warp.
int fusion_lanes(int64_t D, int vec) { return next_power_of_two_at_most_32(ceil_div(D, vec)); }

std::tuple<at::Tensor, at::Tensor> masked_fusion_cuda(const at::Tensor& x, const at::Tensor& mask,
                                                      const std::optional<at::Tensor>& weight,
                                                      bool normalize) {
  const FusionShape s = check_fusion_inputs(x, mask, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({s.B, s.D}, x.options());
  at::Tensor denom = at::empty({s.B}, x.options().dtype(opmath_scalar_type(x.scalar_type())));
  if (s.B == 0) return {y, denom};
  dispatch_float_type(x.scalar_type(), "masked_fusion", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const T* xp = const_ptr<T>(x);
    T* yp = mutable_ptr<T>(y);
    const bool vectorized = rows_vectorizable<T>(s.D, {xp, yp});
    const int vec = vectorized ? vector_width<T>() : 1;
    const int lanes = fusion_lanes(s.D, vec);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    auto kernel = vectorized ? masked_fusion_forward_kernel<T, vector_width<T>()>
                             : masked_fusion_forward_kernel<T, 1>;
    const unsigned blocks = grid_blocks(kernel, s.B, rows_per_block(lanes));
    kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
        xp, const_ptr<bool>(mask), optional_ptr<A>(weight), normalize, s.B,
        static_cast<int>(s.M), s.D, lanes, yp, mutable_ptr<A>(denom));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, denom};
}

std::tuple<at::Tensor, at::Tensor> masked_fusion_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask,
    const std::optional<at::Tensor>& weight, const at::Tensor& y, const at::Tensor& denom,
    bool normalize, bool need_grad_weight) {
  const FusionShape s = check_fusion_inputs(x, mask, weight);
  const at::ScalarType acc = opmath_scalar_type(x.scalar_type());
  check_arg(grad_y, "grad_y", x.scalar_type(), {s.B, s.D}, x);
  check_arg(y, "y", x.scalar_type(), {s.B, s.D}, x);
  check_arg(denom, "denom", acc, {s.B}, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x = at::empty({s.B, s.M, s.D}, x.options());
  at::Tensor grad_weight = need_grad_weight ? at::empty({s.B, s.M}, x.options().dtype(acc))
                                            : at::empty({0}, x.options().dtype(acc));
  if (s.B == 0) return {grad_x, grad_weight};
  dispatch_float_type(x.scalar_type(), "_masked_fusion_backward", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    constexpr int kVec = vector_width<T>();
    const T* gyp = const_ptr<T>(grad_y);
    const T* xp = const_ptr<T>(x);
    const T* yp = const_ptr<T>(y);
    T* gxp = mutable_ptr<T>(grad_x);
    const bool vectorized = rows_vectorizable<T>(s.D, {gyp, xp, yp, gxp});
    const int lanes = fusion_lanes(s.D, vectorized ? kVec : 1);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    auto kernel = need_grad_weight
                      ? (vectorized ? masked_fusion_backward_kernel<T, kVec, true>
                                    : masked_fusion_backward_kernel<T, 1, true>)
                      : (vectorized ? masked_fusion_backward_kernel<T, kVec, false>
                                    : masked_fusion_backward_kernel<T, 1, false>);
    const unsigned blocks = grid_blocks(kernel, s.B, rows_per_block(lanes));
    kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
        gyp, xp, const_ptr<bool>(mask), optional_ptr<A>(weight), yp, const_ptr<A>(denom),
        normalize, s.B, static_cast<int>(s.M), s.D, lanes, gxp,
        need_grad_weight ? mutable_ptr<A>(grad_weight) : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_weight};
}

}  // namespace
}  // namespace cuda
}  // namespace mmfast

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("masked_fusion", &mmfast::cuda::masked_fusion_cuda);
  m.impl("_masked_fusion_backward", &mmfast::cuda::masked_fusion_backward_cuda);
}

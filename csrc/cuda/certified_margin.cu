// CUDA launchers of certified_margin and _certified_margin_backward (schemas: csrc/ops.cpp;
// kernels: certified_margin_kernel.cuh). Cheap checks only (device, dtype, shape); target
// values are validated by the Python wrapper (the kernels cannot raise).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "certified_margin_kernel.cuh"
#include "launch_utils.cuh"

namespace mmfast {
namespace cuda {
namespace {

DualNorm dual_norm_kind(double q) {
  TORCH_CHECK(q >= 1, "certified_margin: q must be >= 1, got ", q);
  if (std::isinf(q)) return DualNorm::kInf;
  if (q == 1) return DualNorm::kOne;
  return q == 2 ? DualNorm::kTwo : DualNorm::kPow;
}

void check_margin_inputs(const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
                         const std::optional<at::Tensor>& mask) {
  check_cuda_tensor(z, "z");
  TORCH_CHECK(z.dim() == 3, "z must be (B, M, C), got shape ", z.sizes());
  const int64_t B = z.size(0), M = z.size(1), C = z.size(2);
  TORCH_CHECK(M >= 1 && M <= kMaxModalities, "z must have 1..", kMaxModalities,
              " modalities, got M = ", M);
  check_arg(target, "target", at::kLong, {B}, z);
  check_cuda_tensor(lip, "lip");
  check_same_device(lip, "lip", z);
  check_dtype(lip, "lip", opmath_scalar_type(z.scalar_type()));
  TORCH_CHECK((lip.dim() == 1 && lip.size(0) == M) ||
                  (lip.dim() == 3 && lip.sizes() == at::IntArrayRef({M, C, C})),
              "lip must have shape (", M, ") or (", M, ", ", C, ", ", C, "), got ", lip.sizes());
  if (is_present(mask)) check_arg(*mask, "mask", at::kBool, {B, M}, z);
}

template <typename T>
MarginArgs<T> margin_args(const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
                          const std::optional<at::Tensor>& mask, double q) {
  using A = opmath_t<T>;
  return MarginArgs<T>{const_ptr<T>(z),
                       const_ptr<int64_t>(target),
                       const_ptr<A>(lip),
                       lip.dim() == 3,
                       optional_ptr<bool>(mask),
                       z.size(0),
                       static_cast<int>(z.size(1)),
                       z.size(2),
                       dual_norm_kind(q),
                       static_cast<A>(q)};
}

// Threads per row: one vector of V rivals per lane (V = 16 bytes of T), at most a warp.
template <typename T>
int margin_lanes(int64_t C) {
  return next_power_of_two_at_most_32(ceil_div(C, margin_classes_per_lane<T>()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_margin_cuda(
    const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias, double q,
    bool top_rival) {
  check_margin_inputs(z, target, lip, mask);
  const int64_t B = z.size(0), C = z.size(2);
  const at::ScalarType acc = opmath_scalar_type(z.scalar_type());
  if (is_present(bias)) check_arg(*bias, "bias", acc, {C}, z);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor radius = at::empty({B}, z.options().dtype(acc));
  at::Tensor margin = at::empty({B}, z.options().dtype(acc));
  at::Tensor runner_up = at::empty({B}, z.options().dtype(at::kLong));
  if (B == 0) return {radius, margin, runner_up};
  dispatch_float_type(z.scalar_type(), "certified_margin", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const int lanes = margin_lanes<T>(C);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    auto kernel = top_rival ? certified_margin_forward_kernel<T, true>
                            : certified_margin_forward_kernel<T, false>;
    const unsigned blocks = grid_blocks(kernel, B, rows_per_block(lanes));
    kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
        margin_args<T>(z, target, lip, mask, q), optional_ptr<A>(bias), lanes,
        mutable_ptr<A>(radius), mutable_ptr<A>(margin), mutable_ptr<int64_t>(runner_up));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {radius, margin, runner_up};
}

std::tuple<at::Tensor, at::Tensor> certified_margin_backward_cuda(
    const at::Tensor& grad_radius, const at::Tensor& grad_margin, const at::Tensor& z,
    const at::Tensor& target, const at::Tensor& lip, const std::optional<at::Tensor>& mask,
    const at::Tensor& margin, const at::Tensor& runner_up, double q) {
  check_margin_inputs(z, target, lip, mask);
  const int64_t B = z.size(0), M = z.size(1), C = z.size(2);
  const at::ScalarType acc = opmath_scalar_type(z.scalar_type());
  check_arg(grad_radius, "grad_radius", acc, {B}, z);
  check_arg(grad_margin, "grad_margin", acc, {B}, z);
  check_arg(margin, "margin", acc, {B}, z);
  check_arg(runner_up, "runner_up", at::kLong, {B}, z);
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor grad_z = at::empty({B, M, C}, z.options());
  at::Tensor grad_lip_sel = at::empty({B, M}, z.options().dtype(acc));
  if (B == 0) return {grad_z, grad_lip_sel};
  dispatch_float_type(z.scalar_type(), "_certified_margin_backward", [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const int lanes = next_power_of_two_at_most_32(C);  // the row's stores, C at a time
    const unsigned blocks = grid_blocks(certified_margin_backward_kernel<T>, B,
                                        rows_per_block(lanes));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    certified_margin_backward_kernel<T><<<blocks, kThreadsPerBlock, 0, stream>>>(
        margin_args<T>(z, target, lip, mask, q), const_ptr<A>(grad_radius),
        const_ptr<A>(grad_margin), const_ptr<A>(margin), const_ptr<int64_t>(runner_up), lanes,
        mutable_ptr<T>(grad_z), mutable_ptr<A>(grad_lip_sel));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_z, grad_lip_sel};
}

}  // namespace
}  // namespace cuda
}  // namespace mmfast

TORCH_LIBRARY_IMPL(mmfast, CUDA, m) {
  m.impl("certified_margin", &mmfast::cuda::certified_margin_cuda);
  m.impl("_certified_margin_backward", &mmfast::cuda::certified_margin_backward_cuda);
}

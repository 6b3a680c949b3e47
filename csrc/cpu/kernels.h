// Entry points of the CPU kernels, declared once per ISA build. Each csrc/cpu/kernels/*.cpp is
// compiled three times (CPU_CAPABILITY = DEFAULT, AVX2, AVX512) and defines them in
// namespace mmfast::cpu::CPU_CAPABILITY; csrc/cpu/register.cpp picks one per call.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#define MMFAST_CPU_KERNEL_DECLARATIONS                                                       \
  std::tuple<at::Tensor, at::Tensor> masked_fusion_cpu(                                      \
      const at::Tensor& x, const at::Tensor& mask, const std::optional<at::Tensor>& weight,  \
      bool normalize);                                                                       \
  std::tuple<at::Tensor, at::Tensor> masked_fusion_backward_cpu(                             \
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask,                 \
      const std::optional<at::Tensor>& weight, const at::Tensor& y, const at::Tensor& denom, \
      bool normalize, bool need_grad_weight);                                                \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_margin_cpu(                       \
      const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,                  \
      const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,          \
      double q, bool top_rival);                                                             \
  std::tuple<at::Tensor, at::Tensor> certified_margin_backward_cpu(                          \
      const at::Tensor& grad_radius, const at::Tensor& grad_margin, const at::Tensor& z,     \
      const at::Tensor& target, const at::Tensor& lip, const std::optional<at::Tensor>& mask, \
      const at::Tensor& margin, const at::Tensor& runner_up, double q);                      \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_modality_dropout_cpu(                 \
      const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma,                \
      bool sigma_levels, int64_t seed, const at::Tensor& offset, double fill);               \
  at::Tensor subset_logits_cpu(const at::Tensor& z, const at::Tensor& subsets,               \
                               const std::optional<at::Tensor>& weight,                      \
                               const std::optional<at::Tensor>& present);                    \
  at::Tensor subset_accuracy_cpu(const at::Tensor& z, const at::Tensor& target,              \
                                 const at::Tensor& subsets,                                  \
                                 const std::optional<at::Tensor>& weight,                    \
                                 const std::optional<at::Tensor>& present);

namespace mmfast::cpu {
namespace DEFAULT {
MMFAST_CPU_KERNEL_DECLARATIONS
}  // namespace DEFAULT
#if defined(MMFAST_CPU_ISA_X86)
namespace AVX2 {
MMFAST_CPU_KERNEL_DECLARATIONS
}  // namespace AVX2
namespace AVX512 {
MMFAST_CPU_KERNEL_DECLARATIONS
}  // namespace AVX512
#endif
}  // namespace mmfast::cpu

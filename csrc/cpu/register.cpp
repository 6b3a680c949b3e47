// Registers the CPU kernels of every op under the CPU dispatch key. Each registered function
// forwards to the ISA build selected by cpu_capability() (csrc/cpu/capability.h): one load of
// a cached atomic and a switch per call. Compiled with the baseline flags.
#include <torch/library.h>

#include <utility>

#include "cpu/capability.h"
#include "cpu/kernels.h"

namespace mmfast::cpu {
namespace {

#if defined(MMFAST_CPU_ISA_X86)
#define MMFAST_CPU_DISPATCH(FN, ...)                                        \
  switch (cpu_capability()) {                                              \
    case CpuCapability::kAvx512: return AVX512::FN(__VA_ARGS__);           \
    case CpuCapability::kAvx2: return AVX2::FN(__VA_ARGS__);               \
    default: return DEFAULT::FN(__VA_ARGS__);                              \
  }
#else
#define MMFAST_CPU_DISPATCH(FN, ...) return DEFAULT::FN(__VA_ARGS__);
#endif

std::tuple<at::Tensor, at::Tensor> masked_fusion(const at::Tensor& x, const at::Tensor& mask,
                                                 const std::optional<at::Tensor>& weight,
                                                 bool normalize) {
  MMFAST_CPU_DISPATCH(masked_fusion_cpu, x, mask, weight, normalize)
}

std::tuple<at::Tensor, at::Tensor> masked_fusion_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask,
    const std::optional<at::Tensor>& weight, const at::Tensor& y, const at::Tensor& denom,
    bool normalize, bool need_grad_weight) {
  MMFAST_CPU_DISPATCH(masked_fusion_backward_cpu, grad_y, x, mask, weight, y, denom, normalize,
                      need_grad_weight)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_margin(
    const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias, double q,
    bool top_rival) {
  MMFAST_CPU_DISPATCH(certified_margin_cpu, z, target, lip, mask, bias, q, top_rival)
}

std::tuple<at::Tensor, at::Tensor> certified_margin_backward(
    const at::Tensor& grad_radius, const at::Tensor& grad_margin, const at::Tensor& z,
    const at::Tensor& target, const at::Tensor& lip, const std::optional<at::Tensor>& mask,
    const at::Tensor& margin, const at::Tensor& runner_up, double q) {
  MMFAST_CPU_DISPATCH(certified_margin_backward_cpu, grad_radius, grad_margin, z, target, lip,
                      mask, margin, runner_up, q)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_modality_dropout(
    const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma, bool sigma_levels,
    int64_t seed, const at::Tensor& offset, double fill) {
  MMFAST_CPU_DISPATCH(noisy_modality_dropout_cpu, x, p_drop, sigma, sigma_levels, seed, offset,
                      fill)
}

at::Tensor subset_logits(const at::Tensor& z, const at::Tensor& subsets,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& present) {
  MMFAST_CPU_DISPATCH(subset_logits_cpu, z, subsets, weight, present)
}

at::Tensor subset_accuracy(const at::Tensor& z, const at::Tensor& target,
                           const at::Tensor& subsets, const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& present) {
  MMFAST_CPU_DISPATCH(subset_accuracy_cpu, z, target, subsets, weight, present)
}

}  // namespace
}  // namespace mmfast::cpu

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("masked_fusion", &mmfast::cpu::masked_fusion);
  m.impl("_masked_fusion_backward", &mmfast::cpu::masked_fusion_backward);
  m.impl("certified_margin", &mmfast::cpu::certified_margin);
  m.impl("_certified_margin_backward", &mmfast::cpu::certified_margin_backward);
  m.impl("noisy_modality_dropout", &mmfast::cpu::noisy_modality_dropout);
  m.impl("subset_logits", &mmfast::cpu::subset_logits);
  m.impl("subset_accuracy", &mmfast::cpu::subset_accuracy);
}

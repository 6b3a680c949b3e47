// Autograd of mmfast::masked_fusion in C++ (issue 12 item 2): forward calls the kernel below
// autograd, backward calls mmfast::_masked_fusion_backward of the same device. Mirrors the
// Python formula in mmfast/ops/masked_fusion.py (used for the Triton op).
#include "autograd/autograd_utils.h"

namespace mmfast::autograd {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                   const c10::optional<at::Tensor>&, bool);
using Backward = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, bool, bool);

class MaskedFusionFunction : public torch::autograd::Function<MaskedFusionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mask,
                               const c10::optional<at::Tensor>& weight, bool normalize) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = typed_op<Forward>("mmfast::masked_fusion");
    auto [y, denom] = op.call(x, mask, weight, normalize);
    ctx->save_for_backward({x, mask, weight.value_or(at::Tensor()), y, denom});
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({denom});
    return {y, denom};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = typed_op<Backward>("mmfast::_masked_fusion_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mask = saved[1], &weight = saved[2], &y = saved[3],
                     &denom = saved[4];
    const bool need_w = weight.defined() && ctx->needs_input_grad(2);
    auto [grad_x, grad_w] = op.call(grad_or_zeros(grads[0], y), x, mask, optional_of(weight), y,
                                    denom, ctx->saved_data["normalize"].toBool(), need_w);
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(), at::Tensor(),
            need_w ? grad_w : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> masked_fusion_autograd(const at::Tensor& x,
                                                          const at::Tensor& mask,
                                                          const c10::optional<at::Tensor>& weight,
                                                          bool normalize) {
  auto out = MaskedFusionFunction::apply(x, mask, weight, normalize);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace mmfast::autograd

TORCH_LIBRARY_IMPL(mmfast, Autograd, m) {
  m.impl("masked_fusion", &mmfast::autograd::masked_fusion_autograd);
}

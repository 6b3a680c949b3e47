// Autograd of mmfast::noisy_modality_dropout in C++ (issue 12 item 2): grad_x = grad_y on kept
// samples, 0 on dropped ones (never grad_y * 0: a NaN gradient there must not leak).
#include "autograd/autograd_utils.h"

namespace mmfast::autograd {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, int64_t, const at::Tensor&,
    double);

class NoisyDropoutFunction : public torch::autograd::Function<NoisyDropoutFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& p_drop,
                               const at::Tensor& sigma, bool sigma_levels, int64_t seed,
                               const at::Tensor& offset, double fill) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = typed_op<Forward>("mmfast::noisy_modality_dropout");
    auto [y, keep, sigma_used] = op.call(x, p_drop, sigma, sigma_levels, seed, offset, fill);
    ctx->save_for_backward({keep});
    ctx->mark_non_differentiable({keep, sigma_used});
    return {y, keep, sigma_used};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor keep = ctx->get_saved_variables()[0];
    const at::Tensor& grad_y = grads[0];
    at::Tensor grad_x;
    if (grad_y.defined() && ctx->needs_input_grad(0)) {
      std::vector<c10::SymInt> shape(grad_y.dim(), 1);  // symbolic under torch.compile
      shape[0] = keep.sym_size(0);
      grad_x = at::where(keep.view_symint(shape), grad_y, at::zeros({}, grad_y.options()));
    }
    return {grad_x,       at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_modality_dropout_autograd(
    const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma, bool sigma_levels,
    int64_t seed, const at::Tensor& offset, double fill) {
  auto out = NoisyDropoutFunction::apply(x, p_drop, sigma, sigma_levels, seed, offset, fill);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace mmfast::autograd

TORCH_LIBRARY_IMPL(mmfast, Autograd, m) {
  m.impl("noisy_modality_dropout", &mmfast::autograd::noisy_modality_dropout_autograd);
}

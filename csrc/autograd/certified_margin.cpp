// Autograd of mmfast::certified_margin in C++ (issue 12 item 2). grad_z and d/d lip_m[y_b, k_b]
// come from mmfast::_certified_margin_backward of the same device; the lip and bias gradients
// are scattered here without a host sync (rows without a rival, runner_up -1, add 0). Mirrors
// the Python formula in mmfast/ops/certified_margin.py (used for the Triton op).
#include <cmath>

#include "autograd/autograd_utils.h"

namespace mmfast::autograd {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, double, bool);
using Backward = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double);

// ||v||_q along dim 1 for v >= 0 (finite where the norm is 0), as reference._safe_norm.
at::Tensor safe_norm(const at::Tensor& v, double q) {
  if (std::isinf(q)) return v.amax(1);
  if (q == 1.0) return v.sum(1);
  const at::Tensor s = v.pow(q).sum(1);
  const at::Tensor positive = s > 0;
  return at::where(positive, at::where(positive, s, at::ones_like(s)).pow(1.0 / q), s);
}

// den_b = ||mask_b * lip[:, y_b, k_b]||_q (the bias gradient's denominator).
at::Tensor rival_denominator(const at::Tensor& lip, const at::Tensor& mask,
                             const at::Tensor& target, const at::Tensor& rival, double q) {
  using at::indexing::Slice;
  const c10::SymInt B = target.sym_size(0), M = lip.sym_size(0);  // symbolic under compile
  at::Tensor sel = lip.dim() == 1 ? lip.view_symint({1, M}).expand_symint({B, M})
                                  : lip.index({Slice(), target, rival}).t();
  if (mask.defined()) sel = sel * mask.to(sel.scalar_type());
  return safe_norm(sel, q);
}

class CertifiedMarginFunction : public torch::autograd::Function<CertifiedMarginFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& target,
                               const at::Tensor& lip, const c10::optional<at::Tensor>& mask,
                               const c10::optional<at::Tensor>& bias, double q, bool top_rival) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = typed_op<Forward>("mmfast::certified_margin");
    auto [radius, margin, runner_up] = op.call(z, target, lip, mask, bias, q, top_rival);
    ctx->save_for_backward({z, target, lip, mask.value_or(at::Tensor()), margin, runner_up});
    ctx->saved_data["q"] = q;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->mark_non_differentiable({runner_up});
    return {radius, margin, runner_up};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = typed_op<Backward>("mmfast::_certified_margin_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &target = saved[1], &lip = saved[2], &mask = saved[3],
                     &margin = saved[4], &runner_up = saved[5];
    const double q = ctx->saved_data["q"].toDouble();
    const at::Tensor gr = grad_or_zeros(grads[0], margin), gm = grad_or_zeros(grads[1], margin);
    auto [grad_z, grad_sel] = op.call(gr, gm, z, target, lip, optional_of(mask), margin,
                                      runner_up, q);
    const at::Tensor valid = runner_up >= 0;
    const at::Tensor k = runner_up.clamp_min(0);
    at::Tensor grad_lip, grad_bias;
    if (ctx->needs_input_grad(2)) {
      if (lip.dim() == 1) {
        grad_lip = grad_sel.sum(0);
      } else {
        // lip[m, y_b, k_b] += sel[b, m]: indices broadcast to (B, M)
        const at::Tensor m = at::arange(c10::Scalar(lip.sym_size(0)), target.options());
        const at::Tensor sel =
            at::where(valid.unsqueeze(1), grad_sel, at::zeros({}, grad_sel.options()));
        grad_lip = at::zeros_like(lip, grad_sel.options())
                       .index_put_({m.unsqueeze(0), target.unsqueeze(1), k.unsqueeze(1)}, sel,
                                   /*accumulate=*/true);
      }
    }
    // needs_input_grad counts tensor arguments only: z, target, lip, [mask], [bias]
    const size_t bias_edge = mask.defined() ? 4 : 3;
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(bias_edge)) {
      const at::Tensor den = rival_denominator(lip, mask, target, k, q);
      const at::Tensor positive = den > 0;
      const at::Tensor zero = at::zeros({}, den.options());
      at::Tensor coef = at::where(positive, gr / at::where(positive, den, at::ones_like(den)), zero) + gm;
      coef = at::where(valid, coef, zero);
      grad_bias = at::zeros_symint({z.sym_size(2)}, coef.options())
                      .index_add_(0, target, coef)
                      .index_add_(0, k, -coef);
    }
    return {grad_z,       at::Tensor(), grad_lip, at::Tensor(), grad_bias,
            at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_margin_autograd(
    const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias, double q,
    bool top_rival) {
  auto out = CertifiedMarginFunction::apply(z, target, lip, mask, bias, q, top_rival);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace mmfast::autograd

TORCH_LIBRARY_IMPL(mmfast, Autograd, m) {
  m.impl("certified_margin", &mmfast::autograd::certified_margin_autograd);
}

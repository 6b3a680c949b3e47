// CPU kernels of masked_fusion and _masked_fusion_backward (DESIGN.md op 1; ground truth
// mmfast/ops/reference.py::masked_fusion). One pass over x per direction, parallel over rows,
// the feature dimension D walked in L1-sized chunks with opmath accumulators.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/cpu_utils.h"

namespace mmfast::cpu {
namespace {

// d_b of the contract: denom_b when normalising a row with positive weight, else 1.
template <typename opmath_t>
inline opmath_t row_divisor(opmath_t denom, bool normalize) {
  return normalize && denom > 0 ? denom : opmath_t(1);
}

template <typename scalar_t>
void masked_fusion_rows(const at::Tensor& x, const at::Tensor& mask,
                        const std::optional<at::Tensor>& weight, bool normalize, at::Tensor& y,
                        at::Tensor& denom) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), M = x.size(1), D = x.size(2);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const bool* mask_data = mask.const_data_ptr<bool>();
  const opmath_t* weight_data = optional_data<opmath_t>(weight);
  scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
  opmath_t* denom_data = denom.mutable_data_ptr<opmath_t>();

  parallel_rows(B, M * D, [&](int64_t begin, int64_t end) {
    ModalityArray<opmath_t> w(M);
    opmath_t acc[kChunk], buf[kChunk];
    for (int64_t b = begin; b < end; ++b) {
      const opmath_t den = row_weights(mask_data + b * M,
                                       weight_data ? weight_data + b * M : nullptr, M, w.data());
      denom_data[b] = den;
      const opmath_t divisor = row_divisor(den, normalize);
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
        const int64_t n = std::min(kChunk, D - d0);
        std::fill(acc, acc + n, opmath_t(0));
        for (int64_t m = 0; m < M; ++m) {
          const opmath_t* __restrict xs = as_opmath(x_data + (b * M + m) * D + d0, buf, n);
          const opmath_t wm = w[m];
          for (int64_t d = 0; d < n; ++d) acc[d] += wm * xs[d];
        }
        if (divisor != opmath_t(1)) {
          for (int64_t d = 0; d < n; ++d) acc[d] /= divisor;
        }
        store_from_opmath(acc, y_data + b * D + d0, n);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_fusion_cpu(const at::Tensor& x, const at::Tensor& mask,
                                                     const std::optional<at::Tensor>& weight,
                                                     bool normalize) {
  check_input(x, "x", 3);
  check_input(mask, "mask", 2);
  check_dtype(mask, "mask", at::kBool);
  const int64_t B = x.size(0), M = x.size(1), D = x.size(2);
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == M, "mask must have shape (", B, ", ", M,
              "), got ", mask.sizes());
  const auto opmath = at::toOpMathType(x.scalar_type());
  check_optional(weight, "weight", {B, M}, opmath);
  at::Tensor y = at::empty({B, D}, x.options());
  at::Tensor denom = at::empty({B}, x.options().dtype(opmath));
  MMFAST_DISPATCH_FLOATING(x.scalar_type(), "masked_fusion_cpu", [&] {
    masked_fusion_rows<scalar_t>(x, mask, weight, normalize, y, denom);
  });
  return {y, denom};
}

// grad_x_bmd = (grad_y_bd / d_b) w_bm. With u_bm = sum_d (grad_y_bd / d_b) x_bmd, autograd of
// the reference gives grad_weight_bm = mask_bm (u_bm - [normalize, denom_b > 0] sum_k w_bk u_bk
// / d_b): the second term is the path through denom, and sum_k w_bk u_bk = sum_d grad_y y d_b,
// so y itself is not needed.
template <typename scalar_t>
void masked_fusion_backward_rows(const at::Tensor& grad_y, const at::Tensor& x,
                                 const at::Tensor& mask, const std::optional<at::Tensor>& weight,
                                 bool normalize, bool need_grad_weight, at::Tensor& grad_x,
                                 at::Tensor& grad_weight) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), M = x.size(1), D = x.size(2);
  const scalar_t* gy_data = grad_y.const_data_ptr<scalar_t>();
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const bool* mask_data = mask.const_data_ptr<bool>();
  const opmath_t* weight_data = optional_data<opmath_t>(weight);
  scalar_t* gx_data = grad_x.mutable_data_ptr<scalar_t>();
  opmath_t* gw_data = need_grad_weight ? grad_weight.mutable_data_ptr<opmath_t>() : nullptr;

  parallel_rows(B, 2 * M * D, [&](int64_t begin, int64_t end) {
    ModalityArray<opmath_t> w(M), u(M);
    opmath_t gs[kChunk], out[kChunk], buf[kChunk];
    for (int64_t b = begin; b < end; ++b) {
      const opmath_t den = row_weights(mask_data + b * M,
                                       weight_data ? weight_data + b * M : nullptr, M, w.data());
      const opmath_t divisor = row_divisor(den, normalize);
      std::fill(u.begin(), u.end(), opmath_t(0));
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
        const int64_t n = std::min(kChunk, D - d0);
        const opmath_t* g = as_opmath(gy_data + b * D + d0, buf, n);
        for (int64_t d = 0; d < n; ++d) gs[d] = g[d] / divisor;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t row = (b * M + m) * D + d0;
          if (need_grad_weight) u[m] += dot(gs, as_opmath(x_data + row, buf, n), n);
          const opmath_t wm = w[m];
          for (int64_t d = 0; d < n; ++d) out[d] = gs[d] * wm;
          store_from_opmath(out, gx_data + row, n);
        }
      }
      if (!need_grad_weight) continue;
      opmath_t through_denom = 0;
      if (normalize && den > 0) {
        for (int64_t m = 0; m < M; ++m) through_denom += w[m] * u[m];
        through_denom /= divisor;
      }
      for (int64_t m = 0; m < M; ++m) {
        gw_data[b * M + m] = mask_data[b * M + m] ? u[m] - through_denom : opmath_t(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_fusion_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mask,
    const std::optional<at::Tensor>& weight, const at::Tensor& y, const at::Tensor& denom,
    bool normalize, bool need_grad_weight) {
  (void)y;      // the denom path is rebuilt from x (see masked_fusion_backward_rows)
  (void)denom;  // recomputed per row with the weights, which the row needs anyway
  check_input(x, "x", 3);
  check_input(grad_y, "grad_y", 2);
  check_input(mask, "mask", 2);
  check_dtype(mask, "mask", at::kBool);
  const int64_t B = x.size(0), M = x.size(1), D = x.size(2);
  TORCH_CHECK(grad_y.size(0) == B && grad_y.size(1) == D, "grad_y must have shape (", B, ", ",
              D, "), got ", grad_y.sizes());
  check_dtype(grad_y, "grad_y", x.scalar_type());
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == M, "mask must have shape (", B, ", ", M,
              "), got ", mask.sizes());
  const auto opmath = at::toOpMathType(x.scalar_type());
  check_optional(weight, "weight", {B, M}, opmath);
  at::Tensor grad_x = at::empty_like(x);
  const std::vector<int64_t> grad_weight_shape =
      need_grad_weight ? std::vector<int64_t>{B, M} : std::vector<int64_t>{0};
  at::Tensor grad_weight = at::empty(grad_weight_shape, x.options().dtype(opmath));
  MMFAST_DISPATCH_FLOATING(x.scalar_type(), "masked_fusion_backward_cpu", [&] {
    masked_fusion_backward_rows<scalar_t>(grad_y, x, mask, weight, normalize, need_grad_weight,
                                          grad_x, grad_weight);
  });
  return {grad_x, grad_weight};
}

}  // namespace
}  // namespace mmfast::cpu

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("masked_fusion", &mmfast::cpu::masked_fusion_cpu);
  m.impl("_masked_fusion_backward", &mmfast::cpu::masked_fusion_backward_cpu);
}

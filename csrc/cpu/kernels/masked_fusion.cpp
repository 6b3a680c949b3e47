// CPU kernels of masked_fusion and _masked_fusion_backward (DESIGN.md op 1; ground truth
// mmfast/ops/reference.py::masked_fusion). One pass over x per direction, parallel over rows,
// the feature dimension D walked in L1-sized chunks with opmath accumulators.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/cpu_utils.h"
#include "cpu/kernels.h"

namespace mmfast::cpu::CPU_CAPABILITY {
namespace {

constexpr const char* kOp = "masked_fusion";

// d_b of the contract: denom_b when normalising a row with positive weight, else 1.
template <typename opmath_t>
inline opmath_t row_divisor(opmath_t denom, bool normalize) {
  return normalize && denom > 0 ? denom : opmath_t(1);
}

// out_d = sum_{j < K} w_j rows_j[d] with K fixed at compile time: the j loop
// unrolls and the d loop vectorises, summing in modality order in registers.
// The weights arrive pre-divided by the row divisor (w_j / d_b): a multiply per element
// instead of a division, which at 4 lanes per SSE2 instruction costs as much as the memory
// traffic here (1 ulp from the reference's division; the tests' fp32 tolerance covers it).
template <int K, typename T>
inline void fixed_rows_sum(const T* const* rows, const T* w, int64_t n, T* __restrict out) {
  for (int64_t d = 0; d < n; ++d) {
    T acc = w[0] * rows[0][d];
    for (int j = 1; j < K; ++j) acc += w[j] * rows[j][d];
    out[d] = acc;
  }
}

// The same for any count (more than 8 modalities: an accumulator pass per modality).
template <typename T>
inline void weighted_rows_sum(const T* const* rows, const T* w, int64_t count, int64_t n,
                              T* __restrict out) {
  switch (count) {
    case 0: std::fill(out, out + n, T(0)); return;
    case 1: return fixed_rows_sum<1>(rows, w, n, out);
    case 2: return fixed_rows_sum<2>(rows, w, n, out);
    case 3: return fixed_rows_sum<3>(rows, w, n, out);
    case 4: return fixed_rows_sum<4>(rows, w, n, out);
    case 5: return fixed_rows_sum<5>(rows, w, n, out);
    case 6: return fixed_rows_sum<6>(rows, w, n, out);
    case 7: return fixed_rows_sum<7>(rows, w, n, out);
    case 8: return fixed_rows_sum<8>(rows, w, n, out);
    default: break;
  }
  for (int64_t d = 0; d < n; ++d) out[d] = w[0] * rows[0][d];
  for (int64_t j = 1; j < count; ++j) {
    const T wj = w[j];
    const T* __restrict r = rows[j];
    for (int64_t d = 0; d < n; ++d) out[d] += wj * r[d];
  }
}

// Rows read ahead of use. Skipping absent modalities leaves holes in the access stream that
// the hardware prefetcher does not bridge; software prefetch of a later row's present
// modalities restores the streaming rate.
constexpr int64_t kPrefetchRows = 2;

template <typename scalar_t>
inline void prefetch_present_rows(const scalar_t* x, const bool* mask, int64_t b, int64_t end,
                                  int64_t M, int64_t D) {
  if (b >= end) return;
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  for (int64_t m = 0; m < M; ++m) {
    if (!mask[b * M + m]) continue;
    const scalar_t* row = x + (b * M + m) * D;
    for (int64_t d = 0; d < D; d += kLine) __builtin_prefetch(row + d);
  }
}

// Modalities of weight 0 are never read: for finite x the result is the reference's (a
// zero term adds exactly 0), and a missing modality's NaN/inf filler cannot leak into y.
template <typename scalar_t>
void masked_fusion_rows(const at::Tensor& x, const at::Tensor& mask,
                        const std::optional<at::Tensor>& weight, bool normalize, at::Tensor& y,
                        at::Tensor& denom) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool kSameType = std::is_same_v<scalar_t, opmath_t>;
  const int64_t B = x.size(0), M = x.size(1), D = x.size(2);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const bool* mask_data = mask.const_data_ptr<bool>();
  const opmath_t* weight_data = optional_data<opmath_t>(weight);
  scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
  opmath_t* denom_data = denom.mutable_data_ptr<opmath_t>();

  parallel_rows(B, M * D, [&](int64_t begin, int64_t end) {
    ModalityArray<opmath_t> w(M), used_w(M);
    ModalityArray<const opmath_t*> rows(M);
    std::vector<opmath_t> converted(kSameType ? 0 : (M + 1) * kChunk);
    for (int64_t b = begin; b < end; ++b) {
      const opmath_t den = row_weights(kOp, mask_data + b * M,
                                       weight_data ? weight_data + b * M : nullptr, M, w.data());
      denom_data[b] = den;
      const opmath_t divisor = row_divisor(den, normalize);
      int64_t count = 0;
      for (int64_t m = 0; m < M; ++m) {
        if (w[m] != opmath_t(0)) used_w[count++] = w[m] / divisor;
      }
      prefetch_present_rows(x_data, mask_data, b + kPrefetchRows, end, M, D);
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
        const int64_t n = std::min(kChunk, D - d0);
        for (int64_t m = 0, j = 0; m < M; ++m) {
          if (w[m] == opmath_t(0)) continue;
          const scalar_t* xm = x_data + (b * M + m) * D + d0;
          rows[j] = as_opmath(xm, converted.data() + j * kChunk, n);
          ++j;
        }
        if constexpr (kSameType) {
          weighted_rows_sum(rows.data(), used_w.data(), count, n, y_data + b * D + d0);
        } else {
          opmath_t* out = converted.data() + M * kChunk;
          weighted_rows_sum(rows.data(), used_w.data(), count, n, out);
          store_from_opmath(out, y_data + b * D + d0, n);
        }
      }
    }
  });
}

}  // namespace

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
  at::Tensor y = empty_output({B, D}, x.options());
  at::Tensor denom = at::empty({B}, x.options().dtype(opmath));
  MMFAST_DISPATCH_FLOATING(x.scalar_type(), "masked_fusion_cpu", [&] {
    masked_fusion_rows<scalar_t>(x, mask, weight, normalize, y, denom);
  });
  return {y, denom};
}

namespace {

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
      const opmath_t den = row_weights(kOp, mask_data + b * M,
                                       weight_data ? weight_data + b * M : nullptr, M, w.data());
      const opmath_t divisor = row_divisor(den, normalize);
      if (!need_grad_weight) {  // grad_x only: one streaming scale of grad_y per modality
        const scalar_t* __restrict g = gy_data + b * D;
        for (int64_t m = 0; m < M; ++m) {
          const opmath_t f = w[m] / divisor;
          scalar_t* __restrict gx = gx_data + (b * M + m) * D;
          for (int64_t d = 0; d < D; ++d) gx[d] = static_cast<scalar_t>(opmath_t(g[d]) * f);
        }
        continue;
      }
      std::fill(u.begin(), u.end(), opmath_t(0));
      for (int64_t d0 = 0; d0 < D; d0 += kChunk) {
        const int64_t n = std::min(kChunk, D - d0);
        const opmath_t* g = as_opmath(gy_data + b * D + d0, buf, n);
        for (int64_t d = 0; d < n; ++d) gs[d] = g[d] / divisor;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t row = (b * M + m) * D + d0;
          // An absent modality's x is never read (its grad_weight is 0, its grad_x 0).
          if (mask_data[b * M + m]) u[m] += dot(gs, as_opmath(x_data + row, buf, n), n);
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

}  // namespace

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
  at::Tensor grad_x = empty_output(x.sizes(), x.options());
  const std::vector<int64_t> grad_weight_shape =
      need_grad_weight ? std::vector<int64_t>{B, M} : std::vector<int64_t>{0};
  at::Tensor grad_weight = at::empty(grad_weight_shape, x.options().dtype(opmath));
  MMFAST_DISPATCH_FLOATING(x.scalar_type(), "masked_fusion_backward_cpu", [&] {
    masked_fusion_backward_rows<scalar_t>(grad_y, x, mask, weight, normalize, need_grad_weight,
                                          grad_x, grad_weight);
  });
  return {grad_x, grad_weight};
}

}  // namespace mmfast::cpu::CPU_CAPABILITY

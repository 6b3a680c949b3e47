// CPU kernels of certified_margin and _certified_margin_backward (DESIGN.md op 2; ground truth
// mmfast/ops/reference.py::certified_margin). One pass over z: each row's (M, C) block is
// reduced to per-rival margins and dual-norm denominators in O(C) scratch, never (B, C, C).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/cpu_utils.h"
#include "cpu/kernels.h"

namespace mmfast::cpu::CPU_CAPABILITY {
namespace {

constexpr const char* kOp = "certified_margin";

// The dual exponent q of the op schema, split into the cases the reference distinguishes.
enum class DualNorm { kOne, kTwo, kInf, kPow };

DualNorm dual_norm_kind(double q) {
  TORCH_CHECK(q >= 1, "certified_margin: q must be >= 1, got ", q);
  if (std::isinf(q)) return DualNorm::kInf;
  if (q == 1) return DualNorm::kOne;
  return q == 2 ? DualNorm::kTwo : DualNorm::kPow;
}

// Accumulates one term v >= 0 into the running norm state `s` (sum, sum of squares, max or
// sum of powers), as reference._safe_norm does along m. kKind is a template parameter so the
// per-class loops carry no switch and vectorise.
template <DualNorm kKind, typename T>
inline T norm_step(T s, T v, T q) {
  if constexpr (kKind == DualNorm::kOne) return s + v;
  if constexpr (kKind == DualNorm::kTwo) return s + v * v;
  if constexpr (kKind == DualNorm::kInf) return (std::isnan(v) || v > s) ? v : s;
  if constexpr (kKind == DualNorm::kPow) return s + std::pow(v, q);
}

template <typename T>
inline T norm_accumulate(DualNorm kind, T s, T v, T q) {
  switch (kind) {
    case DualNorm::kOne: return norm_step<DualNorm::kOne>(s, v, q);
    case DualNorm::kTwo: return norm_step<DualNorm::kTwo>(s, v, q);
    case DualNorm::kInf: return norm_step<DualNorm::kInf>(s, v, q);
    default: return norm_step<DualNorm::kPow>(s, v, q);
  }
}

// Calls fn(std::integral_constant<DualNorm, kind>{}) with `kind` as a compile-time constant.
template <typename F>
inline void with_norm_kind(DualNorm kind, const F& fn) {
  switch (kind) {
    case DualNorm::kOne: return fn(std::integral_constant<DualNorm, DualNorm::kOne>{});
    case DualNorm::kTwo: return fn(std::integral_constant<DualNorm, DualNorm::kTwo>{});
    case DualNorm::kInf: return fn(std::integral_constant<DualNorm, DualNorm::kInf>{});
    default: return fn(std::integral_constant<DualNorm, DualNorm::kPow>{});
  }
}

// Turns the accumulated state into ||v||_q (a zero sum stays zero, as in _safe_norm).
template <typename T>
inline T norm_finish(DualNorm kind, T s, T q) {
  if (!(s > 0)) return s;
  if (kind == DualNorm::kTwo) return std::sqrt(s);
  if (kind == DualNorm::kPow) return std::pow(s, T(1) / q);
  return s;
}

// r = margin / den, or the degenerate value +inf / -inf / 0 (by the margin's sign) at den 0.
template <typename T>
inline T radius_of(T margin, T den) {
  if (den > 0) return margin / den;
  constexpr T inf = std::numeric_limits<T>::infinity();
  if (margin > 0) return inf;
  if (margin < 0) return -inf;
  return margin == 0 ? T(0) : margin;  // NaN stays NaN
}

inline int64_t checked_target(const int64_t* target, int64_t b, int64_t C) {
  const int64_t y = target[b];
  if (y < 0 || y >= C) {
    value_error(kOp, "target", c10::str("values in [0, ", C, ")").c_str(), y);
  }
  return y;
}

// (M,) Lipschitz constants: checked once per call (M values). An (M, C, C) table is checked
// where the kernel reads it (certified_margin_rows), in the same pass.
template <typename T>
void check_lip_vector(const T* lip, int64_t M) {
  for (int64_t m = 0; m < M; ++m) {
    if (!finite_nonnegative(lip[m])) value_error(kOp, "lip", "finite non-negative values", lip[m]);
  }
}

// Inputs shared by forward and backward, as raw pointers.
template <typename scalar_t>
struct MarginInputs {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* z;
  const int64_t* target;
  const opmath_t* lip;
  bool lip_per_pair;  // (M, C, C) rather than (M,)
  const bool* mask;   // nullptr: every modality present
  int64_t M, C;

  opmath_t present(int64_t b, int64_t m) const {
    return mask == nullptr || mask[b * M + m] ? opmath_t(1) : opmath_t(0);
  }
  // lip_m[y, k], or lip_m for (M,) lip.
  opmath_t lip_at(int64_t m, int64_t y, int64_t k) const {
    return lip_per_pair ? lip[(m * C + y) * C + k] : lip[m];
  }
};

template <typename scalar_t>
MarginInputs<scalar_t> margin_inputs(const at::Tensor& z, const at::Tensor& target,
                                     const at::Tensor& lip,
                                     const std::optional<at::Tensor>& mask) {
  return {z.const_data_ptr<scalar_t>(),
          target.const_data_ptr<int64_t>(),
          lip.const_data_ptr<at::opmath_type<scalar_t>>(),
          lip.dim() == 3,
          optional_data<bool>(mask),
          z.size(1),
          z.size(2)};
}

template <typename scalar_t, DualNorm kKind>
void certified_margin_rows(const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
                           const std::optional<at::Tensor>& mask,
                           const std::optional<at::Tensor>& bias, double q, bool top_rival,
                           at::Tensor& radius, at::Tensor& margin, at::Tensor& runner_up) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto in = margin_inputs<scalar_t>(z, target, lip, mask);
  const int64_t B = z.size(0), M = in.M, C = in.C;
  const opmath_t* bias_data = optional_data<opmath_t>(bias);
  constexpr DualNorm kind = kKind;
  const opmath_t qv = static_cast<opmath_t>(q);
  opmath_t* radius_data = radius.mutable_data_ptr<opmath_t>();
  opmath_t* margin_data = margin.mutable_data_ptr<opmath_t>();
  int64_t* runner_data = runner_up.mutable_data_ptr<int64_t>();
  if (!in.lip_per_pair) check_lip_vector(in.lip, M);

  parallel_rows(B, 3 * M * C, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t> zbuf(M * C), marg(C), norm_state(C), fused(C);
    ModalityArray<opmath_t> present(M);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t y = checked_target(in.target, b, C);
      if (C == 1) {
        radius_data[b] = std::numeric_limits<opmath_t>::infinity();
        margin_data[b] = 0;
        runner_data[b] = -1;
        continue;
      }
      const opmath_t* zr = as_opmath(in.z + b * M * C, zbuf.data(), M * C);
      for (int64_t m = 0; m < M; ++m) present[m] = in.present(b, m);
      // margin_k = sum_{m present} (z_my - z_mk) (+ b_y - b_k); the norm state over m per k.
      // Absent modalities are skipped (never read: their NaN / inf filler cannot leak), which
      // adds the same as the reference's zero terms.
      std::fill(marg.begin(), marg.end(), opmath_t(0));
      std::fill(norm_state.begin(), norm_state.end(), opmath_t(0));
      int lip_bad = 0;
      for (int64_t m = 0; m < M; ++m) {
        if (present[m] == opmath_t(0)) continue;
        const opmath_t zy = zr[m * C + y];
        const opmath_t* __restrict zm = zr + m * C;
        opmath_t* __restrict mk = marg.data();
        for (int64_t k = 0; k < C; ++k) mk[k] += zy - zm[k];
        if (in.lip_per_pair) {
          const opmath_t* __restrict lm = in.lip + (m * C + y) * C;
          for (int64_t k = 0; k < C; ++k) {
            lip_bad |= !finite_nonnegative(lm[k]);
            norm_state[k] = norm_step<kKind>(norm_state[k], lm[k], qv);
          }
        } else {
          norm_state[0] = norm_step<kKind>(norm_state[0], in.lip[m], qv);
        }
      }
      // A NaN or infinite present logit makes its margin (or, at y, every margin) NaN or
      // infinite; an integer OR over the C margins finds it (BRIEF contract 3).
      int nonfinite = 0;
      for (int64_t k = 0; k < C; ++k) {
        nonfinite |= !(std::abs(marg[k]) <= std::numeric_limits<opmath_t>::max());
      }
      if (lip_bad) {
        for (int64_t m = 0; m < M; ++m) {
          if (present[m] == opmath_t(0)) continue;
          for (int64_t k = 0; k < C; ++k) {
            const opmath_t v = in.lip[(m * C + y) * C + k];
            if (!finite_nonnegative(v)) value_error(kOp, "lip", "finite non-negative values", v);
          }
        }
      }
      if (nonfinite) {  // never a certificate
        radius_data[b] = std::numeric_limits<opmath_t>::quiet_NaN();
        margin_data[b] = std::numeric_limits<opmath_t>::quiet_NaN();
        runner_data[b] = -1;
        continue;
      }
      if (bias_data != nullptr) {
        for (int64_t k = 0; k < C; ++k) marg[k] += bias_data[y] - bias_data[k];
      }
      const opmath_t shared_den = norm_finish(kind, norm_state[0], qv);
      auto den_at = [&](int64_t k) {
        return in.lip_per_pair ? norm_finish(kind, norm_state[k], qv) : shared_den;
      };
      int64_t best = -1;
      opmath_t best_value = 0;
      if (top_rival) {  // argmax over k != y of the fused score sum_m mask_m z_mk + bias_k
        std::fill(fused.begin(), fused.end(), opmath_t(0));
        for (int64_t m = 0; m < M; ++m) {
          if (present[m] == opmath_t(0)) continue;
          for (int64_t k = 0; k < C; ++k) fused[k] += zr[m * C + k];
        }
        for (int64_t k = 0; k < C; ++k) {
          if (k == y) continue;
          const opmath_t h = bias_data ? fused[k] + bias_data[k] : fused[k];
          if (best < 0 || beats_for_argmax(h, best_value)) best = k, best_value = h;
        }
        best_value = radius_of(marg[best], den_at(best));
      } else {  // argmin over k != y of the radius r_k
        for (int64_t k = 0; k < C; ++k) {
          if (k == y) continue;
          const opmath_t r = radius_of(marg[k], den_at(k));
          if (best < 0 || beats_for_argmin(r, best_value)) best = k, best_value = r;
        }
      }
      radius_data[b] = best_value;
      margin_data[b] = marg[best];
      runner_data[b] = best;
    }
  });
}

void check_margin_inputs(const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
                         const std::optional<at::Tensor>& mask) {
  check_input(z, "z", 3);
  check_input(target, "target", 1);
  check_dtype(target, "target", at::kLong);
  const int64_t B = z.size(0), M = z.size(1), C = z.size(2);
  TORCH_CHECK(target.size(0) == B, "target must have shape (", B, "), got ", target.sizes());
  const auto opmath = at::toOpMathType(z.scalar_type());
  check_input(lip, "lip", -1);
  check_dtype(lip, "lip", opmath);
  TORCH_CHECK((lip.dim() == 1 && lip.size(0) == M) ||
                  (lip.dim() == 3 && lip.sizes() == at::IntArrayRef({M, C, C})),
              "lip must have shape (", M, ") or (", M, ", ", C, ", ", C, "), got ", lip.sizes());
  check_optional(mask, "mask", {B, M}, at::kBool);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> certified_margin_cpu(
    const at::Tensor& z, const at::Tensor& target, const at::Tensor& lip,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias, double q,
    bool top_rival) {
  check_margin_inputs(z, target, lip, mask);
  const int64_t B = z.size(0), C = z.size(2);
  const auto opmath = at::toOpMathType(z.scalar_type());
  check_optional(bias, "bias", {C}, opmath);
  at::Tensor radius = at::empty({B}, z.options().dtype(opmath));
  at::Tensor margin = at::empty({B}, z.options().dtype(opmath));
  at::Tensor runner_up = at::empty({B}, z.options().dtype(at::kLong));
  MMFAST_DISPATCH_FLOATING(z.scalar_type(), "certified_margin_cpu", [&] {
    with_norm_kind(dual_norm_kind(q), [&](auto kind) {
      certified_margin_rows<scalar_t, decltype(kind)::value>(z, target, lip, mask, bias, q,
                                                             top_rival, radius, margin,
                                                             runner_up);
    });
  });
  return {radius, margin, runner_up};
}

namespace {

// Only z[:, :, y] and z[:, :, k*] move the outputs: with g = grad_radius / den + grad_margin,
// grad_z_my = g mask_m and grad_z_mk* = -g mask_m. Through den = ||mask lip_sel||_q,
// grad_lip_sel_m = -grad_radius margin / den^2 * d den / d lip_m (zero where den == 0).
template <typename scalar_t>
void certified_margin_backward_rows(const at::Tensor& grad_radius, const at::Tensor& grad_margin,
                                    const at::Tensor& z, const at::Tensor& target,
                                    const at::Tensor& lip, const std::optional<at::Tensor>& mask,
                                    const at::Tensor& margin, const at::Tensor& runner_up,
                                    double q, at::Tensor& grad_z, at::Tensor& grad_lip_sel) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto in = margin_inputs<scalar_t>(z, target, lip, mask);
  const int64_t B = z.size(0), M = in.M, C = in.C;
  const DualNorm kind = dual_norm_kind(q);
  const opmath_t qv = static_cast<opmath_t>(q);
  const opmath_t* gr_data = grad_radius.const_data_ptr<opmath_t>();
  const opmath_t* gm_data = grad_margin.const_data_ptr<opmath_t>();
  const opmath_t* margin_data = margin.const_data_ptr<opmath_t>();
  const int64_t* runner_data = runner_up.const_data_ptr<int64_t>();
  scalar_t* gz_data = grad_z.mutable_data_ptr<scalar_t>();
  opmath_t* gl_data = grad_lip_sel.mutable_data_ptr<opmath_t>();

  parallel_rows(B, M * C, [&](int64_t begin, int64_t end) {
    ModalityArray<opmath_t> v(M);
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* gz = gz_data + b * M * C;
      opmath_t* gl = gl_data + b * M;
      std::fill(gz, gz + M * C, scalar_t(0));
      std::fill(gl, gl + M, opmath_t(0));
      const int64_t k = runner_data[b];
      if (k < 0) continue;  // C == 1: constant outputs
      const int64_t y = checked_target(in.target, b, C);
      TORCH_CHECK(k < C && k != y, "certified_margin backward: runner_up[", b, "] = ", k,
                  " is not a rival of target ", y);
      opmath_t s = 0;
      for (int64_t m = 0; m < M; ++m) {
        v[m] = in.present(b, m) * in.lip_at(m, y, k);
        s = norm_accumulate(kind, s, v[m], qv);
      }
      const opmath_t den = norm_finish(kind, s, qv);
      const opmath_t gr = gr_data[b];
      const opmath_t g = (den > 0 ? gr / den : opmath_t(0)) + gm_data[b];
      for (int64_t m = 0; m < M; ++m) {  // absent modalities keep their zeros
        if (in.present(b, m) == opmath_t(0)) continue;
        gz[m * C + y] = static_cast<scalar_t>(g);
        gz[m * C + k] = static_cast<scalar_t>(-g);
      }
      if (!(den > 0)) continue;
      const opmath_t coef = -gr * margin_data[b] / (den * den);
      int64_t ties = 0;  // q = inf: amax's gradient is shared evenly by the tied maxima
      if (kind == DualNorm::kInf) {
        for (int64_t m = 0; m < M; ++m) ties += v[m] == den;
      }
      for (int64_t m = 0; m < M; ++m) {
        opmath_t dden_dv;
        switch (kind) {
          case DualNorm::kOne: dden_dv = 1; break;
          case DualNorm::kTwo: dden_dv = v[m] / den; break;
          case DualNorm::kInf: dden_dv = v[m] == den ? opmath_t(1) / ties : opmath_t(0); break;
          default: dden_dv = std::pow(v[m] / den, qv - 1);
        }
        gl[m] = coef * dden_dv * in.present(b, m);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> certified_margin_backward_cpu(
    const at::Tensor& grad_radius, const at::Tensor& grad_margin, const at::Tensor& z,
    const at::Tensor& target, const at::Tensor& lip, const std::optional<at::Tensor>& mask,
    const at::Tensor& margin, const at::Tensor& runner_up, double q) {
  check_margin_inputs(z, target, lip, mask);
  const int64_t B = z.size(0), M = z.size(1);
  const auto opmath = at::toOpMathType(z.scalar_type());
  for (const auto& [t, name] : {std::pair{&grad_radius, "grad_radius"},
                                std::pair{&grad_margin, "grad_margin"},
                                std::pair{&margin, "margin"}}) {
    check_input(*t, name, 1);
    check_dtype(*t, name, opmath);
    TORCH_CHECK(t->size(0) == B, name, " must have shape (", B, "), got ", t->sizes());
  }
  check_input(runner_up, "runner_up", 1);
  check_dtype(runner_up, "runner_up", at::kLong);
  TORCH_CHECK(runner_up.size(0) == B, "runner_up must have shape (", B, "), got ",
              runner_up.sizes());
  at::Tensor grad_z = empty_output(z.sizes(), z.options());
  at::Tensor grad_lip_sel = at::empty({B, M}, z.options().dtype(opmath));
  MMFAST_DISPATCH_FLOATING(z.scalar_type(), "certified_margin_backward_cpu", [&] {
    certified_margin_backward_rows<scalar_t>(grad_radius, grad_margin, z, target, lip, mask,
                                             margin, runner_up, q, grad_z, grad_lip_sel);
  });
  return {grad_z, grad_lip_sel};
}

}  // namespace mmfast::cpu::CPU_CAPABILITY

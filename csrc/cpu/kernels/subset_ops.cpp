// CPU kernels of subset_logits and subset_accuracy (DESIGN.md op 4; ground truth
// mmfast/ops/reference.py::subset_logits / subset_correct). One pass over z: per row, every
// subset's fused scores are built from its parent subset (the same subset less its highest
// modality) plus one weighted row of z, so a subset costs O(C) instead of O(M C), and the
// sums still run over modalities in increasing order (the same rounding as a direct sum).
// subset_accuracy keeps only a running argmax per subset: no (S, B, C) tensor exists.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <unordered_map>
#include <vector>

#include "cpu/cpu_utils.h"
#include "cpu/kernels.h"

namespace mmfast::cpu::CPU_CAPABILITY {
namespace {

// Classes processed at a time: S x kSubsetCols partial sums stay in L1/L2.
constexpr int64_t kSubsetCols = 64;

// How subset s is built: from `parent` (an earlier subset, or kFromZero) by adding modality
// `last`; kDirect subsets (no earlier parent in the list) are summed modality by modality.
struct SubsetPlan {
  static constexpr int64_t kFromZero = -1, kDirect = -2, kEmpty = -3;
  std::vector<int64_t> parent, last;
  std::vector<uint8_t> members;  // (S, M) copy of the bool matrix
};

SubsetPlan plan_subsets(const at::Tensor& subsets) {
  const int64_t S = subsets.size(0), M = subsets.size(1);
  TORCH_CHECK(M <= 62, "subset ops support at most 62 modalities, got ", M);
  const bool* data = subsets.const_data_ptr<bool>();
  SubsetPlan plan{std::vector<int64_t>(S), std::vector<int64_t>(S, -1),
                  std::vector<uint8_t>(data, data + S * M)};
  std::unordered_map<uint64_t, int64_t> first_index;
  for (int64_t s = 0; s < S; ++s) {
    uint64_t code = 0;
    for (int64_t m = 0; m < M; ++m) {
      if (data[s * M + m]) code |= uint64_t(1) << m, plan.last[s] = m;
    }
    if (code == 0) {
      plan.parent[s] = SubsetPlan::kEmpty;
    } else {
      const uint64_t parent_code = code & ~(uint64_t(1) << plan.last[s]);
      const auto found = first_index.find(parent_code);
      plan.parent[s] = parent_code == 0           ? SubsetPlan::kFromZero
                       : found != first_index.end() ? found->second
                                                    : SubsetPlan::kDirect;
    }
    first_index.emplace(code, s);
  }
  return plan;
}

// Per-row scratch: weights, presence, opmath z row, per-subset divisors and partial sums.
template <typename opmath_t>
struct SubsetRowState {
  ModalityArray<opmath_t> w;
  std::vector<uint8_t> present;  // absent modalities are never read; a present one with
                                 // weight 0 is (0 * inf = NaN, as in the reference)
  std::vector<opmath_t> zrow, divisor, num, score;

  SubsetRowState(int64_t S, int64_t M, int64_t C)
      : w(M), present(M), zrow(M * C), divisor(S), num(S * kSubsetCols), score(kSubsetCols) {}
};

// Visits every row b in [begin, end) and, per column chunk [c0, c0 + n), every subset's
// scores (opmath, already divided) through visit(b, s, c0, n, scores).
template <typename scalar_t, typename Visit>
void for_each_subset_score(const char* op, const at::Tensor& z, const SubsetPlan& plan,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& present, int64_t begin, int64_t end,
                           const Visit& visit) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t M = z.size(1), C = z.size(2), S = static_cast<int64_t>(plan.parent.size());
  const scalar_t* z_data = z.const_data_ptr<scalar_t>();
  const opmath_t* weight_data = optional_data<opmath_t>(weight);
  const bool* present_data = optional_data<bool>(present);
  SubsetRowState<opmath_t> st(S, M, C);
  for (int64_t b = begin; b < end; ++b) {
    row_weights(op, present_data ? present_data + b * M : nullptr,
                weight_data ? weight_data + b * M : nullptr, M, st.w.data());
    for (int64_t m = 0; m < M; ++m) {
      st.present[m] = present_data == nullptr || present_data[b * M + m];
    }
    const opmath_t* zr = as_opmath(z_data + b * M * C, st.zrow.data(), M * C);
    for (int64_t s = 0; s < S; ++s) {
      opmath_t den = 0;
      for (int64_t m = 0; m < M; ++m) den += plan.members[s * M + m] ? st.w[m] : opmath_t(0);
      st.divisor[s] = den > 0 ? den : opmath_t(1);
    }
    for (int64_t c0 = 0; c0 < C; c0 += kSubsetCols) {
      const int64_t n = std::min(kSubsetCols, C - c0);
      for (int64_t s = 0; s < S; ++s) {
        opmath_t* __restrict cur = st.num.data() + s * kSubsetCols;
        const int64_t parent = plan.parent[s];
        if (parent == SubsetPlan::kEmpty) {
          std::fill(cur, cur + n, opmath_t(0));
        } else if (parent == SubsetPlan::kDirect) {
          std::fill(cur, cur + n, opmath_t(0));
          for (int64_t m = 0; m < M; ++m) {
            if (!plan.members[s * M + m] || !st.present[m]) continue;
            const opmath_t wm = st.w[m];
            const opmath_t* __restrict zm = zr + m * C + c0;
            for (int64_t c = 0; c < n; ++c) cur[c] += wm * zm[c];
          }
        } else {
          const int64_t m = plan.last[s];
          const opmath_t wm = st.w[m];
          const opmath_t* __restrict zm = zr + m * C + c0;
          if (!st.present[m]) {  // absent: z never read, adds exactly 0
            if (parent == SubsetPlan::kFromZero) {
              std::fill(cur, cur + n, opmath_t(0));
            } else {
              const opmath_t* base = st.num.data() + parent * kSubsetCols;
              std::copy(base, base + n, cur);
            }
          } else if (parent == SubsetPlan::kFromZero) {
            for (int64_t c = 0; c < n; ++c) cur[c] = wm * zm[c];
          } else {
            const opmath_t* __restrict base = st.num.data() + parent * kSubsetCols;
            for (int64_t c = 0; c < n; ++c) cur[c] = base[c] + wm * zm[c];
          }
        }
        const opmath_t div = st.divisor[s];
        opmath_t* __restrict score = st.score.data();
        for (int64_t c = 0; c < n; ++c) score[c] = cur[c] / div;
        visit(b, s, c0, n, static_cast<const opmath_t*>(score));
      }
    }
  }
}

void check_subset_inputs(const at::Tensor& z, const at::Tensor& subsets,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& present) {
  check_input(z, "z", 3);
  check_input(subsets, "subsets", 2);
  check_dtype(subsets, "subsets", at::kBool);
  const int64_t B = z.size(0), M = z.size(1);
  TORCH_CHECK(subsets.size(1) == M, "subsets must have ", M, " columns, got ", subsets.size(1));
  check_optional(weight, "weight", {B, M}, at::toOpMathType(z.scalar_type()));
  check_optional(present, "present", {B, M}, at::kBool);
}

// Rough scalar work of one row, for the parallel grain.
int64_t row_work(const at::Tensor& z, const at::Tensor& subsets) {
  return 3 * subsets.size(0) * z.size(2) + z.size(1) * z.size(2);
}

}  // namespace

at::Tensor subset_logits_cpu(const at::Tensor& z, const at::Tensor& subsets,
                             const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& present) {
  check_subset_inputs(z, subsets, weight, present);
  const int64_t B = z.size(0), C = z.size(2), S = subsets.size(0);
  at::Tensor scores = empty_output({S, B, C}, z.options());
  const SubsetPlan plan = plan_subsets(subsets);
  MMFAST_DISPATCH_FLOATING(z.scalar_type(), "subset_logits_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scalar_t* out = scores.mutable_data_ptr<scalar_t>();
    parallel_rows(B, row_work(z, subsets), [&](int64_t begin, int64_t end) {
      for_each_subset_score<scalar_t>(
          "subset_logits", z, plan, weight, present, begin, end,
          [&](int64_t b, int64_t s, int64_t c0, int64_t n, const opmath_t* score) {
            store_from_opmath(score, out + (s * B + b) * C + c0, n);
          });
    });
  });
  return scores;
}

at::Tensor subset_accuracy_cpu(const at::Tensor& z, const at::Tensor& target,
                               const at::Tensor& subsets, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& present) {
  check_subset_inputs(z, subsets, weight, present);
  check_input(target, "target", 1);
  check_dtype(target, "target", at::kLong);
  const int64_t B = z.size(0), C = z.size(2), S = subsets.size(0);
  TORCH_CHECK(target.size(0) == B, "target must have shape (", B, "), got ", target.sizes());
  const SubsetPlan plan = plan_subsets(subsets);
  const int64_t* target_data = target.const_data_ptr<int64_t>();
  std::vector<std::atomic<int64_t>> correct(S);
  MMFAST_DISPATCH_FLOATING(z.scalar_type(), "subset_accuracy_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    parallel_rows(B, row_work(z, subsets), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> best(S);
      std::vector<int64_t> best_index(S), local_correct(S, 0);
      for_each_subset_score<scalar_t>(
          "subset_accuracy", z, plan, weight, present, begin, end,
          [&](int64_t b, int64_t s, int64_t c0, int64_t n, const opmath_t* score) {
            const auto [top, at] = first_argmax(score, n);
            if (c0 == 0 || beats_for_argmax(top, best[s])) best[s] = top, best_index[s] = c0 + at;
            if (c0 + n == C) {
              const int64_t y = target_data[b];
              if (y < 0 || y >= C) {
                value_error("subset_accuracy", "target",
                            c10::str("values in [0, ", C, ")").c_str(), y);
              }
              // A NaN score wins the argmax and keeps it: the row counts as wrong (BRIEF
              // contract 3).
              local_correct[s] += !std::isnan(best[s]) && best_index[s] == y;
            }
          });
      for (int64_t s = 0; s < S; ++s) correct[s] += local_correct[s];
    });
  });
  at::Tensor out = at::empty({S}, z.options().dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s) out_data[s] = correct[s].load();
  return out;
}

}  // namespace mmfast::cpu::CPU_CAPABILITY

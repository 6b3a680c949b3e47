// CPU kernel of noisy_modality_dropout (DESIGN.md op 3; ground truth
// mmfast/ops/reference.py::noisy_modality_dropout). Reproduces the reference's Philox4x32-10
// streams (csrc/common/philox.h): keep and sigma_used bit for bit, the noise to float32
// rounding of log/cos/sin. Parallel over flat elements, so a few huge rows still use every
// thread; dropped rows draw no noise.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/cpu_utils.h"

namespace mmfast::cpu {
namespace {

// keep_b = u0_b >= p_drop_b; sigma_used_b = sigma_b, or levels[min(floor(u1_b K), K - 1)].
void draw_per_sample(const at::Tensor& p_drop, const at::Tensor& sigma, bool sigma_levels,
                     uint64_t seed, uint64_t offset, at::Tensor& keep, at::Tensor& sigma_used) {
  const int64_t B = keep.size(0), K = sigma.numel();
  const float* p_data = p_drop.const_data_ptr<float>();
  const float* s_data = sigma.const_data_ptr<float>();
  const bool p_shared = p_drop.numel() == 1, s_shared = sigma.numel() == 1;
  bool* keep_data = keep.mutable_data_ptr<bool>();
  float* used_data = sigma_used.mutable_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const Philox4 r = philox_sample(static_cast<uint64_t>(b), offset, seed);
    keep_data[b] = philox_uniform(r.v[0]) >= p_data[p_shared ? 0 : b];
    if (sigma_levels) {
      const auto level = static_cast<int64_t>(philox_uniform(r.v[1]) * static_cast<float>(K));
      used_data[b] = s_data[std::min(level, K - 1)];
    } else {
      used_data[b] = s_data[s_shared ? 0 : b];
    }
  }
}

// y = keep ? x + sigma n : fill over flat elements, row by row, kChunk elements at a time.
template <typename scalar_t>
void noisy_rows(const at::Tensor& x, const at::Tensor& keep, const at::Tensor& sigma_used,
                uint64_t seed, uint64_t offset, double fill, at::Tensor& y) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), numel = x.numel();
  if (numel == 0) return;
  const int64_t F = numel / B;
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const bool* keep_data = keep.const_data_ptr<bool>();
  const float* used_data = sigma_used.const_data_ptr<float>();
  scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
  const auto fill_value = static_cast<scalar_t>(static_cast<opmath_t>(fill));

  // ~40 scalar ops per element (Philox + Box-Muller): the grain is in elements.
  at::parallel_for(0, numel, kGrainWork / 16, [&](int64_t lo, int64_t hi) {
    float noise[kChunk];
    opmath_t buf[kChunk], out[kChunk];
    for (int64_t b = lo / F, e = lo; e < hi; ++b) {
      const int64_t row_end = std::min(hi, (b + 1) * F);
      if (!keep_data[b]) {
        std::fill(y_data + e, y_data + row_end, fill_value);
        e = row_end;
        continue;
      }
      const float sigma = used_data[b];
      for (; e < row_end; e += kChunk) {
        const int64_t n = std::min(kChunk, row_end - e);
        standard_normals(static_cast<uint64_t>(e), n, seed, offset, noise);
        const opmath_t* __restrict xs = as_opmath(x_data + e, buf, n);
        // (sigma n) is rounded to float32 first, as the reference does.
        for (int64_t i = 0; i < n; ++i) out[i] = xs[i] + static_cast<opmath_t>(sigma * noise[i]);
        store_from_opmath(out, y_data + e, n);
      }
      e = row_end;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> noisy_modality_dropout_cpu(
    const at::Tensor& x, const at::Tensor& p_drop, const at::Tensor& sigma, bool sigma_levels,
    int64_t seed, int64_t offset, double fill) {
  check_input(x, "x", -1);
  TORCH_CHECK(x.dim() >= 1, "x must have a batch dimension, got a 0-dim tensor");
  const int64_t B = x.size(0);
  check_input(p_drop, "p_drop", 1);
  check_dtype(p_drop, "p_drop", at::kFloat);
  TORCH_CHECK(p_drop.numel() == B || p_drop.numel() == 1, "p_drop must have shape (", B,
              "), got ", p_drop.sizes());
  check_input(sigma, "sigma", 1);
  check_dtype(sigma, "sigma", at::kFloat);
  if (sigma_levels) {
    TORCH_CHECK(sigma.numel() >= 1, "sigma levels must not be empty");
  } else {
    TORCH_CHECK(sigma.numel() == B || sigma.numel() == 1, "sigma must have shape (", B,
                "), got ", sigma.sizes());
  }
  at::Tensor y = at::empty_like(x);
  at::Tensor keep = at::empty({B}, x.options().dtype(at::kBool));
  at::Tensor sigma_used = at::empty({B}, x.options().dtype(at::kFloat));
  // Python ints reach us as int64; the stream uses their two's-complement bits.
  const auto useed = static_cast<uint64_t>(seed), uoffset = static_cast<uint64_t>(offset);
  draw_per_sample(p_drop, sigma, sigma_levels, useed, uoffset, keep, sigma_used);
  MMFAST_DISPATCH_FLOATING(x.scalar_type(), "noisy_modality_dropout_cpu", [&] {
    noisy_rows<scalar_t>(x, keep, sigma_used, useed, uoffset, fill, y);
  });
  return {y, keep, sigma_used};
}

}  // namespace
}  // namespace mmfast::cpu

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("noisy_modality_dropout", &mmfast::cpu::noisy_modality_dropout_cpu);
}

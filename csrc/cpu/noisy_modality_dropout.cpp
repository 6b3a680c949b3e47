// CPU kernel of noisy_modality_dropout (DESIGN.md op 3; ground truth
// mmfast/ops/reference.py::noisy_modality_dropout). Reproduces the reference's Philox4x32-10
// streams (csrc/common/philox.h): keep and sigma_used bit for bit, the noise to float32
// rounding of log/cos/sin. Parallel over flat elements, so a few huge rows still use every
// thread; dropped rows draw no noise.

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "common/philox.h"
#include "cpu/cpu_utils.h"

namespace mmfast::cpu {
namespace {

// philox.h's box_muller calls scalar libm (logf, cosf, sinf), which no CPU compiler
// vectorises without -ffast-math; the branch-free polynomial versions below (Cephes
// coefficients, a few ulp on these ranges) let standard_normals vectorise. The Philox
// draws and uniforms come from philox.h unchanged.
// Bit-level float helpers: integer blends keep the loops below free of branches (GCC will
// not if-convert possibly trapping float selects).
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ln(u) for u in (0, 1] (a normal float): u = m 2^e, m folded into [sqrt(1/2), sqrt(2)).
inline float log_unit_interval(float u) {
  const uint32_t bits = float_bits(u);
  const uint32_t mantissa = (bits & 0x007fffffu) | 0x3f000000u;  // m in [0.5, 1)
  const uint32_t low = bits_float(mantissa) < 0.707106781186547524f ? 1u : 0u;
  const int32_t e = static_cast<int32_t>(bits >> 23) - 126 - static_cast<int32_t>(low);
  const float m = bits_float(mantissa + (low << 23)) - 1.0f;  // 2m when low (exact)
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float r = p * m * z + fe * -2.12194440e-4f - 0.5f * z;
  return (m + r) + fe * 0.693359375f;
}

// cos(2 pi u) and sin(2 pi u) for u in [0, 1]: u is reduced exactly by quarter turns, then
// the polynomials run on [-pi/4, pi/4].
inline void cos_sin_turns(float u, float* c_out, float* s_out) {
  const float t = u * 4.0f;  // exact
  const int32_t turns = static_cast<int32_t>(t + 0.5f);  // nearest quarter (t >= 0)
  const float a = (t - static_cast<float>(turns)) * 1.57079632679489662f;  // exact difference
  const float z = a * a;
  const float s = a + a * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z -
                               1.6666654611e-1f);
  const float c = 1.0f - 0.5f * z +
                  z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                           4.166664568298827e-2f);
  const int32_t q = turns & 3;
  // Rotate by q quarter turns: odd q swaps (c, s); q in {1, 2} negates cos, q in {2, 3} sin.
  const uint32_t swap = 0u - static_cast<uint32_t>(q & 1);
  const uint32_t cb = float_bits(c), sb = float_bits(s);
  const uint32_t cos_sign = static_cast<uint32_t>(((q + 1) >> 1) & 1) << 31;
  const uint32_t sin_sign = static_cast<uint32_t>(q >> 1) << 31;
  *c_out = bits_float(((cb & ~swap) | (sb & swap)) ^ cos_sign);
  *s_out = bits_float(((sb & ~swap) | (cb & swap)) ^ sin_sign);
}

// N(0, 1) draws of flat elements [first, first + n) of the noise stream keyed by (seed, offset):
// element e is lane e % 4 of Philox block e / 4, Box-Muller on lanes (0, 1) and (2, 3)
// (reference._standard_normal). n <= kChunk. The passes are split so that all but the sqrt
// pass vectorise (sqrtf's errno path keeps that one scalar without -fno-math-errno).
inline void standard_normals(uint64_t first, int64_t n, uint64_t seed, uint64_t offset,
                             float* out) {
  constexpr int64_t kBlocks = kChunk / 4 + 2;
  uint32_t r[4][kBlocks];
  float radius[2][kBlocks], lanes[4 * kBlocks];
  const uint64_t block0 = first / 4;
  const int64_t blocks = static_cast<int64_t>((first + n + 3) / 4 - block0);
  for (int64_t i = 0; i < blocks; ++i) {
    const Philox4 p = philox_noise_block(block0 + i, offset, seed);
    r[0][i] = p.v[0], r[1][i] = p.v[1], r[2][i] = p.v[2], r[3][i] = p.v[3];
  }
  for (int64_t i = 0; i < blocks; ++i) {
    radius[0][i] = -2.0f * log_unit_interval(philox_uniform(r[0][i]));
    radius[1][i] = -2.0f * log_unit_interval(philox_uniform(r[2][i]));
  }
  for (float* pair_radius : radius) {
    for (int64_t i = 0; i < blocks; ++i) pair_radius[i] = std::sqrt(pair_radius[i]);
  }
  for (int64_t i = 0; i < blocks; ++i) {
    float c01, s01, c23, s23;
    cos_sin_turns(philox_uniform(r[1][i]), &c01, &s01);
    cos_sin_turns(philox_uniform(r[3][i]), &c23, &s23);
    lanes[4 * i] = radius[0][i] * c01;
    lanes[4 * i + 1] = radius[0][i] * s01;
    lanes[4 * i + 2] = radius[1][i] * c23;
    lanes[4 * i + 3] = radius[1][i] * s23;
  }
  const int64_t skip = static_cast<int64_t>(first - 4 * block0);
  std::copy(lanes + skip, lanes + skip + n, out);
}

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
    int64_t seed, const at::Tensor& offset_tensor, double fill) {
  check_input(x, "x", -1);
  TORCH_CHECK(offset_tensor.dim() == 0 && offset_tensor.scalar_type() == at::kLong,
              "offset must be a 0-d int64 tensor, got ", offset_tensor.sizes(), " ",
              offset_tensor.scalar_type());
  const int64_t offset = offset_tensor.item<int64_t>();  // a CPU tensor: no device sync
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

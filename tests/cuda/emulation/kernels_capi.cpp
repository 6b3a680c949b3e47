// C entry points (for ctypes) that run the raw CUDA kernels of csrc/cuda/*_kernel.cuh under
// the host emulation in cuda_host_emulation.h. Tensors travel as raw pointers; the launch
// configuration (lanes per row, vectorised or not, grid size) is the caller's, so tests can
// exercise the launchers' choices and the others (grid-stride loops, partial warps, tails).
// Storage dtype codes: 0 float32, 1 float64, 2 float16, 3 bfloat16.
#include "cuda_host_emulation.h"

#include "cuda/certified_margin_kernel.cuh"
#include "cuda/masked_fusion_kernel.cuh"
#include "cuda/noisy_modality_dropout_kernel.cuh"
#include "cuda/subset_ops_kernel.cuh"

namespace {

using namespace mmfast::cuda;

constexpr unsigned kBlock = 256;  // the launchers' kThreadsPerBlock

template <typename Fn>
void dispatch(int dtype, Fn fn) {
  switch (dtype) {
    case 0:
      fn(float{});
      break;
    case 1:
      fn(double{});
      break;
    case 2:
      fn(__half{});
      break;
    default:
      fn(__nv_bfloat16{});
  }
}

template <typename T>
MarginArgs<T> margin_args(const void* z, const int64_t* target, const void* lip,
                          int lip_per_pair, const bool* mask, int64_t B, int M, int64_t C,
                          int kind, double q) {
  using A = opmath_t<T>;
  return {static_cast<const T*>(z), target, static_cast<const A*>(lip), lip_per_pair != 0,
          mask, B, M, C, static_cast<DualNorm>(kind), static_cast<A>(q)};
}

}  // namespace

extern "C" {

void emu_masked_fusion(int dtype, const void* x, const bool* mask, const void* weight,
                       int normalize, int64_t B, int M, int64_t D, int lanes, int vectorized,
                       unsigned grid, void* y, void* denom) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    auto kernel = vectorized ? masked_fusion_forward_kernel<T, vector_width<T>()>
                             : masked_fusion_forward_kernel<T, 1>;
    emu_launch(kernel, grid, kBlock, static_cast<const T*>(x), mask,
               static_cast<const A*>(weight), normalize != 0, B, M, D, lanes, static_cast<T*>(y),
               static_cast<A*>(denom));
  });
}

void emu_masked_fusion_backward(int dtype, const void* grad_y, const void* x, const bool* mask,
                                const void* weight, const void* y, const void* denom,
                                int normalize, int need_grad_weight, int64_t B, int M, int64_t D,
                                int lanes, int vectorized, unsigned grid, void* grad_x,
                                void* grad_weight) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    constexpr int V = vector_width<T>();
    auto kernel = need_grad_weight
                      ? (vectorized ? masked_fusion_backward_kernel<T, V, true>
                                    : masked_fusion_backward_kernel<T, 1, true>)
                      : (vectorized ? masked_fusion_backward_kernel<T, V, false>
                                    : masked_fusion_backward_kernel<T, 1, false>);
    emu_launch(kernel, grid, kBlock, static_cast<const T*>(grad_y), static_cast<const T*>(x),
               mask, static_cast<const A*>(weight), static_cast<const T*>(y),
               static_cast<const A*>(denom), normalize != 0, B, M, D, lanes,
               static_cast<T*>(grad_x), static_cast<A*>(grad_weight));
  });
}

void emu_certified_margin(int dtype, const void* z, const int64_t* target, const void* lip,
                          int lip_per_pair, const bool* mask, const void* bias, int kind,
                          double q, int top_rival, int64_t B, int M, int64_t C, int lanes,
                          unsigned grid, void* radius, void* margin, int64_t* runner_up) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    auto kernel = top_rival ? certified_margin_forward_kernel<T, true>
                            : certified_margin_forward_kernel<T, false>;
    emu_launch(kernel, grid, kBlock,
               margin_args<T>(z, target, lip, lip_per_pair, mask, B, M, C, kind, q),
               static_cast<const A*>(bias), lanes, static_cast<A*>(radius),
               static_cast<A*>(margin), runner_up);
  });
}

void emu_certified_margin_backward(int dtype, const void* z, const int64_t* target,
                                   const void* lip, int lip_per_pair, const bool* mask, int kind,
                                   double q, int64_t B, int M, int64_t C, const void* grad_radius,
                                   const void* grad_margin, const void* margin,
                                   const int64_t* runner_up, int lanes, unsigned grid,
                                   void* grad_z, void* grad_lip_sel) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    emu_launch(certified_margin_backward_kernel<T>, grid, kBlock,
               margin_args<T>(z, target, lip, lip_per_pair, mask, B, M, C, kind, q),
               static_cast<const A*>(grad_radius), static_cast<const A*>(grad_margin),
               static_cast<const A*>(margin), runner_up, lanes, static_cast<T*>(grad_z),
               static_cast<A*>(grad_lip_sel));
  });
}

void emu_noise_per_sample(const float* p_drop, int64_t p_numel, const float* sigma,
                          int64_t sigma_numel, int sigma_levels, uint64_t seed,
                          const int64_t* offset, int64_t B, unsigned grid, bool* keep,
                          float* sigma_used) {
  emu_launch(noise_per_sample_kernel, grid, kBlock, p_drop, p_numel, sigma, sigma_numel,
             sigma_levels != 0, seed, offset, B, keep, sigma_used);
}

void emu_noisy_modality_dropout(int dtype, const void* x, const bool* keep,
                                const float* sigma_used, uint64_t seed, const int64_t* offset,
                                double fill, int64_t numel, int64_t row_elems, int vectorized,
                                unsigned grid, void* y) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    emu_launch(noisy_modality_dropout_kernel<T>, grid, kBlock, static_cast<const T*>(x), keep,
               sigma_used, seed, offset, static_cast<A>(fill), numel, row_elems,
               vectorized != 0, static_cast<T*>(y));
  });
}

void emu_subset_logits(int dtype, const void* z, const bool* subsets, const void* weight,
                       const bool* present, int64_t B, int M, int64_t C, int64_t S, int lanes,
                       int vectorized, unsigned grid, void* scores) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    auto kernel = vectorized ? subset_logits_kernel<T, vector_width<T>()>
                             : subset_logits_kernel<T, 1>;
    emu_launch(kernel, grid, kBlock, static_cast<const T*>(z), subsets,
               static_cast<const A*>(weight), present, B, M, C, S, lanes,
               static_cast<T*>(scores));
  });
}

// Returns the shared-memory bytes of the layout, or -1 (nothing run) when it exceeds the
// emulated buffer.
int64_t emu_subset_accuracy(int dtype, const void* z, const int64_t* target,
                            const bool* subsets, const void* weight, const bool* present,
                            int64_t B, int M, int64_t C, int S, int tile_rows, int tile_classes,
                            unsigned grid, unsigned long long* correct) {
  int64_t bytes = -1;
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    const SubsetAccuracyLayout<A> layout{tile_rows, tile_classes, M, S};
    if (layout.total_bytes() > kEmulatedSharedBytes) return;
    bytes = layout.total_bytes();
    emu_launch(subset_accuracy_kernel<T>, grid, kBlock, static_cast<const T*>(z), target,
               subsets, static_cast<const A*>(weight), present, B, C, layout, correct);
  });
  return bytes;
}

void emu_subset_accuracy_codes(int dtype, const void* z, const int64_t* target,
                               const bool* subsets, const void* weight, const bool* present,
                               int64_t B, int M, int64_t C, int64_t S, int lanes, int vectorized,
                               unsigned grid, unsigned long long* correct) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = opmath_t<T>;
    auto kernel = vectorized ? subset_accuracy_codes_kernel<T, vector_width<T>()>
                             : subset_accuracy_codes_kernel<T, 1>;
    emu_launch(kernel, grid, kBlock, static_cast<const T*>(z), target, subsets,
               static_cast<const A*>(weight), present, B, M, C, S, lanes, correct);
  });
}

// The launchers' host-side lane choice (cuda_utils.cuh), so tests use the real rule.
int emu_snug_lanes(int64_t units) { return snug_lanes(units); }

}  // extern "C"

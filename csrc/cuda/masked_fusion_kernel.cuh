// Raw CUDA kernels of masked_fusion and _masked_fusion_backward (semantics: csrc/ops.cpp and
// mmfast/ops/reference.py::masked_fusion). No torch: launched from csrc/cuda/masked_fusion.cu.
//
// Layout: x (B, M, D) T, mask (B, M) bool, weight (B, M) opmath or null, y (B, D) T,
// denom (B,) opmath, all contiguous. A group of `lanes` threads owns a row b: every lane
// computes the M fusion weights (M <= 8, register arrays), then the group strides over the
// row's D features VEC at a time (VEC = 16 bytes of T when D % VEC == 0 and the pointers are
// 16-byte aligned, else 1), accumulating in opmath.
#pragma once

#include "cuda_utils.cuh"

namespace mmfast {
namespace cuda {

// Per-row fusion weights: w_m = present_m ? weight_bm : 0 (weight null -> 1, mask null -> all
// present) for m < M, 0 beyond, selected rather than multiplied; `present` has bit m set for a
// present modality (the only ones whose data is ever read: BRIEF contract 3); `bad` says that
// some weight of the row is NaN, infinite or negative (contract 2: the kernels cannot raise, so
// such a row's outputs are NaN).
template <typename A>
struct RowWeights {
  A w[kMaxModalities];
  A denom;
  unsigned present;
  bool bad;
};

template <typename A>
MMFAST_DEVICE RowWeights<A> fusion_weights(const bool* mask_row, const A* weight_row, int M) {
  RowWeights<A> r;
  r.denom = A(0);
  r.present = 0;
  r.bad = false;
#pragma unroll
  for (int m = 0; m < kMaxModalities; ++m) {
    r.w[m] = A(0);
    if (m < M) {
      const bool present = mask_row == nullptr || mask_row[m];
      const A weight = weight_row == nullptr ? A(1) : weight_row[m];
      r.bad = r.bad || !is_valid_scale(weight);
      r.w[m] = present ? weight : A(0);
      r.present |= present ? 1u << m : 0u;
      r.denom += r.w[m];
    }
  }
  return r;
}

// out_row[d] = sum_{m in use} w_m x_row[m * D + d] / scale for the group's share of the D
// features; modalities outside the `use` bitmask are never read. poison: write NaN instead.
// Shared with subset_logits (csrc/cuda/subset_ops_kernel.cuh).
template <typename T, int VEC>
MMFAST_DEVICE void fuse_row(const T* x_row, const opmath_t<T> w[kMaxModalities], unsigned use,
                            int M, int64_t D, opmath_t<T> scale, bool poison, T* out_row, int lane,
                            int lanes) {
  using A = opmath_t<T>;
  const int64_t stride = static_cast<int64_t>(lanes) * VEC;
  for (int64_t d = static_cast<int64_t>(lane) * VEC; d < D; d += stride) {
    A acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = A(0);
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      if (m < M && (use >> m & 1u)) {
        A xv[VEC];
        load_opmath<T, VEC>(x_row + static_cast<int64_t>(m) * D + d, VEC > 1, VEC, xv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += w[m] * xv[i];
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = poison ? A(NAN) : acc[i] / scale;
    store_opmath<T, VEC>(out_row + d, VEC > 1, VEC, acc);
  }
}

// No cross-lane communication, so a plain (non-uniform) row loop is fine here.
template <typename T, int VEC>
__global__ void masked_fusion_forward_kernel(const T* __restrict__ x,
                                             const bool* __restrict__ mask,
                                             const opmath_t<T>* __restrict__ weight,
                                             bool normalize, int64_t B, int M, int64_t D,
                                             int lanes, T* __restrict__ y,
                                             opmath_t<T>* __restrict__ denom) {
  using A = opmath_t<T>;
  const LaneGroup g = LaneGroup::make(lanes);
  for (int64_t b = g.first_row; b < B; b += g.row_step) {
    const RowWeights<A> rw =
        fusion_weights<A>(mask + b * M, weight == nullptr ? nullptr : weight + b * M, M);
    if (g.lane == 0) denom[b] = rw.bad ? A(NAN) : rw.denom;
    const A scale = normalize && rw.denom > A(0) ? rw.denom : A(1);
    fuse_row<T, VEC>(x + b * M * D, rw.w, rw.present, M, D, scale, rw.bad, y + b * D, g.lane,
                     g.lanes);
  }
}

// grad_x_bmd = present_bm ? (grad_y_bd / d_b) * w_bm : 0, d_b = normalize && denom_b > 0 ?
// denom_b : 1. kGradWeight: also grad_weight_bm = present_bm ? (sum_d gy x_bm - (normalize ?
// sum_d gy y : 0)) / d_b : 0, reduced over the group with shuffles (hence the warp-uniform row
// loop). An absent modality's x is never read; a row with an invalid weight gets NaN
// gradients.
template <typename T, int VEC, bool kGradWeight>
__global__ void masked_fusion_backward_kernel(const T* __restrict__ grad_y,
                                              const T* __restrict__ x,
                                              const bool* __restrict__ mask,
                                              const opmath_t<T>* __restrict__ weight,
                                              const T* __restrict__ y,
                                              const opmath_t<T>* __restrict__ denom,
                                              bool normalize, int64_t B, int M, int64_t D,
                                              int lanes, T* __restrict__ grad_x,
                                              opmath_t<T>* __restrict__ grad_weight) {
  using A = opmath_t<T>;
  const LaneGroup g = LaneGroup::make(lanes);
  for (int64_t b = g.first_row; g.warp_active(b, B); b += g.row_step) {
    const bool active = b < B;
    const int64_t row = active ? b : 0;  // inactive lanes only join the shuffles
    const RowWeights<A> rw =
        fusion_weights<A>(mask + row * M, weight == nullptr ? nullptr : weight + row * M, M);
    const A den = denom[row];
    const A scale = normalize && den > A(0) ? den : A(1);
    const A poison = rw.bad ? A(NAN) : A(0);  // added to every gradient of the row
    A dot_x[kMaxModalities];
    A dot_y = A(0);
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) dot_x[m] = A(0);

    const T* gy_row = grad_y + row * D;
    const T* x_row = x + row * M * D;
    const T* y_row = y + row * D;
    T* gx_row = grad_x + row * M * D;
    const int64_t stride = static_cast<int64_t>(g.lanes) * VEC;
    for (int64_t d = static_cast<int64_t>(g.lane) * VEC; active && d < D; d += stride) {
      A gy[VEC];
      load_opmath<T, VEC>(gy_row + d, VEC > 1, VEC, gy);
      A gy_scaled[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) gy_scaled[i] = gy[i] / scale;
#pragma unroll
      for (int m = 0; m < kMaxModalities; ++m) {
        if (m < M) {
          const bool present = rw.present >> m & 1u;
          A gx[VEC];
#pragma unroll
          for (int i = 0; i < VEC; ++i) gx[i] = (present ? gy_scaled[i] * rw.w[m] : A(0)) + poison;
          store_opmath<T, VEC>(gx_row + static_cast<int64_t>(m) * D + d, VEC > 1, VEC, gx);
          if (kGradWeight && present) {
            A xv[VEC];
            load_opmath<T, VEC>(x_row + static_cast<int64_t>(m) * D + d, VEC > 1, VEC, xv);
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot_x[m] += gy[i] * xv[i];
          }
        }
      }
      if (kGradWeight && normalize) {
        A yv[VEC];
        load_opmath<T, VEC>(y_row + d, VEC > 1, VEC, yv);
#pragma unroll
        for (int i = 0; i < VEC; ++i) dot_y += gy[i] * yv[i];
      }
    }
    if (kGradWeight) {
      dot_y = group_sum(dot_y, g.lanes);
#pragma unroll
      for (int m = 0; m < kMaxModalities; ++m) {
        if (m < M) {
          const A total = group_sum(dot_x[m], g.lanes);
          if (active && g.lane == 0) {
            const bool present = rw.present >> m & 1u;
            grad_weight[row * M + m] = (present ? (total - dot_y) / scale : A(0)) + poison;
          }
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace mmfast

#define MMFAST_MASKED_FUSION_KERNEL_LIST(T)                                            \
  {                                                                                    \
    MMFAST_KERNEL_ADDR(masked_fusion_forward_kernel<T, 1>),                            \
        MMFAST_KERNEL_ADDR(masked_fusion_forward_kernel<T, vector_width<T>()>),        \
        MMFAST_KERNEL_ADDR(masked_fusion_backward_kernel<T, 1, false>),                \
        MMFAST_KERNEL_ADDR(masked_fusion_backward_kernel<T, 1, true>),                 \
        MMFAST_KERNEL_ADDR(masked_fusion_backward_kernel<T, vector_width<T>(), false>), \
        MMFAST_KERNEL_ADDR(masked_fusion_backward_kernel<T, vector_width<T>(), true>)  \
  }

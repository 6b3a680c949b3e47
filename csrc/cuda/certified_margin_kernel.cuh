// Raw CUDA kernels of certified_margin and _certified_margin_backward (semantics: csrc/ops.cpp,
// mmfast/ops/reference.py::certified_margin; tie and degenerate rules as the CPU kernels in
// csrc/cpu/certified_margin.cpp). No torch: launched from csrc/cuda/certified_margin.cu.
//
// Layout: z (B, M, C) T, target (B,) int64, lip (M,) or (M, C, C) opmath, mask (B, M) bool or
// null, bias (C,) opmath or null. A group of `lanes` threads owns a row: each lane scans the
// rivals k = lane, lane + lanes, ... in one pass over the row of z, keeping its best rival, and
// the group merges the lane winners with shuffles. No (B, C, C) or (B, C) intermediates.
#pragma once

#include "cuda_utils.cuh"

namespace mmfast {
namespace cuda {

// The dual exponent q split into the cases the reference distinguishes.
enum class DualNorm : int { kOne, kTwo, kInf, kPow };

// Folds one term v >= 0 into the running state of ||.||_q (sum, sum of squares, max, sum of
// powers); the max lets NaN through as amax does.
template <typename A>
MMFAST_DEVICE A norm_accumulate(DualNorm kind, A s, A v, A q) {
  switch (kind) {
    case DualNorm::kOne:
      return s + v;
    case DualNorm::kTwo:
      return s + v * v;
    case DualNorm::kInf:
      return (v != v || v > s) ? v : s;
    default:
      return s + opmath_pow(v, q);
  }
}

// ||v||_q from the accumulated state; a zero (or NaN) state stays as is (reference _safe_norm).
template <typename A>
MMFAST_DEVICE A norm_finish(DualNorm kind, A s, A q) {
  if (!(s > A(0))) return s;
  if (kind == DualNorm::kTwo) return opmath_sqrt(s);
  if (kind == DualNorm::kPow) return opmath_pow(s, A(1) / q);
  return s;
}

// r = margin / den, or +inf / -inf / 0 by the margin's sign where den == 0 (NaN stays NaN).
template <typename A>
MMFAST_DEVICE A radius_of(A margin, A den) {
  if (den > A(0)) return margin / den;
  if (margin > A(0)) return positive_infinity<A>();
  if (margin < A(0)) return -positive_infinity<A>();
  return margin;
}

// Read-only view of the inputs shared by forward and backward.
template <typename T>
struct MarginArgs {
  using A = opmath_t<T>;
  const T* z;
  const int64_t* target;
  const A* lip;
  bool lip_per_pair;  // (M, C, C) rather than (M,)
  const bool* mask;   // null: every modality present
  int64_t B;
  int M;
  int64_t C;
  DualNorm kind;
  A q;

  // Bit m set when modality m of row b is present (the only ones whose z is read).
  MMFAST_DEVICE unsigned present_bits(int64_t b) const {
    unsigned bits = 0;
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      if (m < M && (mask == nullptr || mask[b * M + m])) bits |= 1u << m;
    }
    return bits;
  }
  // lip_m[y, k], or lip_m for (M,) lip.
  MMFAST_DEVICE A lip_at(int m, int64_t y, int64_t k) const {
    return lip_per_pair ? lip[(static_cast<int64_t>(m) * C + y) * C + k] : lip[m];
  }
  MMFAST_DEVICE A z_at(int64_t b, int m, int64_t c) const {
    return to_opmath(z[(b * M + m) * C + c]);
  }
  // den = ||(present_m ? lip_m[y, k] : 0)_m||_q; *bad |= some lip_m[y, k] read (every m:
  // an invalid lip is an error even for an absent modality) is NaN, infinite or negative.
  MMFAST_DEVICE A dual_norm(unsigned present, int64_t y, int64_t k, bool* bad) const {
    A s = A(0);
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      if (m < M) {
        const A l = lip_at(m, y, k);
        *bad = *bad || !is_valid_scale(l);
        s = norm_accumulate(kind, s, (present >> m & 1u) ? l : A(0), q);
      }
    }
    return norm_finish(kind, s, q);
  }
};

// A lane's (or the group's) best rival so far: the selection key (r for "min", the fused score
// for "top"), the rival index (-1: none yet), its margin and radius.
template <typename A>
struct Rival {
  A key;
  int64_t k;
  A margin;
  A radius;
};

template <bool kTop, typename A>
MMFAST_DEVICE Rival<A> group_best_rival(Rival<A> mine, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    Rival<A> other;
    other.key = __shfl_xor_sync(kFullWarpMask, mine.key, offset);
    other.k = __shfl_xor_sync(kFullWarpMask, mine.k, offset);
    other.margin = __shfl_xor_sync(kFullWarpMask, mine.margin, offset);
    other.radius = __shfl_xor_sync(kFullWarpMask, mine.radius, offset);
    // A strict total order on (key, k), so both partners keep the same winner.
    if (candidate_wins<kTop>(mine.key, mine.k, other.key, other.k)) mine = other;
  }
  return mine;
}

// The two values a row's work starts from: its target and its presence bits (zero for a row
// past the batch). The forward loads the next row's head while it scores the current row.
struct RowHead {
  int64_t target;
  unsigned present;
};

template <typename T>
MMFAST_DEVICE RowHead row_head(const MarginArgs<T>& in, int64_t b) {
  if (b >= in.B) return RowHead{0, 0u};
  return RowHead{in.target[b], in.present_bits(b)};
}

// Classes per lane and step of the forward: one 16-byte vector of z per present modality.
template <typename T>
__host__ __device__ constexpr int margin_classes_per_lane() {
  return vector_width<T>();
}

// kTop = false (rival "min"): k* = first argmin over k != y of r_k, a valid certificate.
// kTop = true (rival "top"): k* = first argmax over k != y of sum_m mask_m z_mk + bias_k; its
// denominator is computed once, after the group agrees on k*.
// Rows: radius = r_k*, margin = margin_k*, runner_up = k*; C == 1 gives (+inf, 0, -1).
// Poisoned rows get (NaN, NaN, -1), never a certificate (BRIEF contracts 2-3): a target outside
// [0, C) (never used as an index), a non-finite logit among the present modalities' values the
// row reads, an invalid (NaN, infinite or negative) lip value read. Absent modalities' logits
// are never read.
//
// Latency: the next row's target and mask are loaded before the current row is scored (a
// software pipeline over the grid-stride loop), so a row waits for one round of loads, not a
// chain of them: lane l reads the V = margin_classes_per_lane<T>() consecutive classes
// k0 = l V + step lanes V of every present modality as one 16-byte vector (scalar loads when C
// or z is not aligned to it), all issued together with the z[:, y] gathers, and scores the V
// rivals in an unrolled loop. Sums run over m in increasing order as in the reference, so the
// results do not depend on V or lanes.
template <typename T, bool kTop>
__global__ void certified_margin_forward_kernel(MarginArgs<T> in,
                                                const opmath_t<T>* __restrict__ bias, int lanes,
                                                opmath_t<T>* __restrict__ radius,
                                                opmath_t<T>* __restrict__ margin,
                                                int64_t* __restrict__ runner_up) {
  using A = opmath_t<T>;
  constexpr int V = margin_classes_per_lane<T>();
  const LaneGroup g = LaneGroup::make(lanes);
  const bool vectorized = in.C % V == 0 && is_aligned(in.z, sizeof(T) * V);
  const int64_t step = static_cast<int64_t>(lanes) * V;
  RowHead head = row_head(in, g.first_row);
  for (int64_t b = g.first_row; g.warp_active(b, in.B); b += g.row_step) {
    const bool active = b < in.B;
    const int64_t row = active ? b : 0;  // inactive lanes only join the shuffles
    const RowHead next = row_head(in, b + g.row_step);  // prefetch
    const int64_t y_raw = head.target;
    const unsigned present = head.present;
    head = next;
    const bool valid = y_raw >= 0 && y_raw < in.C;
    const int64_t y = valid ? y_raw : 0;
    bool bad = false;
    A zy[kMaxModalities];
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      zy[m] = m < in.M && (present >> m & 1u) ? in.z_at(row, m, y) : A(0);
      bad = bad || !is_finite_value(zy[m]);
    }
    const A bias_y = bias == nullptr ? A(0) : bias[y];
    // (M,) lip: one denominator for every rival.
    const A shared_den = in.lip_per_pair ? A(0) : in.dual_norm(present, y, 0, &bad);
    const T* z_row = in.z + row * in.M * in.C;

    Rival<A> best{A(0), -1, A(0), A(0)};
    for (int64_t k0 = static_cast<int64_t>(g.lane) * V; active && valid && k0 < in.C;
         k0 += step) {
      const int count = in.C - k0 >= V ? V : static_cast<int>(in.C - k0);
      A marg[V], fused[V], norm[V];
#pragma unroll
      for (int j = 0; j < V; ++j) marg[j] = fused[j] = norm[j] = A(0);
#pragma unroll
      for (int m = 0; m < kMaxModalities; ++m) {
        if (m >= in.M) continue;
        const bool here = present >> m & 1u;
        if (here) {
          A zk[V];
          load_opmath<T, V>(z_row + m * in.C + k0, vectorized, count, zk);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            if (j < count) bad = bad || !is_finite_value(zk[j]);
            marg[j] += zy[m] - zk[j];
            if (kTop) fused[j] += zk[j];
          }
        }
        if (!kTop && in.lip_per_pair) {  // every m: an absent modality's lip is checked too
#pragma unroll
          for (int j = 0; j < V; ++j) {
            if (j < count && k0 + j != y) {  // lip[m, y, y] is never read, as before
              const A l = in.lip_at(m, y, k0 + j);
              bad = bad || !is_valid_scale(l);
              norm[j] = norm_accumulate(in.kind, norm[j], here ? l : A(0), in.q);
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int64_t k = k0 + j;
        if (j >= count || k == y) continue;
        if (bias != nullptr) {
          const A bias_k = bias[k];
          marg[j] += bias_y - bias_k;
          fused[j] += bias_k;
        }
        Rival<A> cand{fused[j], k, marg[j], A(0)};
        if (!kTop) {
          const A den = in.lip_per_pair ? norm_finish(in.kind, norm[j], in.q) : shared_den;
          cand.radius = radius_of(marg[j], den);
          cand.key = cand.radius;
        }
        // Lane-local scan in increasing k: only a strict improvement replaces (first index
        // wins).
        const bool wins = best.k < 0 || (kTop ? beats_max(cand.key, best.key)
                                              : beats_min(cand.key, best.key));
        if (wins) best = cand;
      }
    }
    best = group_best_rival<kTop>(best, lanes);
    bad = group_sum(bad ? 1 : 0, lanes) > 0;  // every lane of the warp takes part
    if (kTop && best.k >= 0) {
      const A den = in.lip_per_pair ? in.dual_norm(present, y, best.k, &bad) : shared_den;
      best.radius = radius_of(best.margin, den);
    }
    if (active && g.lane == 0) {
      if (!valid || bad) {
        radius[row] = margin[row] = A(NAN);
        runner_up[row] = -1;
      } else if (best.k < 0) {  // C == 1: no rival
        radius[row] = positive_infinity<A>();
        margin[row] = A(0);
        runner_up[row] = -1;
      } else {
        radius[row] = best.radius;
        margin[row] = best.margin;
        runner_up[row] = best.k;
      }
    }
  }
}

// Only z[:, :, y] and z[:, :, k*] move the outputs: with g = grad_radius / den + grad_margin
// (grad_radius drops out where den == 0), grad_z_my = g mask_m, grad_z_mk* = -g mask_m, zero
// elsewhere. grad_lip_sel_m = -grad_radius margin / den^2 * d den / d lip_m[y, k*]: mask_m
// (q = 1), mask_m v_m / den (q = 2), mask_m (v_m / den)^(q-1) (finite q), and for q = inf
// 1 / (number of tied maxima) at each maximum (amax's gradient); zero where den == 0.
// Rows with runner_up < 0 (C == 1) or an invalid (target, runner_up) get all-zero gradients.
// No cross-lane communication: the group only shares the row's stores.
template <typename T>
__global__ void certified_margin_backward_kernel(MarginArgs<T> in,
                                                 const opmath_t<T>* __restrict__ grad_radius,
                                                 const opmath_t<T>* __restrict__ grad_margin,
                                                 const opmath_t<T>* __restrict__ margin,
                                                 const int64_t* __restrict__ runner_up,
                                                 int lanes, T* __restrict__ grad_z,
                                                 opmath_t<T>* __restrict__ grad_lip_sel) {
  using A = opmath_t<T>;
  const LaneGroup g = LaneGroup::make(lanes);
  for (int64_t b = g.first_row; b < in.B; b += g.row_step) {
    const int64_t k = runner_up[b];
    const int64_t y = in.target[b];
    const bool valid = k >= 0 && k < in.C && y >= 0 && y < in.C && k != y;
    const unsigned bits = in.present_bits(b);
    A present[kMaxModalities];
    A v[kMaxModalities];
    A s = A(0);
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      present[m] = m < in.M && (bits >> m & 1u) ? A(1) : A(0);
      v[m] = valid && m < in.M && (bits >> m & 1u) ? in.lip_at(m, y, k) : A(0);
      if (m < in.M) s = norm_accumulate(in.kind, s, v[m], in.q);
    }
    const A den = norm_finish(in.kind, s, in.q);
    const A gr = valid ? grad_radius[b] : A(0);
    const A gsum = valid ? (den > A(0) ? gr / den : A(0)) + grad_margin[b] : A(0);

    T* gz_row = grad_z + b * in.M * in.C;
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      if (m < in.M) {
        const A gpm = gsum * present[m];
        for (int64_t c = g.lane; c < in.C; c += lanes) {
          A val = A(0);
          if (valid && c == y) val = gpm;
          if (valid && c == k) val = -gpm;
          gz_row[m * in.C + c] = from_opmath<T>(val);
        }
      }
    }

    const bool den_positive = valid && den > A(0);
    const A coef = den_positive ? -gr * margin[b] / (den * den) : A(0);
    // (present_m is 0 or 1 here, so the products below select rather than leak.)
    int ties = 0;  // q = inf: amax shares its gradient evenly among tied maxima
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) ties += m < in.M && v[m] == den ? 1 : 0;
#pragma unroll
    for (int m = 0; m < kMaxModalities; ++m) {
      if (m < in.M && m % lanes == g.lane) {
        A dden_dv = A(0);
        if (den_positive) {
          switch (in.kind) {
            case DualNorm::kOne:
              dden_dv = A(1);
              break;
            case DualNorm::kTwo:
              dden_dv = v[m] / den;
              break;
            case DualNorm::kInf:
              dden_dv = v[m] == den ? A(1) / A(ties) : A(0);
              break;
            default:
              dden_dv = opmath_pow(v[m] / den, in.q - A(1));
          }
        }
        grad_lip_sel[b * in.M + m] = coef * dden_dv * present[m];
      }
    }
  }
}

}  // namespace cuda
}  // namespace mmfast

#define MMFAST_CERTIFIED_MARGIN_KERNEL_LIST(T)                      \
  {                                                                 \
    MMFAST_KERNEL_ADDR(certified_margin_forward_kernel<T, false>),  \
        MMFAST_KERNEL_ADDR(certified_margin_forward_kernel<T, true>), \
        MMFAST_KERNEL_ADDR(certified_margin_backward_kernel<T>)     \
  }

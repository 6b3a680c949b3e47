// Raw CUDA kernels of subset_logits and subset_accuracy (semantics: csrc/ops.cpp,
// mmfast/ops/reference.py::subset_logits / subset_correct). No torch: launched from
// csrc/cuda/subset_ops.cu.
//
// Layout: z (B, M, C) T, subsets (S, M) bool, weight (B, M) opmath or null, present (B, M)
// bool or null, target (B,) int64. Subset s of row b fuses z_b with ws_m = subsets_sm *
// weight_bm * present_bm and normalises by sum_m ws_m (an empty subset gives zero scores).
#pragma once

#include "cuda_utils.cuh"
#include "masked_fusion_kernel.cuh"

namespace mmfast {
namespace cuda {

// Subset s of a row: the row's fusion weights restricted to the subset (ws_m = subset_m ?
// w_m : 0, selected), the modalities to read (subset & present) and the normaliser.
template <typename A>
MMFAST_DEVICE RowWeights<A> subset_weights(const bool* subset_row, const bool* present_row,
                                           const A* weight_row, int M) {
  RowWeights<A> r = fusion_weights<A>(present_row, weight_row, M);
  r.denom = A(0);
#pragma unroll
  for (int m = 0; m < kMaxModalities; ++m) {
    if (m < M) {
      const bool chosen = subset_row[m];
      r.w[m] = chosen ? r.w[m] : A(0);
      r.present &= chosen ? ~0u : ~(1u << m);
      r.denom += r.w[m];
    }
  }
  return r;
}

// scores[s, b, :] = masked_fusion(z_b, subset_s & present_b, weight_b): a group of `lanes`
// threads per (s, b) pair, pairs visited b-major so the S groups reading z_b run together and
// share it in cache. VEC as in masked_fusion (16-byte vectors when C allows). Modalities
// outside subset_s & present_b are never read; a row with an invalid weight gets NaN scores.
template <typename T, int VEC>
__global__ void subset_logits_kernel(const T* __restrict__ z, const bool* __restrict__ subsets,
                                     const opmath_t<T>* __restrict__ weight,
                                     const bool* __restrict__ present, int64_t B, int M,
                                     int64_t C, int64_t S, int lanes, T* __restrict__ scores) {
  using A = opmath_t<T>;
  const LaneGroup g = LaneGroup::make(lanes);
  const int64_t pairs = B * S;
  for (int64_t p = g.first_row; p < pairs; p += g.row_step) {
    const int64_t b = p / S;
    const int64_t s = p - b * S;
    const RowWeights<A> rw =
        subset_weights<A>(subsets + s * M, present == nullptr ? nullptr : present + b * M,
                          weight == nullptr ? nullptr : weight + b * M, M);
    const A scale = rw.denom > A(0) ? rw.denom : A(1);
    fuse_row<T, VEC>(z + b * M * C, rw.w, rw.present, M, C, scale, rw.bad,
                     scores + (s * B + b) * C, g.lane, g.lanes);
  }
}

// Copies the contiguous slice src[0, avail) of z into tile[0, total) in opmath, zero-padded:
// the tile of R rows when all C classes fit (the R x M x C block of z is one slice), read with
// 16-byte vectors when the slice start is aligned. Absent modalities are staged too but never
// used: the scoring pass selects them out.
template <typename T>
MMFAST_DEVICE void stage_flat(const T* src, int64_t avail, int total, opmath_t<T>* tile, int tid,
                              int threads) {
  constexpr int V = vector_width<T>();
  const bool aligned = is_aligned(src, kVectorBytes);
  for (int i = tid * V; i < total; i += threads * V) {
    const int64_t left = avail - i;
    const int count = left >= V ? V : (left > 0 ? static_cast<int>(left) : 0);
    opmath_t<T> v[V];
    load_opmath<T, V>(src + i, aligned && count == V, count, v);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (i + j < total) tile[i + j] = v[j];
    }
  }
}

// Shared-memory carve-up of subset_accuracy_kernel, in bytes from the start (8-byte aligned
// pieces first). The launcher sizes the dynamic shared memory with total_bytes().
template <typename A>
struct SubsetAccuracyLayout {
  int tile_rows;     // R rows of z per tile
  int tile_classes;  // CT classes of z staged at a time
  int M;
  int S;

  __host__ __device__ int64_t counts_offset() const { return 0; }  // S uint64 counters
  __host__ __device__ int64_t tile_offset() const { return counts_offset() + 8LL * S; }
  __host__ __device__ int64_t tile_elems() const {
    return static_cast<int64_t>(tile_rows) * M * tile_classes;
  }
  __host__ __device__ int64_t weights_offset() const {  // R x M: weight * present
    return tile_offset() + tile_elems() * static_cast<int64_t>(sizeof(A));
  }
  __host__ __device__ int64_t best_value_offset() const {  // R x S running max numerators
    return weights_offset() + static_cast<int64_t>(tile_rows) * M * sizeof(A);
  }
  __host__ __device__ int64_t best_index_offset() const {  // R x S running argmax (int32)
    return best_value_offset() + static_cast<int64_t>(tile_rows) * S * sizeof(A);
  }
  __host__ __device__ int64_t total_bytes() const {
    return best_index_offset() + static_cast<int64_t>(tile_rows) * S * 4;
  }
};

// correct[s] += #{b : argmax_c scores_sbc == target_b} (ties: lowest index; a row with a NaN
// score, an invalid weight or a target outside [0, C) counts as wrong), in one
// pass over z and without materialising the (S, B, C) scores. A block takes R rows at a time
// and stages their z in shared memory CT classes at a time; thread p owns the (row, subset)
// pairs p, p + blockDim.x, ... and carries their running argmax in shared memory across the
// class chunks. Hits are counted per block in shared memory, then one atomicAdd per block and
// subset. C < 2^31 (int32 argmax).
template <typename T>
__global__ void subset_accuracy_kernel(const T* __restrict__ z,
                                       const int64_t* __restrict__ target,
                                       const bool* __restrict__ subsets,
                                       const opmath_t<T>* __restrict__ weight,
                                       const bool* __restrict__ present, int64_t B, int64_t C,
                                       SubsetAccuracyLayout<opmath_t<T>> layout,
                                       unsigned long long* __restrict__ correct) {
  using A = opmath_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int M = layout.M, S = layout.S, R = layout.tile_rows, CT = layout.tile_classes;
  auto* block_correct = reinterpret_cast<unsigned long long*>(smem + layout.counts_offset());
  A* tile = reinterpret_cast<A*>(smem + layout.tile_offset());
  A* row_weights = reinterpret_cast<A*>(smem + layout.weights_offset());
  A* best_value = reinterpret_cast<A*>(smem + layout.best_value_offset());
  int* best_index = reinterpret_cast<int*>(smem + layout.best_index_offset());
  const int pairs = R * S;
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);

  for (int s = tid; s < S; s += threads) block_correct[s] = 0;
  const int64_t tiles = (B + R - 1) / R;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t row0 = t * R;
    __syncthreads();  // the previous tile's counting pass is done with the pair state
    for (int i = tid; i < R * M; i += threads) {
      const int64_t b = row0 + i / M;
      const int m = i % M;
      // w = present ? weight : 0; NaN marks an absent modality (never read) or, in every
      // slot of the row, an invalid weight (the row never counts).
      A w = A(0);
      if (b < B) {
        const bool pres = present == nullptr || present[b * M + m];
        const A weight_bm = weight == nullptr ? A(1) : weight[b * M + m];
        w = pres ? weight_bm : A(NAN);
        bool row_bad = false;
        for (int j = 0; weight != nullptr && j < M; ++j) {
          row_bad = row_bad || !is_valid_scale(weight[b * M + j]);
        }
        if (row_bad) w = A(INFINITY);
      }
      row_weights[i] = w;
    }
    for (int p = tid; p < pairs; p += threads) best_index[p] = -1;

    for (int64_t c0 = 0; c0 < C; c0 += CT) {
      const int cn = C - c0 < CT ? static_cast<int>(C - c0) : CT;
      __syncthreads();  // the tile is free again; row_weights / best_index are visible
      if (CT == C) {
        stage_flat<T>(z + row0 * M * C, (B - row0 < R ? B - row0 : R) * M * C, R * M * CT,
                      tile, tid, threads);
      } else {
        for (int i = tid; i < R * M * CT; i += threads) {
          const int r = i / (M * CT);
          const int rem = i - r * M * CT;
          const int m = rem / CT;
          const int c = rem - m * CT;
          const int64_t b = row0 + r;
          const bool read = b < B && c < cn && (present == nullptr || present[b * M + m]);
          tile[i] = read ? to_opmath(z[(b * M + m) * C + c0 + c]) : A(0);
        }
      }
      __syncthreads();
      for (int p = tid; p < pairs; p += threads) {
        const int r = p / S;
        const int s = p - r * S;
        if (row0 + r >= B) continue;
        A ws[kMaxModalities];
        A den = A(0);
        unsigned use = 0;
#pragma unroll
        for (int m = 0; m < kMaxModalities; ++m) {
          ws[m] = A(0);
          if (m < M) {
            const A w = row_weights[r * M + m];
            const bool chosen = subsets[s * M + m] && w == w;  // NaN: absent
            ws[m] = chosen ? w : A(0);
            use |= chosen ? 1u << m : 0u;
            den += ws[m];
          }
        }
        const A scale = den > A(0) ? den : A(1);
        const A* tile_row = tile + static_cast<int64_t>(r) * M * CT;
        // argmax_c of num_c / scale without a division per class: the quotient is monotone in
        // num_c (scale > 0), so only a strictly larger num_c can move the argmax, and it does
        // unless its quotient rounds to the current best quotient (then the earlier class keeps
        // the tie, as torch.argmax over the divided scores does). One division per such event.
        A best_num = best_value[p];  // running max of num (NaN: a NaN score, which stays)
        int best_c = best_index[p];
        A best_q = best_c < 0 ? A(0) : best_num / scale;
        for (int c = 0; c < cn; ++c) {
          A num = A(0);
#pragma unroll
          for (int m = 0; m < kMaxModalities; ++m) {
            if (m < M && (use >> m & 1u)) num += ws[m] * tile_row[m * CT + c];
          }
          if (best_c < 0 || beats_max(num, best_num)) {
            const A q = num / scale;
            if (best_c < 0 || q != q || q > best_q) {
              best_q = q;
              best_c = static_cast<int>(c0 + c);
            }
            best_num = num;
          }
        }
        best_value[p] = best_num;
        best_index[p] = best_c;
      }
    }
    __syncthreads();
    for (int p = tid; p < pairs; p += threads) {
      const int r = p / S;
      const int64_t b = row0 + r;
      // Wrong: a NaN score (it wins the argmax and keeps it), an invalid weight (+inf in the
      // row's weight slots), a target outside [0, C) (only compared).
      const bool countable = b < B && best_value[p] == best_value[p] &&
                             row_weights[r * M] != A(INFINITY);
      if (countable && best_index[p] == target[b]) atomicAdd(&block_correct[p - r * S], 1ULL);
    }
  }
  __syncthreads();
  for (int s = tid; s < S; s += threads) {
    if (block_correct[s] != 0) atomicAdd(&correct[s], block_correct[s]);
  }
}

// ------------------------------------------------ subset_accuracy by subset codes (M <= 4)
// With few modalities every subset is a code k in [0, 2^M), and the fused numerator of code k
// is the numerator of its parent (k without its highest modality h) plus w_h z_h: one add per
// code and class instead of |k| (the highest-bit DP of csrc/cpu/kernels/subset_ops.cpp). The
// sums still run over modalities in increasing order, so they equal subset_accuracy_kernel's
// bit for bit. The argmax then runs per code, not per requested subset, and hits are counted
// per code: S (any size, repeats included) only matters when the block's per-code counts are
// added to correct[s] at the end.
constexpr int kCodeModalities = 4;
constexpr int kCodes = 1 << kCodeModalities;
// Dynamic shared memory of subset_accuracy_codes_kernel: per-code hit counters, then the
// block's bitmask of requested codes.
constexpr int kCodeHitsBytes = kCodes * 8;
constexpr int kCodeAccuracySmemBytes = kCodeHitsBytes + 8;

// Highest set bit of a code in [1, kCodes): a constant once the code loop is unrolled.
__host__ __device__ constexpr int code_top_modality(int k) {
  return k >= 8 ? 3 : (k >= 4 ? 2 : (k >= 2 ? 1 : 0));
}

MMFAST_DEVICE unsigned subset_code(const bool* subset_row, int M) {
  unsigned code = 0;
  for (int m = 0; m < M; ++m) code |= subset_row[m] ? 1u << m : 0u;
  return code;
}

// The requested codes plus every code the DP builds them from (each code's parent chain).
MMFAST_DEVICE unsigned close_under_parents(unsigned codes) {
#pragma unroll
  for (int k = kCodes - 1; k >= 1; --k) {
    if (codes >> k & 1u) codes |= 1u << (k ^ (1 << code_top_modality(k)));
  }
  return codes;
}

// correct[s] += #{b : argmax_c scores_sbc == target_b}, same contract as
// subset_accuracy_kernel, for M <= kCodeModalities. A group of `lanes` threads owns a row
// (LaneGroup); lane l reads VEC classes at a time of every present modality straight from z
// (16-byte vectors when VEC > 1: the launcher checks C % VEC == 0 and alignment), builds the
// numerators of the needed codes and keeps a running argmax per code, dividing only when a
// strictly larger numerator appears (as subset_accuracy_kernel). The group then merges its
// lanes' winners by quotient and index, and its first lane counts the row's hits per code.
template <typename T, int VEC>
__global__ void MMFAST_LAUNCH_BOUNDS(256, sizeof(opmath_t<T>) == 4 ? 2 : 1)
    subset_accuracy_codes_kernel(const T* __restrict__ z,
                                             const int64_t* __restrict__ target,
                                             const bool* __restrict__ subsets,
                                             const opmath_t<T>* __restrict__ weight,
                                             const bool* __restrict__ present, int64_t B, int M,
                                             int64_t C, int64_t S, int lanes,
                                             unsigned long long* __restrict__ correct) {
  using A = opmath_t<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  auto* code_hits = reinterpret_cast<unsigned long long*>(smem);
  auto* requested = reinterpret_cast<unsigned*>(smem + kCodeHitsBytes);
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
  for (int k = tid; k < kCodes; k += threads) code_hits[k] = 0;
  if (tid == 0) *requested = 0;
  __syncthreads();
  for (int64_t s = tid; s < S; s += threads) {
    atomicOr(requested, 1u << subset_code(subsets + s * M, M));
  }
  __syncthreads();
  const bool empty_requested = (*requested & 1u) != 0;
  const unsigned needed = close_under_parents(*requested);

  const LaneGroup g = LaneGroup::make(lanes);
  for (int64_t row = g.first_row; g.warp_active(row, B); row += g.row_step) {
    const bool active = row < B;
    const RowWeights<A> rw = fusion_weights<A>(
        !active || present == nullptr ? nullptr : present + row * M,
        !active || weight == nullptr ? nullptr : weight + row * M, M);
    A best_num[kCodes], best_q[kCodes];
    int best_c[kCodes];
#pragma unroll
    for (int k = 1; k < kCodes; ++k) best_num[k] = A(0), best_q[k] = A(0), best_c[k] = -1;
    const T* z_row = z + row * M * C;
    for (int64_t c = static_cast<int64_t>(g.lane) * VEC; active && c < C;
         c += static_cast<int64_t>(lanes) * VEC) {
      const int count = C - c >= VEC ? VEC : static_cast<int>(C - c);
      A zv[kCodeModalities][VEC];
#pragma unroll
      for (int m = 0; m < kCodeModalities; ++m) {
        if (m < M && (rw.present >> m & 1u)) {
          load_opmath<T, VEC>(z_row + m * C + c, VEC > 1 && count == VEC, count, zv[m]);
        } else {
#pragma unroll
          for (int i = 0; i < VEC; ++i) zv[m][i] = A(0);  // never read: selected out below
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        if (i >= count) break;
        A num[kCodes];
        num[0] = A(0);
#pragma unroll
        for (int k = 1; k < kCodes; ++k) {
          if (!(needed >> k & 1u)) continue;
          const int h = code_top_modality(k);
          // An absent h has w_h = 0 and zv = 0 (never loaded): it adds exactly +0.
          num[k] = num[k ^ (1 << h)] + rw.w[h] * zv[h][i];
          if (best_c[k] < 0 || beats_max(num[k], best_num[k])) {
            A den = A(0);  // the code's normaliser, in the order subset_weights sums it
#pragma unroll
            for (int m = 0; m < kCodeModalities; ++m) den += (k >> m & 1) ? rw.w[m] : A(0);
            const A q = num[k] / (den > A(0) ? den : A(1));
            if (best_c[k] < 0 || q != q || q > best_q[k]) {
              best_q[k] = q;
              best_c[k] = static_cast<int>(c + i);
            }
            best_num[k] = num[k];
          }
        }
      }
    }
    // Merge the group's winners: highest quotient (NaN first), lowest class on ties. Every lane
    // of the warp runs the shuffles (warp_active), with or without a row.
    const int64_t y = active && g.lane == 0 ? target[row] : -1;
    const bool countable = active && g.lane == 0 && !rw.bad;
    if (countable && empty_requested && y == 0) atomicAdd(&code_hits[0], 1ULL);  // empty: class 0
#pragma unroll
    for (int k = 1; k < kCodes; ++k) {
      if (!(needed >> k & 1u)) continue;
      A q = best_q[k];
      int c = best_c[k];
      for (int offset = lanes / 2; offset > 0; offset /= 2) {
        const A q_other = __shfl_xor_sync(kFullWarpMask, q, offset);
        const int c_other = __shfl_xor_sync(kFullWarpMask, c, offset);
        if (candidate_wins<true>(q, c, q_other, c_other)) q = q_other, c = c_other;
      }
      // Wrong: a NaN score (it wins the argmax), an invalid weight, a target outside [0, C).
      if (countable && q == q && c == y) atomicAdd(&code_hits[k], 1ULL);
    }
  }
  __syncthreads();
  for (int64_t s = tid; s < S; s += threads) {
    const unsigned long long hits = code_hits[subset_code(subsets + s * M, M)];
    if (hits != 0) atomicAdd(&correct[s], hits);
  }
}

}  // namespace cuda
}  // namespace mmfast

#define MMFAST_SUBSET_OPS_KERNEL_LIST(T)                                 \
  {                                                                      \
    MMFAST_KERNEL_ADDR(subset_logits_kernel<T, 1>),                      \
        MMFAST_KERNEL_ADDR(subset_logits_kernel<T, vector_width<T>()>),  \
        MMFAST_KERNEL_ADDR(subset_accuracy_kernel<T>),                   \
        MMFAST_KERNEL_ADDR(subset_accuracy_codes_kernel<T, 1>),          \
        MMFAST_KERNEL_ADDR(subset_accuracy_codes_kernel<T, vector_width<T>()>) \
  }
